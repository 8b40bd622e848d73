"""What the diagnostics read from any model: :class:`ModuleView`, for a LightningModule or a plain nn.Module.

The per-step diagnostics read the parameters' gradients by tag and the clipping in force; the probes run the
model on a probe batch with its recurrent modules intercepted (:mod:`seqmem.views.recurrence`) and read every
layer's h_t, the inputs the layers stepped, and their trajectories. The probe's loss is, in this order: the
``loss_fn`` given to the diagnostic, the module's own ``probe_loss(batch)`` method if it defines one (the one
optional hook), or — for a LightningModule — its ``training_step`` on the probe batch, with nothing logged.
That is the loss the module trains on, over every step it covers (an LM's loss at every position, a classifier's
at the last), so dL/dh_t holds the readout's share at t as well as what flows back through the recurrence.

Nothing a probe does reaches training: the module's plain attributes and buffers (a hidden state it carries
from batch to batch) are put back, the random streams are forked, and only ``torch.autograd.grad`` with respect
to states and inputs is taken, never ``.backward()``.
"""

import inspect
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Optional

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch import Tensor, nn

from seqmem.errors import ConfigError
from seqmem.models.steps import LayerTrajectory, join_calls
from seqmem.views.find import find_recurrences, no_recurrence
from seqmem.views.recurrence import Recurrence

#: A probe loss: (model, batch) -> scalar tensor.
LossFn = Callable[[nn.Module, Any], Any]  # returns the scalar loss tensor (Any: the CLI takes any function by path)


