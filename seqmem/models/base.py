"""The interface every recurrent family shares, and the step-by-step path they all inherit.

Two paths, one set of parameters:

* ``forward`` — the fused path used for training (nn.RNN / nn.GRU / nn.LSTM or ``torch.rnn_tanh``,
  so cuDNN / oneDNN do the work). A fused kernel hides dL/dh_t: the gradient reaching ``output[t]``
  is only the readout's share, not what flows back through the recurrence.
* ``forward_steps`` — the same function computed cell by cell in Python. It returns every layer's
  h_t as the very tensor the rest of the graph consumed, so one ``torch.autograd.grad`` call with
  respect to those (non-leaf) tensors yields the *full* dL/dh_t — readout and recurrence — for every
  layer and step at once (the diagnostics need this).

A test keeps the two paths equal for every cell.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import require
from seqmem.models.state import State, state_from_parts, state_parts
from seqmem.models.steps import LayerTrajectory, run_steps


class RecurrentNet(nn.Module):
    """Base class: a multi-layer recurrent network over batch-first sequences.

    This is the cell protocol: the six seqmem cells implement it, and so does a cell of one's own. A subclass
    implements :meth:`layer_weights`, :meth:`step` and :meth:`layer_parameters` (and sets :attr:`gate_names` and
    :attr:`state_size`); it may override :meth:`forward` with a fused kernel (the default runs the step path),
    :meth:`project_input`, :meth:`derived_gradients`, :meth:`orthogonal_parameters` and :attr:`state_width` (a state
    wider than H, as the LRU's). Its constructor takes
    ``(input_size, hidden_size, num_layers, dropout, **options)``; ``--model.cell package.module.Class`` trains it
    through the CLI and ``seqmem sweep``, with every diagnostic.

    Args:
        input_size: features per time step of the input.
        hidden_size: units per layer.
        num_layers: stacked recurrent layers.
        dropout: dropout on the outputs of every layer except the last (as nn.RNN does).
    """

    #: Names of the gate blocks stacked in W_h (torch's order); one empty name for plain RNNs.
    gate_names: tuple[str, ...] = ("",)
    #: Tensors in one layer's state: 1 (h) or 2 (h, c).
    state_size: int = 1
    #: W_h is kept exactly orthogonal; the spectral diagnostic then also logs its distance from orthogonality.
    orthogonal: bool = False
    #: The constructor arguments offered as ``model.<name>`` options (``--model.forget_bias``), each typed in the
    #: signature, with a default, and documented under ``Args:`` (:func:`seqmem.models.registered_options`).
    options: tuple[str, ...] = ()

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        require(hidden_size >= 1, f"model.hidden_size must be >= 1, got {hidden_size}")
        require(num_layers >= 1, f"model.num_layers must be >= 1, got {num_layers}")
        require(0.0 <= dropout < 1.0, f"model.dropout must be in [0, 1), got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout

    # ---- fused path -------------------------------------------------------------------------
    def forward(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """x (B, T, input_size) -> outputs (B, T, H) of the last layer, final state.

        seqmem's cells override this with a fused kernel; a cell without one (a researcher's own, modReLU)
        trains on the step-by-step path.
        """
        outputs, state, _ = self.layer_runs(x, state)
        return outputs, state

    # ---- step-by-step path hooks ------------------------------------------------------------
    def layer_weights(self, layer: int) -> tuple[Tensor, ...]:
        """(W_in, W_h, b_in, b_h, ...) of one layer, computed once per forward, never per step."""
        raise NotImplementedError

    def project_input(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        """W_in x_t + b_in for all t in one matmul: (B, T, I) -> (B, T, gates * H)."""
        return F.linear(x, weights[0], weights[2])

    def step(self, weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """One time step of one layer: projected input (B, gates*H), state -> new state."""
        raise NotImplementedError

    def layer_parameters(self, layer: int) -> dict[str, nn.Parameter]:
        """The trainable tensors of one layer by role (W_in, W_h, b_in, b_h...) for diagnostics."""
        raise NotImplementedError

    def derived_gradients(self, layer: int) -> dict[str, Tensor]:
        """Gradients, by role, of tensors of one layer that are computed from parameters rather than parameters
        themselves (the orthogonal cell's W_h), as the backward passes since the last ``zero_grad`` left them;
        none by default."""
        return {}

    def orthogonal_parameters(self) -> list[nn.Parameter]:
        """The parameters behind an orthogonal W_h, which train at their own learning rate; none by default."""
        return []

    # ---- shared machinery ---------------------------------------------------------------------
    @property
    def state_width(self) -> int:
        """Features of each tensor of one layer's state, the last size of the torch-format state: H by default."""
        return self.hidden_size

    @property
    def activation_width(self) -> int:
        """Values per sequence and time step that one layer's forward keeps for backward, at the least: its outputs,
        H by default (a state that is the output is counted once; the gates are left out)."""
        return self.hidden_size

    def layer_names(self) -> list[str]:
        """The layers as the diagnostics' tags name them: layer0, layer1, ..."""
        return [f"layer{layer}" for layer in range(self.num_layers)]

    def layer_runs(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State, list[LayerTrajectory]]:
        """Step-by-step forward over the same parameters as :meth:`forward`, keeping every layer's run.

        Args:
            x: (B, T, input_size) inputs.
            state: initial state in torch's format, zeros when None.

        Returns:
            outputs (B, T, H) of the last layer, the final state, and one :class:`LayerTrajectory` per layer,
            bottom first, whose states are the very tensors the next step, the next layer and the outputs were
            computed from.
        """
        layer_states = self._unpack(state, x.shape[0], x)
        layer_input = x  # (B, T, I)
        runs = []
        for layer in range(self.num_layers):
            weights = self.layer_weights(layer)
            run = run_steps(self.step, weights, self.project_input(weights, layer_input), layer_states[layer])
            runs.append(run)
            layer_states[layer] = run.states[-1]
            out = torch.stack(run.hiddens, dim=1)  # (B, T, H)
            last = layer == self.num_layers - 1
            layer_input = out if last else F.dropout(out, self.dropout, self.training)
        return layer_input, self._pack(layer_states), runs

    def forward_steps(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State, list[list[Tensor]]]:
        """Step-by-step forward over the same parameters as :meth:`forward`.

        Args:
            x: (B, T, input_size) inputs.
            state: initial state in torch's format, zeros when None.

        Returns:
            outputs (B, T, H) of the last layer, the final state, and ``hiddens[l][t]``: layer l's
            h_t (B, H), the very tensor the next step, the next layer and the outputs were computed
            from — so ``autograd.grad(loss, [h for layer in hiddens for h in layer])`` is the full
            dL/dh_t (readout and recurrence) of every layer and step, in one backward.
        """
        outputs, state, runs = self.layer_runs(x, state)
        return outputs, state, [run.hiddens for run in runs]

    def recurrent_matrices(self) -> dict[str, Tensor]:
        """W_h of every layer, split into its gate blocks: {"layer0/f": (H, H), ...}."""
        matrices = {}
        for layer in range(self.num_layers):
            w_h = self.layer_weights(layer)[1]  # (gates*H, H)
            for gate, block in zip(self.gate_names, w_h.chunk(len(self.gate_names), dim=0), strict=True):
                matrices[f"layer{layer}/{gate}" if gate else f"layer{layer}"] = block
        return matrices

    def _unpack(self, state: Optional[State], batch_size: int, like: Tensor) -> list[tuple[Tensor, ...]]:
        """Torch-format state -> one tuple of (B, H) tensors per layer."""
        if state is None:
            zeros = like.new_zeros(self.num_layers, batch_size, self.state_width)  # (L, B, H)
            state = zeros if self.state_size == 1 else (zeros, zeros)
        parts = state_parts(state)
        return [tuple(p[layer] for p in parts) for layer in range(self.num_layers)]

    def _pack(self, layer_states: list[tuple[Tensor, ...]]) -> State:
        """One tuple per layer -> torch-format state."""
        parts = tuple(torch.stack([s[i] for s in layer_states]) for i in range(self.state_size))  # (L, B, H)
        return state_from_parts(parts)


class TorchRecurrentNet(RecurrentNet):
    """Shared plumbing for families whose fused path is a torch module (nn.RNN, nn.GRU, nn.LSTM)."""

    rnn: nn.RNNBase

    def forward(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        return self.rnn(x, state)  # (B, T, H), state

    def layer_weights(self, layer: int) -> tuple[Tensor, ...]:
        return tuple(getattr(self.rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def layer_parameters(self, layer: int) -> dict[str, nn.Parameter]:
        return dict(zip(("W_in", "W_h", "b_in", "b_h"), self.layer_weights(layer), strict=True))
