"""GRU (Cho et al. 2014), torch's gate order (r, z, n). Fused path: nn.GRU.

h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}: the z ⊙ h_{t-1} term is the additive path whose Jacobian is ≈ I
when the update gate is near 1, which is why gradients survive long lags.
"""

from torch import Tensor, nn

from seqmem.models.base import TorchRecurrentNet
from seqmem.models.steps import gru_step


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
        return gru_step(weights, x_proj, state)
