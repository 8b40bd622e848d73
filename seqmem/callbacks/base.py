"""What every diagnostic shares: what it reads, where it writes, and on which steps.

What: the model, through its view (:mod:`seqmem.views`): any LightningModule, its recurrent layers found by
module path, or seqmem's SequenceModel, which provides its own view. Tags name a recurrence by its module path
(``grad_time/encoder/rnn/layer0/horizon``); SequenceModel's net has none (``grad_time/layer0/horizon``).

When: every diagnostic measures in ``on_before_optimizer_step``. Lightning calls that hook after the
backward pass, after the DDP all-reduce and after AMP unscaling, and *before* any clipping — its own
Trainer clipping comes after the hook, and SequenceModel clips in its own ``on_before_optimizer_step``,
which Lightning calls after the callbacks'. So every diagnostic sees the averaged, unscaled, pre-clip
gradient, identical on every rank, in automatic and manual (truncated BPTT) optimisation alike. (Under
16-mixed, a fused optimizer unscales inside its own step, after the hook: that pairing is refused.) Norms
and spectra are computed in float32 whatever the precision (float64 under 64-true), so a tag means the same in
every precision.

Steps: the x-axis is ``trainer.global_step`` at that hook, the index of the optimizer step being taken
(it advances once per chunk under truncated BPTT). Two rules decide when a diagnostic writes:
:func:`logging_step` — step + 1 is a multiple of ``trainer.log_every_n_steps`` (0: never), the steps on
which Lightning logs ``train/loss`` — for the per-step diagnostics; and ``step % every_n_steps == 0``
(:class:`PeriodicDiagnostic`) for the dearer ones, so that step 0 shows the network at initialisation.

Writing: scalars and images go straight to the TensorBoard logger's ``SummaryWriter`` as
``add_scalar`` / ``add_image`` tags (never ``add_scalars``, which opens one writer per key), and
only on global rank 0 — every other rank skips the work entirely, so no diagnostic adds a
collective operation to a DDP run.

The diagnostics that run extra passes on a fixed probe batch share :mod:`seqmem.callbacks.probe`.
"""

import re
import weakref
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from seqmem.errors import require
from seqmem.views import ModuleView, view_of


def check_unscaled_gradients(trainer: "L.Trainer") -> None:
    """Under 16-mixed, Lightning unscales the gradients before ``on_before_optimizer_step`` — except for an
    optimizer that unscales inside its own step (``fused=True``), whose gradients every diagnostic would read
    multiplied by the loss scale.

    Raises:
        ConfigError: naming the optimizer and the ways out.
    """
    if getattr(trainer.precision_plugin, "scaler", None) is None:
        return
    for optimizer in trainer.optimizers:
        require(
            not getattr(optimizer, "_step_supports_amp_scaling", False),
            f"precision 16-mixed with a fused {type(optimizer).__name__}: it unscales the gradients inside its "
            "step, after the diagnostics have read them (multiplied by the loss scale); use --trainer.precision "
            "bf16-mixed, or the optimizer without fused=True",
        )


# Custom-scalars layout: {category: {chart title: ["Multiline", [tag regex, ...]]}}.
Layout = dict[str, dict[str, list]]


def escaped(prefix: str) -> str:
    """A tag prefix (a module path) as a literal piece of a chart's regex."""
    return re.escape(prefix)


def chart(*tags: str) -> list:
    """A custom-scalars chart of the tags matching the regexes ``tags``, anchored at both ends.

    TensorBoard *searches* each regex in the tag names, so an unanchored ``clip/clipped`` would also plot
    ``clip/clipped_steps`` (a count) among fractions.
    """
    return ["Multiline", [f"^{tag}$" for tag in tags]]


