"""One recurrent module of a model as the diagnostics see it, and seqmem's own cells seen that way.

A :class:`Recurrence` names the module's layers (``layer0``, ``layer0_reverse``, ...), gives their parameters by
role (W_in, W_h, b_in, b_h, ...) and their recurrent matrices, and can *intercept* the module's calls while the
model computes: each call is then run step by step over the same parameters, and the runs — every layer's state
at every step, as the tensors the rest of the graph consumed — are handed to a recorder. That is how a probe
reaches the full dL/dh_t, which a fused kernel hides, without the model's code changing.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Optional

from torch import Tensor, nn

from seqmem.models import RecurrentNet
from seqmem.models.steps import LayerTrajectory

#: Called once per intercepted call: the layers' runs (bottom first; a bidirectional layer's two directions in
#: torch's order) and the input the call stepped, batch first: (B, T, I), or (B, I) for a cell's one step.
Recorder = Callable[[list[LayerTrajectory], Tensor], None]


class Recurrence:
    """What every diagnostic reads from one recurrent module.

    Attributes:
        module: the module whose calls :meth:`intercept` records.
        gate_names: names of the gate blocks stacked in W_h (torch's order); one empty name for plain RNNs.
        orthogonal: W_h is kept exactly orthogonal (the spectral diagnostic then logs its distance from it).
        directions: 1, or 2 for a bidirectional stack; layer ``l`` direction ``d`` is layer index ``l·directions + d``.
    """

    module: nn.Module
    gate_names: tuple[str, ...] = ("",)
    orthogonal: bool = False
    directions: int = 1

    def layer_names(self) -> list[str]:
        """The layers as tags name them, by layer index: layer0, layer0_reverse, layer1, ..."""
        raise NotImplementedError

    def layer_parameters(self, layer: int) -> dict[str, nn.Parameter]:
        """The trainable tensors of one layer by role (W_in, W_h, b_in, b_h, ...)."""
        raise NotImplementedError

    def derived_gradients(self, layer: int) -> dict[str, Tensor]:
        """Gradients, by role, of tensors computed from parameters (the orthogonal cell's W_h); none by default."""
        return {}

    def recurrent_matrices(self) -> dict[str, Tensor]:
        """Every layer's square recurrent matrix per gate block: {"layer0/f": (H, H), ...}."""
        raise NotImplementedError

    def intercept(self, record: Recorder, leaf_inputs: bool) -> AbstractContextManager[None]:
        """While active, every call of :attr:`module` is stepped and its runs handed to ``record``.

        Args:
            record: receives each call's runs and stepped input.
            leaf_inputs: step each call from a detached copy of its input that requires grad (what the input
                sensitivity differentiates with respect to), instead of the input itself.
        """
        raise NotImplementedError

    def top_layers(self) -> range:
        """Layer indices of the top layer's directions (whose final states the input sensitivity reads)."""
        total = len(self.layer_names())
        return range(total - self.directions, total)


@contextmanager
def stepped_forward(
    module: nn.Module,
    layer_runs: Callable[[Tensor, Any], tuple[Tensor, Any, list[LayerTrajectory]]],
    record: Recorder,
    leaf_inputs: bool,
    to_batch_first: Callable[[Any], tuple[Tensor, Optional[Tensor]]] = lambda x: (x, None),
    from_batch_first: Callable[[Tensor, Any], Any] = lambda outputs, input: outputs,
) -> Iterator[None]:
    """Replace ``module.forward`` by its step-by-step twin ``layer_runs`` for the duration.

    The twin takes ``(input, state=None)`` as the module does and returns what it returns: (outputs, final state),
    so the model around it computes exactly what it would (the step path equals the fused one; tests keep them
    equal). An instance attribute shadows the class's forward, so nothing of the module's class changes.

    Args:
        module: the module to step.
        layer_runs: (batch-first input, state or None[, lengths]) -> (batch-first outputs, final state, runs);
            it is given the lengths only for a ragged input.
        record: receives every call's runs and stepped input.
        leaf_inputs: see :meth:`Recurrence.intercept`.
        to_batch_first: the module's input to (B, T, I) and each sequence's length (B,) for a ragged input, else
            None; may refuse an input it cannot step.
        from_batch_first: ((B, T, ·) outputs, the module's input) -> outputs in the module's layout.
    """

    def forward(input: Any, state: Optional[Any] = None, **kwargs: Any) -> tuple[Any, Any]:
        state = state if state is not None else next(iter(kwargs.values()), None)  # hx= or state= by name
        x, lengths = to_batch_first(input)  # (B, T, I), (B,) or None
        if leaf_inputs:
            x = x.detach().requires_grad_()
        outputs, final, runs = layer_runs(x, state) if lengths is None else layer_runs(x, state, lengths)
        record(runs, x)
        return from_batch_first(outputs, input), final

    shadowed = vars(module).get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if shadowed is None:
            del module.forward
        else:
            module.forward = shadowed


class SeqmemNet(Recurrence):
    """A seqmem cell (a :class:`~seqmem.models.RecurrentNet`: the five, or one of a user's own) as a recurrence.

    Args:
        net: the network.
    """

    def __init__(self, net: RecurrentNet):
        self.module = net
        self.gate_names = net.gate_names
        self.orthogonal = net.orthogonal

    def layer_names(self) -> list[str]:
        return self.module.layer_names()

    def layer_parameters(self, layer: int) -> dict[str, nn.Parameter]:
        return self.module.layer_parameters(layer)

    def derived_gradients(self, layer: int) -> dict[str, Tensor]:
        return self.module.derived_gradients(layer)

    def recurrent_matrices(self) -> dict[str, Tensor]:
        return self.module.recurrent_matrices()

    def intercept(self, record: Recorder, leaf_inputs: bool) -> AbstractContextManager[None]:
        return stepped_forward(self.module, self.module.layer_runs, record, leaf_inputs)
