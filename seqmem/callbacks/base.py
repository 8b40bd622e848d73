"""What every diagnostic shares: what it reads, when it measures, and the one place it writes.

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
(it advances once per chunk under truncated BPTT). One schedule function, :func:`scheduled`, decides when a
diagnostic writes: :func:`logging_step` — step + 1 is a multiple of ``trainer.log_every_n_steps`` (0: never),
the steps on which Lightning logs ``train/loss`` — for the per-step diagnostics; and ``step % every_n_steps == 0``
for the dearer ones, so that step 0 shows the network at initialisation.

Writing: :func:`emit` is the one place the diagnostics write, to every logger of the run (:mod:`seqmem.loggers`):
scalars (with one device-to-host copy for all of a step's values; TensorBoard's as ``add_scalar`` tags) and
images, each logger through its own image API; the custom-scalars layout, TensorBoard's only, once at fit start.
Only global rank 0 measures and writes — every other rank skips the work entirely, so no diagnostic adds a
collective operation to a DDP run.

A diagnostic is a :class:`Diagnostic`: its schedule (``every_n_steps``), what it measures
(:meth:`Diagnostic.measure`, a pure function of :mod:`seqmem.measures` on the model's view) and the charts it
adds to the layout. The diagnostics that probe a fixed batch keep it in a :class:`~seqmem.callbacks.probe.ProbeBatch`.
"""

import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, NamedTuple, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor
from typing_extensions import override

from seqmem.callbacks.probe import ProbeBatch
from seqmem.errors import require
from seqmem.loggers import log_image, log_layout, log_scalars
from seqmem.measures import params_with_grad, probe_mode, total_norm
from seqmem.views import LossFn, ModuleView, view_of


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


def logging_step(trainer: "L.Trainer") -> bool:
    """Whether the optimizer step about to be taken is a logging step: the one rule every per-step
    diagnostic, the non-finite guard and the truncated-BPTT train/loss follow (``log_every_n_steps`` 0
    logs nothing, as in Lightning)."""
    n = trainer.log_every_n_steps
    return n > 0 and (trainer.global_step + 1) % n == 0


def scheduled(trainer: "L.Trainer", every_n_steps: Optional[int]) -> bool:
    """Whether a diagnostic measures at the optimizer step about to be taken: on logging steps
    (:func:`logging_step`) when ``every_n_steps`` is None, else on steps 0, N, 2N, ... (N = ``every_n_steps``)."""
    if every_n_steps is None:
        return logging_step(trainer)
    return trainer.global_step % every_n_steps == 0


class Measurement(NamedTuple):
    """What a diagnostic measured at one step: scalar tags (device tensors) and images ((H, W, 3) uint8 RGB)."""

    scalars: Mapping[str, Tensor]
    images: Mapping[str, np.ndarray] = {}


def emit(loggers: Sequence[Logger], step: int, measurement: Measurement) -> None:
    """Write a measurement to every logger at ``step`` (scalars first, then images): the one place every
    diagnostic writes."""
    log_scalars(loggers, measurement.scalars, step)
    for tag, image in measurement.images.items():
        log_image(loggers, tag, image, step)


def merged_layout(diagnostics: "Sequence[Diagnostic]") -> Layout:
    """The one custom-scalars layout of several diagnostics: their charts by category, in their order."""
    layout: Layout = {}
    for diagnostic in diagnostics:
        for category, charts in diagnostic.layout(diagnostic.view).items():
            layout.setdefault(category, {}).update(charts)
    return layout


