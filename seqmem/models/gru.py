"""GRU (Cho et al. 2014), torch's gate order (r, z, n). Fused path: nn.GRU.

h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}: the z ⊙ h_{t-1} term is the additive path whose Jacobian is ≈ I
when the update gate is near 1, which is why gradients survive long lags.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.models.base import TorchRecurrentNet


class GRU(TorchRecurrentNet):
    """Gated recurrent unit, PyTorch's default init.

    Args:
        input_size: features per time step of the input.
        hidden_size: units per layer.
        num_layers: stacked recurrent layers.
        dropout: dropout between layers.
    """

    gate_names = ("r", "z", "n")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        self.rnn = nn.GRU(input_size, hidden_size, num_layers, batch_first=True, dropout=dropout)

    def step(self, weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        _, w_h, _, b_h = weights
        h = state[0]  # (B, H)
        sizes = (2 * self.hidden_size, self.hidden_size)
        gx_rz, gx_n = x_proj.split(sizes, dim=1)  # (B, 2H), (B, H)
        gh_rz, gh_n = F.linear(h, w_h, b_h).split(sizes, dim=1)  # b_h stays inside r ⊙ (...) as in torch
        # Fused forms (r and z in one sigmoid, addcmul, lerp) keep the step path's op count low.
        r, z = torch.sigmoid(gx_rz + gh_rz).chunk(2, dim=1)  # each (B, H)
        n = torch.tanh(torch.addcmul(gx_n, r, gh_n))  # (B, H)
        return (torch.lerp(n, h, z),)  # (1 - z) ⊙ n + z ⊙ h