@contextmanager
def untouched(module: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves no trace on ``module`` or the random streams: every submodule's plain attributes
    and buffers are put back (a training_step that carries ``self.hidden`` from batch to batch keeps it), and
    the CPU's and the module's GPU's random states are restored."""
    saved = [(m, dict(vars(m)), dict(m._buffers)) for m in module.modules()]
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for m, attributes, buffers in saved:
            for name in set(vars(m)) - set(attributes):
                object.__delattr__(m, name)
            vars(m).update(attributes)
            m._buffers.clear()
            m._buffers.update(buffers)


def training_loss(module: L.LightningModule, batch: Any) -> Tensor:
    """The module's ``training_step`` loss on ``batch``, with ``self.log`` and ``self.log_dict`` silenced.

    Raises:
        ConfigError: training_step returned no loss.
    """
    module.log = module.log_dict = lambda *args, **kwargs: None  # instance attributes; ``untouched`` removes them
    takes_index = len(inspect.signature(module.training_step).parameters) > 1
    out = module.training_step(batch, 0) if takes_index else module.training_step(batch)
    loss = out.get("loss") if isinstance(out, dict) else out
    if not isinstance(loss, Tensor):
        raise ConfigError(
            f"the probes differentiate {type(module).__name__}.training_step's loss, and it returned "
            f"{type(out).__name__} on the probe batch: return the loss, or define probe_loss(batch) on the module"
        )
    return loss


class ModuleView:
    """A model as every seqmem diagnostic reads it: its recurrent modules found by module path.

    Tags: a recurrence at module path ``encoder.rnn`` writes ``<diagnostic>/encoder/rnn/layer<l>/...``; every
    other parameter's gradient norm is ``grad_norm/<its name, dots as slashes>``.

    Args:
        module: the model (a LightningModule, or any nn.Module with ``loss_fn``).
        loss_fn: the probe's loss, (module, batch) -> scalar; None: ``module.probe_loss(batch)`` if defined,
            else the LightningModule's training_step loss.
    """

    #: The tag prefixes of the recurrences that stepped a ragged batch (a PackedSequence of sequences of different
    #: lengths) in the latest :meth:`runs`: their curves are lined up by lag from each sequence's own end.
    ragged: frozenset[str] = frozenset()

    def __init__(self, module: nn.Module, loss_fn: Optional[LossFn] = None):
        self.module = module
        self.loss_fn = loss_fn
        self.recurrences: dict[str, Recurrence] = find_recurrences(module)

    # ---- what the per-step diagnostics read ------------------------------------------------------
    def parameter_tags(self) -> dict[str, nn.Parameter]:
        """``grad_norm/<tag>`` of every trainable parameter, once each (tied weights count once), so that the
        per-tag norms add up in quadrature to the norm of the whole gradient."""
        tags: dict[str, nn.Parameter] = {}
        for prefix, recurrence in self.recurrences.items():
            for layer, name in enumerate(recurrence.layer_names()):
                for role, param in recurrence.layer_parameters(layer).items():
                    tags[f"grad_norm/{prefix}{name}/{role}"] = param
        tags.update(self.other_parameter_tags({id(p) for p in tags.values()}))
        return {tag: p for tag, p in tags.items() if p.requires_grad}

    def other_parameter_tags(self, seen: set[int]) -> dict[str, nn.Parameter]:
        """The parameters outside the recurrences (ids not in ``seen``), by module path."""
        return {
            f"grad_norm/{name.replace('.', '/')}": p for name, p in self.module.named_parameters() if id(p) not in seen
        }

    def parameter_charts(self) -> dict[str, list[str]]:
        """Chart title -> exact tags of the parameters outside the recurrences, for the custom-scalars layout."""
        inside = {
            id(p)
            for recurrence in self.recurrences.values()
            for layer in range(len(recurrence.layer_names()))
            for p in recurrence.layer_parameters(layer).values()
        }
        return {"other parameters": list(self.other_parameter_tags(inside))}

    def derived_tags(self) -> dict[str, Tensor]:
        """``grad_norm/<prefix><layer>/<role>`` of gradients of tensors computed from parameters (an orthogonal W_h)."""
        return {
            f"grad_norm/{prefix}{name}/{role}": grad
            for prefix, recurrence in self.recurrences.items()
            for layer, name in enumerate(recurrence.layer_names())
            for role, grad in recurrence.derived_gradients(layer).items()
        }

    def clip_settings(self, trainer: Optional["L.Trainer"]) -> tuple[Optional[float], Optional[str]]:
        """The gradient clipping in force: the module's own ``clip_settings()`` if it has one, else the Trainer's."""
        own = getattr(self.module, "clip_settings", None)
        if callable(own):
            return own()
        if trainer is None:
            return None, None
        return trainer.gradient_clip_val or None, trainer.gradient_clip_algorithm or "norm"

    # ---- checks, once per fit --------------------------------------------------------------------
    def require_recurrent(self, who: str) -> None:
        """Raise a one-line :class:`ConfigError` when the model holds no recurrence ``who`` could measure."""
        if not self.recurrences:
            raise ConfigError(no_recurrence(self.module, who))

    def require_probe_loss(self, who: str, loss: Optional[str] = None) -> None:
        """Raise a one-line :class:`ConfigError` when the probe has no loss to differentiate.

        Args:
            who: the diagnostic, for the message.
            loss: its loss option: only seqmem's SequenceModel knows a "last" one.
        """
        name = type(self.module).__name__
        if loss == "last":
            raise ConfigError(
                f"{who} loss 'last' (the final step's loss) needs a seqmem SequenceModel, which knows where it is; "
                f"for {name} the probe differentiates its training loss: leave loss unset, or pass loss_fn"
            )
        if self.loss_fn is not None or callable(getattr(self.module, "probe_loss", None)):
            return
        if not isinstance(self.module, L.LightningModule):
            raise ConfigError(f"{who} on a plain {name} needs loss_fn: (model, batch) -> the loss to differentiate")
        if not self.module.automatic_optimization:
            raise ConfigError(
                f"{who}: {name} optimises manually, so its training_step steps the optimizer and cannot be the "
                "probe's loss; define probe_loss(batch) on the module, or pass loss_fn"
            )

    # ---- what the probes read ------------------------------------------------------------------------
    def keep_probe(self, batch: Any, rows: int) -> Any:
        """The probe batch kept from a training batch: the whole batch, cloned (its layout is the model's own)."""
        return batch_to(batch, lambda t: t.clone())

    def loss(self, batch: Any, which: Optional[str] = None) -> Tensor:
        """The probe's loss on ``batch`` (see the module docstring); ``which`` is SequenceModel's choice."""
        if self.loss_fn is not None:
            return self.loss_fn(self.module, batch)
        own = getattr(self.module, "probe_loss", None)
        if callable(own):
            return own(batch)
        return training_loss(self.module, batch)

    def forward(self, batch: Any) -> Any:
        """What the probes run when they need the recurrent layers' runs but not the loss: the loss by default."""
        return self.loss(batch)

    def runs(
        self, batch: Any, which: Optional[str] = None, leaf_inputs: bool = False, need_loss: bool = True
    ) -> tuple[Any, dict]:
        """Run the probe's loss (or, without ``need_loss``, :meth:`forward`) with every recurrence intercepted.

        Returns:
            the loss, and per recurrence that ran (by tag prefix): one joined :class:`LayerTrajectory` per layer
            and the stepped inputs joined along time, ``(layers, inputs)`` — inputs (B, T, I) of a module, or the
            list of each call's (B, I) of a cell.
        """
        calls: dict[str, list[tuple[list[LayerTrajectory], Tensor]]] = {prefix: [] for prefix in self.recurrences}
        with untouched(self.module), ExitStack() as stack:
            for prefix, recurrence in self.recurrences.items():
                record = lambda runs, x, seen=calls[prefix]: seen.append((runs, x))  # noqa: E731
                stack.enter_context(recurrence.intercept(record, leaf_inputs))
            loss = self.loss(batch, which) if need_loss else self.forward(batch)
        joined = {}
        for prefix, seen in calls.items():
            if seen:
                layers = [join_calls([runs[i] for runs, _ in seen]) for i in range(len(seen[0][0]))]
                joined[prefix] = (layers, [x for _, x in seen])
        self.ragged = frozenset(prefix for prefix, (layers, _) in joined.items() if layers[0].lengths is not None)
        return loss, joined


def batch_to(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` applied to every tensor of a batch (dicts, lists, tuples, dataclasses...), the rest kept."""
    return apply_to_collection(batch, Tensor, fn)