class Diagnostic(L.Callback):
    """Base class of the diagnostics: a schedule, a measurement on the model's view, and the charts it adds to
    the one custom-scalars layout.

    At setup each diagnostic takes the model's view (:func:`seqmem.views.view_of`: any LightningModule) and
    refuses, in one line, a model it cannot measure (:meth:`check`). On global rank 0, at each optimizer step
    its schedule picks (:func:`scheduled`), it measures (:meth:`measure`) and writes (:meth:`write`). The first
    ``Diagnostic`` in ``trainer.callbacks`` writes the merged layout of all of them once at fit start, so
    ``tensorboard --logdir lightning_logs`` opens organised by diagnostic and layer. A diagnostic given a
    ``probe_batch_size`` measures on a probe batch (:class:`~seqmem.callbacks.probe.ProbeBatch`) in
    :func:`~seqmem.measures.probe_mode`, and keeps that batch in checkpoints.

    Subclasses implement :meth:`measure`, and :meth:`check` and :meth:`layout` where they have something to say.

    Args:
        every_n_steps: measure on optimizer steps 0, N, 2N, ...; None: on logging steps (:func:`logging_step`).
        probe_batch_size: rows of the first training batch kept as the probe batch (SequenceModel; any other model
            keeps the whole batch); None: no probe batch.
        loss_fn: the loss a probe runs, ``(module, batch) -> scalar``; None: the module's own
            (``probe_loss(batch)`` if it defines one, else its training_step's; SequenceModel's probe loss).
    """

    #: Which call of :class:`seqmem.diagnose.Diagnostics` runs this diagnostic in a loop written by hand:
    #: "gradients" (after backward, before clipping), "probe" (every N steps, on a batch), or None (it needs the
    #: Trainer).
    plain_loop: ClassVar[Optional[Literal["gradients", "probe"]]] = None

    view: Optional[ModuleView] = None

    def __init__(
        self,
        every_n_steps: Optional[int] = None,
        probe_batch_size: Optional[int] = None,
        loss_fn: Optional[LossFn] = None,
    ):
        super().__init__()
        name = type(self).__name__
        if every_n_steps is not None:
            require(every_n_steps >= 1, f"every_n_steps of {name} must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.probe_batch_size = probe_batch_size
        self.probe_batch = None if probe_batch_size is None else ProbeBatch(probe_batch_size, name)
        self.loss_fn = loss_fn

    def check(self, view: ModuleView) -> None:
        """Raise a one-line ConfigError for a model this diagnostic cannot measure; every model passes by default."""

    def layout(self, view: ModuleView) -> Layout:
        """Charts of this diagnostic: {category: {title: ["Multiline", [tag regex, ...]]}}."""
        return {}

    def measure(self, step: int, batch: Any) -> Measurement:
        """Measure the model through :attr:`view` at ``step``.

        Args:
            step: the x-axis value of what is written.
            batch: the probe batch on the model's device (the model in probe mode), or None without one.
        """
        raise NotImplementedError

    def attach(self, view: ModuleView) -> None:
        """Measure the model through ``view`` from now on: what setup does with the fitted module's view, and what a
        loop written by hand does (:class:`seqmem.diagnose.Diagnostics`)."""
        self.view = view
        self.check(view)

    def write(self, loggers: Sequence[Logger], step: int, batch: Optional[Any] = None) -> None:
        """Measure now and write to ``loggers`` at ``step``.

        Args:
            loggers: where to write.
            step: the x-axis value.
            batch: the batch a probe measures on, in place of the kept probe batch; ignored by a diagnostic
                without one.
        """
        if self.probe_batch is None:
            emit(loggers, step, self.measure(step, None))
            return
        batch = self.probe_batch.on_device(self.view.module, batch)
        if batch is None:
            return
        with probe_mode(self.view.module):
            measurement = self.measure(step, batch)
        emit(loggers, step, measurement)

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        # Before any hook of the fit runs (and before the first checkpoint or event is written).
        if stage == "fit":
            self.attach(view_of(pl_module, self.loss_fn))

    @override
    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        diagnostics = [c for c in trainer.callbacks if isinstance(c, Diagnostic)]
        if diagnostics[0] is not self:
            return
        check_unscaled_gradients(trainer)
        if trainer.is_global_zero:
            log_layout(trainer.loggers, merged_layout(diagnostics))

    @override
    def on_train_batch_start(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        if self.probe_batch is not None and trainer.is_global_zero:
            self.probe_batch.keep(self.view, batch)

    @override
    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        if trainer.is_global_zero and trainer.loggers and scheduled(trainer, self.every_n_steps):
            self.write(trainer.loggers, trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {} if self.probe_batch is None else {"probe": self.probe_batch.state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.probe_batch is not None:
            self.probe_batch.load(state_dict["probe"])