def tensorboard_writer(trainer: "L.Trainer") -> Optional[SummaryWriter]:
    """The first TensorBoard logger's writer on global rank 0; None on other ranks or without one."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def write_scalars(writer: SummaryWriter, values: dict[str, Tensor], step: int) -> None:
    """``add_scalar`` every value, with a single device-to-host copy for all of them."""
    numbers = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()  # one sync
    for tag, number in zip(values, numbers, strict=True):
        writer.add_scalar(tag, number, step)


def norm_dtype(tensors: list[Tensor]) -> torch.dtype:
    """The dtype norms of ``tensors`` are computed in: float32, or float64 where any tensor is (64-true precision);
    never half precision, whose sum of squares overflows at 65504."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def total_norm(tensors: list[Tensor]) -> Tensor:
    """L2 norm of all the tensors together, in :func:`norm_dtype`, on the device: NaN or inf when any entry is."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, dtype=norm_dtype(tensors))))


# optimizer -> (global_step, the ids of its gradients, their total norm) of the latest step_total_norm.
_STEP_NORMS: "weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[int, tuple[int, ...], Tensor]]" = (
    weakref.WeakKeyDictionary()
)


def step_total_norm(trainer: "L.Trainer", optimizer: torch.optim.Optimizer) -> Optional[Tensor]:
    """:func:`total_norm` of the gradients ``optimizer`` is about to apply (None when it holds none), computed once
    per optimizer step: the clipping counters and the non-finite guard both need it on every step, and a pass over
    the gradients costs more than their counters. Keyed by the step and the gradient tensors, so a gradient set to
    None or replaced in between is measured afresh; both read it before anything changes a gradient in place
    (clipping comes after every callback), which is why the model's clipping does not reuse it."""
    grads = [p.grad for p in params_with_grad(optimizer)]
    if not grads:
        return None
    key = tuple(map(id, grads))
    cached = _STEP_NORMS.get(optimizer)
    if cached is not None and cached[0] == trainer.global_step and cached[1] == key:
        return cached[2]
    norm = total_norm(grads)  # () on the device
    _STEP_NORMS[optimizer] = (trainer.global_step, key, norm)
    return norm


def params_with_grad(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters whose gradients the optimizer is about to apply — exactly the set Lightning clips."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def logging_step(trainer: "L.Trainer") -> bool:
    """Whether the optimizer step about to be taken is a logging step: the one rule every per-step
    diagnostic, the non-finite guard and the truncated-BPTT train/loss follow (``log_every_n_steps`` 0
    logs nothing, as in Lightning)."""
    n = trainer.log_every_n_steps
    return n > 0 and (trainer.global_step + 1) % n == 0


class Diagnostic(L.Callback):
    """Base class of the diagnostics: reads the model through its view and contributes charts to the one
    custom-scalars layout.

    At setup each diagnostic takes the model's view (:func:`seqmem.views.view_of`: any LightningModule) and
    refuses, in one line, a model it cannot measure (:meth:`check`). The first ``Diagnostic`` in
    ``trainer.callbacks`` writes the merged layout of all of them once at fit start, so
    ``tensorboard --logdir lightning_logs`` opens organised by diagnostic and layer.
    """

    view: Optional[ModuleView] = None

    def make_view(self, pl_module: "L.LightningModule") -> ModuleView:
        """The view this diagnostic reads ``pl_module`` through."""
        return view_of(pl_module)

    def check(self, view: ModuleView) -> None:
        """Raise a one-line ConfigError for a model this diagnostic cannot measure; every model passes by default."""

    def layout(self, view: ModuleView) -> Layout:
        """Charts of this diagnostic: {category: {title: ["Multiline", [tag regex, ...]]}}."""
        return {}

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        # Before any hook of the fit runs (and before the first checkpoint or event is written).
        if stage == "fit":
            self.view = self.make_view(pl_module)
            self.check(self.view)

    @override
    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        diagnostics = [c for c in trainer.callbacks if isinstance(c, Diagnostic)]
        if diagnostics[0] is not self:
            return
        check_unscaled_gradients(trainer)
        if not trainer.is_global_zero:
            return
        writer = tensorboard_writer(trainer)
        if writer is None:
            rank_zero_warn("seqmem diagnostics write to TensorBoard only; this run has no TensorBoardLogger")
            return
        layout: Layout = {}
        for diagnostic in diagnostics:
            for category, charts in diagnostic.layout(diagnostic.view).items():
                layout.setdefault(category, {}).update(charts)
        writer.add_custom_scalars(layout)


class RecurrentDiagnostic(Diagnostic):
    """A diagnostic of the recurrent layers: refuses a model that holds none (naming what it found)."""

    @override
    def check(self, view: ModuleView) -> None:
        view.require_recurrent(type(self).__name__)


class PeriodicDiagnostic(RecurrentDiagnostic):
    """A diagnostic too dear for every step: it measures on optimizer steps 0, N, 2N, ... (rank 0 only).

    Subclasses implement :meth:`measure`.

    Args:
        every_n_steps: measure on optimizer steps 0, N, 2N, ... (weights before that step's update).
    """

    def __init__(self, every_n_steps: int):
        super().__init__()
        require(every_n_steps >= 1, f"every_n_steps of {type(self).__name__} must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps

    @override
    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None and trainer.global_step % self.every_n_steps == 0:
            self.measure(writer, self.view, trainer.global_step)

    def measure(self, writer: SummaryWriter, view: ModuleView, step: int) -> None:
        """Measure the model through its view and write the tags at ``step``."""
        raise NotImplementedError
