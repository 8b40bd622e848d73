"""torch's recurrent cells (``nn.RNNCell``, ``nn.GRUCell``, ``nn.LSTMCell``) stepped in the model's own loop.

Each call of the cell is one time step, as in an attention decoder. The cell computes as it always does; hooks
record what each call started from and returned, so the h_t are the cell's own outputs (the tensors the model
consumed), the inputs can be swapped for leaves that require grad (the input sensitivity), and each step's
Jacobian is taken at the state the call actually started from (:func:`~seqmem.models.steps.join_calls`).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import ConfigError
from seqmem.models import state_parts
from seqmem.models.steps import LayerTrajectory, elman_step, gru_step, lstm_step
from seqmem.views.recurrence import Recorder
from seqmem.views.torch_rnn import GATES, TorchLayers


class TorchCell(TorchLayers):
    """An ``nn.RNNCell``, ``nn.GRUCell`` or ``nn.LSTMCell`` as a one-layer recurrence (``layer0``).

    Args:
        module: the cell.
        path: its module path in the model.
    """

    def __init__(self, module: nn.RNNCellBase, path: str):
        if isinstance(module, nn.LSTMCell):
            step, kind, self.state_size = lstm_step, "LSTM", 2
        elif isinstance(module, nn.GRUCell):
            step, kind, self.state_size = gru_step, "GRU", 1
        else:
            step, kind, self.state_size = partial(elman_step, nonlinearity=module.nonlinearity), "RNN", 1
        super().__init__(module, path, step, suffixes=[""], names=["layer0"])
        self.gate_names = GATES.get(kind, ("",))

    @contextmanager
    def intercept(self, record: Recorder, leaf_inputs: bool) -> Iterator[None]:
        started: list[tuple[Tensor, tuple[Tensor, ...]]] = []  # (input, state) of the calls under way

        def before(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x = args[0]
            if x.dim() != 2:
                raise ConfigError(
                    f"the per-timestep diagnostics step {self.kind()} on batched inputs only ((B, I)); it was "
                    f"called with a tensor of shape {tuple(x.shape)}"
                )
            if leaf_inputs:
                x = x.detach().requires_grad_()
                args = (x, *args[1:])
            state = args[1] if len(args) > 1 else kwargs.get("hx")
            if state is None:  # the cell starts from zeros
                state = tuple(x.new_zeros(x.shape[0], self.module.hidden_size) for _ in range(self.state_size))
            started.append((x, state_parts(state)))
            return args, kwargs

        def after(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x, state = started.pop()
            weights = self.layer_weights(0)
            x_proj = F.linear(x, weights[0], weights[2])[:, None]  # (B, 1, gates*H)
            record([LayerTrajectory(self.step, weights, x_proj, [state, state_parts(output)])], x)

        handles = [
            self.module.register_forward_pre_hook(before, with_kwargs=True),
            self.module.register_forward_hook(after, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
