"""LSTM (Hochreiter & Schmidhuber 1997), torch's gate order (i, f, g, o). Fused path: nn.LSTM.

c_t = f ⊙ c_{t-1} + i ⊙ g: the cell state's additive path has Jacobian diag(f), ≈ I while the
forget gate is open — hence the forget-bias init of 1 (Gers et al. 2000; Jozefowicz et al. 2015).
"""

from typing import Optional

import torch
from torch import Tensor, nn

from seqmem.models.base import TorchRecurrentNet
from seqmem.models.state import State, state_from_parts, state_parts
from seqmem.models.steps import lstm_step


class LSTM(TorchRecurrentNet):
    """Long short-term memory, PyTorch's default init plus an optional forget-gate bias.

    Args:
        input_size: features per time step of the input.
        hidden_size: units per layer.
        num_layers: stacked recurrent layers.
        dropout: dropout between layers.
        forget_bias: initial forget-gate bias, set in b_ih with b_hh's forget block zeroed so that the total is
            exactly this; 1.0 keeps the cell's memory open (None, from Python, keeps PyTorch's uniform init).
    """

    gate_names = ("i", "f", "g", "o")
    state_size = 2
    options = ("forget_bias",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        forget_bias: Optional[float] = 1.0,
    ):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, dropout=dropout)
        if forget_bias is not None:
            forget = slice(hidden_size, 2 * hidden_size)
            with torch.no_grad():
                for layer in range(num_layers):
                    _, _, b_in, b_h = self.layer_weights(layer)
                    b_in[forget] = forget_bias
                    b_h[forget] = 0.0

    def forward(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN's LSTM under CPU autocast fails on float32 inputs on CPUs without native bfloat16 (no
            # AVX-512: "could not create a primitive descriptor"); handed inputs already in the autocast
            # dtype, which autocast computes in anyway, it runs.
            dtype = torch.get_autocast_dtype("cpu")
            x = x.to(dtype)
            state = None if state is None else state_from_parts(tuple(p.to(dtype) for p in state_parts(state)))
        return self.rnn(x, state)  # (B, T, H), state

    def step(self, weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return lstm_step(weights, x_proj, state)
