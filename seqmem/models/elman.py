"""Elman RNNs: the vanilla tanh RNN and the IRNN (ReLU, identity-initialised).

h_t = φ(W_h h_{t-1} + W_in x_t + b). Fused path: nn.RNN.
"""

from typing import Optional

import torch
from torch import Tensor, nn

from seqmem.errors import require
from seqmem.models.base import TorchRecurrentNet
from seqmem.models.steps import elman_step


class VanillaRNN(TorchRecurrentNet):
    """tanh RNN with PyTorch's default init, U(-1/sqrt(H), 1/sqrt(H)) (spectral radius of W_h ≈ 0.58).

    Args:
        input_size: features per time step of the input.
        hidden_size: units per layer.
        num_layers: stacked recurrent layers.
        dropout: dropout between layers.
        spectral_radius: rescale every initial W_h to this spectral radius (None: keep PyTorch's init).
            Above 1 the linearised recurrence grows geometrically: the setting for exploding gradients.
    """

    nonlinearity = "tanh"
    options = ("spectral_radius",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        spectral_radius: Optional[float] = None,
    ):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        require(
            spectral_radius is None or spectral_radius > 0,
            f"model.spectral_radius must be > 0 or null, got {spectral_radius}",
        )
        self.rnn = nn.RNN(
            input_size, hidden_size, num_layers, nonlinearity=self.nonlinearity, batch_first=True, dropout=dropout
        )
        if spectral_radius is not None:
            with torch.no_grad():
                for layer in range(num_layers):
                    w_h = self.layer_weights(layer)[1]  # (H, H)
                    w_h.mul_(spectral_radius / torch.linalg.eigvals(w_h).abs().max())

    def step(self, weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return elman_step(weights, x_proj, state, self.nonlinearity)


class IRNN(VanillaRNN):
    """IRNN (Le, Jaitly & Hinton 2015): ReLU, W_h = scale·I, b = 0, small input weights.

    With W_h = I and ReLU, a unit that is on passes its value (and its gradient) through unchanged, so
    at initialisation the Jacobian product neither shrinks nor grows along active paths.

    Args:
        input_size: features per time step of the input.
        hidden_size: units per layer.
        num_layers: stacked recurrent layers.
        dropout: dropout between layers.
        irnn_scale: W_h is initialised to this multiple of the identity (the paper also uses 0.01·I
            on some tasks).
        input_init_std: std of the normal init of W_in; small so inputs do not swamp the memory.
    """

    nonlinearity = "relu"
    options = ("irnn_scale",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        irnn_scale: float = 1.0,
        input_init_std: float = 1e-3,
    ):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        require(irnn_scale > 0, f"model.irnn_scale must be > 0, got {irnn_scale}")
        with torch.no_grad():
            for layer in range(num_layers):
                w_in, w_h, b_in, b_h = self.layer_weights(layer)
                w_h.copy_(irnn_scale * torch.eye(hidden_size))
                w_in.normal_(0.0, input_init_std)
                b_in.zero_()
                b_h.zero_()
