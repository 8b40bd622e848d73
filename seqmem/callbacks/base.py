"""What every diagnostic shares: what it reads, where it writes, on which steps, the probe batch.

When: every diagnostic measures in ``on_before_optimizer_step``. Lightning calls that hook after the
backward pass, after the DDP all-reduce and after AMP unscaling, and *before* any clipping — its own
Trainer clipping comes after the hook, and SequenceModel clips in its own ``on_before_optimizer_step``,
which Lightning calls after the callbacks'. So every diagnostic sees the averaged, unscaled, pre-clip
gradient, identical on every rank, in automatic and manual (truncated BPTT) optimisation alike. (Under
16-mixed, a fused optimizer unscales inside its own step, after the hook: that pairing is refused.) Norms
and spectra are computed in float32 whatever the precision, so a tag means the same in every precision.

Steps: the x-axis is ``trainer.global_step`` at that hook, the index of the optimizer step being taken
(it advances once per chunk under truncated BPTT). Two rules decide when a diagnostic writes:
:func:`logging_step` — step + 1 is a multiple of ``trainer.log_every_n_steps`` (0: never), the steps on
which Lightning logs ``train/loss`` — for the per-step diagnostics; and ``step % every_n_steps == 0``
(:class:`PeriodicDiagnostic`) for the dearer ones, so that step 0 shows the network at initialisation.

Writing: scalars and images go straight to the TensorBoard logger's ``SummaryWriter`` as
``add_scalar`` / ``add_image`` tags (never ``add_scalars``, which opens one writer per key), and
only on global rank 0 — every other rank skips the work entirely, so no diagnostic adds a
collective operation to a DDP run. Heatmaps are matplotlib figures (axes, colour bar) drawn on the
Agg canvas, without pyplot, on probe steps only.
"""

from contextlib import contextmanager
from typing import Any, Iterator, Optional, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import get_protocol_members, override

from seqmem.errors import require
from seqmem.models import RecurrentNet
from seqmem.tasks.spec import TaskSpec


@runtime_checkable
class Diagnosable(Protocol):
    """What the diagnostics read from the LightningModule they watch; :class:`~seqmem.module.SequenceModel`
    provides all of it. Checked once per fit, by the first diagnostic, with an error naming what is missing."""

    net: RecurrentNet  # layers, their parameters by role, W_h, the step-by-step path
    embed: nn.Module  # token ids -> vectors (nn.Identity for continuous inputs)
    head: nn.Module
    task: TaskSpec

    def forward_steps(self, x: Tensor) -> tuple[Tensor, list[list[Tensor]]]: ...

    def loss(self, pred: Tensor, y: Tensor) -> Tensor: ...

    def clip_settings(self) -> tuple[Optional[float], Optional[str]]: ...


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


def check_diagnosable(pl_module: "L.LightningModule") -> None:
    """Raise a TypeError naming every member of :class:`Diagnosable` that ``pl_module`` lacks."""
    missing = sorted(name for name in get_protocol_members(Diagnosable) if not hasattr(pl_module, name))
    if missing:
        raise TypeError(
            f"seqmem diagnostics need a LightningModule like seqmem.module.SequenceModel; "
            f"{type(pl_module).__name__} lacks {', '.join(missing)}"
        )


# Custom-scalars layout: {category: {chart title: ["Multiline", [tag regex, ...]]}}.
Layout = dict[str, dict[str, list]]


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


def total_norm(tensors: list[Tensor]) -> Tensor:
    """L2 norm of all the tensors together, in float32 whatever their dtype (a half-precision sum of squares
    overflows at 65504), on the device: NaN or inf when any entry is."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, dtype=torch.float32)))


def params_with_grad(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters whose gradients the optimizer is about to apply — exactly the set Lightning clips."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def logging_step(trainer: "L.Trainer") -> bool:
    """Whether the optimizer step about to be taken is a logging step: the one rule every per-step
    diagnostic and the non-finite guard follow (``log_every_n_steps`` 0 logs nothing, as in Lightning)."""
    n = trainer.log_every_n_steps
    return n > 0 and (trainer.global_step + 1) % n == 0


def norm_image(norms: Tensor, decades: float, xlabel: str, ylabel: str, quantity: str) -> np.ndarray:
    """A heatmap of (R, T) norms, readable on its own: log10(norm / max) from −``decades`` to 0 in viridis,
    one row per R (layers), T along the x axis, with axis labels, a colour bar and the max in the title.

    Args:
        norms: (R, T) non-negative norms.
        decades: orders of magnitude spanned by the colour scale; smaller ratios share its darkest colour.
        xlabel: what the columns are (time step t, input position ℓ).
        ylabel: what the rows are ("layer"), or "" for a single unlabelled row.
        quantity: the norm's name in the title and colour bar, e.g. "‖dL/dh_t‖".

    Returns:
        (H, W, 3) uint8 RGB image for ``SummaryWriter.add_image(..., dataformats="HWC")``.
    """
    log_norms = norms.detach().float().clamp_min(torch.finfo(torch.float32).tiny).log10()  # (R, T)
    peak = log_norms.max()
    rows, steps = log_norms.shape
    figure = Figure(figsize=(7.0, 1.6 + 0.35 * rows), dpi=80, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(
        (log_norms - peak).cpu().numpy(),
        aspect="auto",
        cmap="viridis",
        vmin=-decades,
        vmax=0.0,
        interpolation="nearest",
        extent=(-0.5, steps - 0.5, rows - 0.5, -0.5),
    )
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_yticks(range(rows) if ylabel else [])
    axes.set_title(f"{quantity} relative to its max ({10 ** peak.item():.3g})", fontsize="medium")
    figure.colorbar(image, ax=axes, label=f"log10({quantity} / max)")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)


def gradient_horizon(norms: Tensor, threshold: float = 1e-3) -> Tensor:
    """Largest lag k with norms[T−1−k] / norms[T−1] ≥ threshold (0 where the final norm is 0).

    Args:
        norms: (..., T) norms along time, the last entry at lag 0.
        threshold: smallest ratio to the final norm that still counts as reaching back.

    Returns:
        (...) long tensor of lags, computed on the device (no host sync).
    """
    final = norms[..., -1:]  # (..., 1)
    lags = torch.arange(norms.shape[-1] - 1, -1, -1, device=norms.device)  # (T,) lag of each position
    reaches = (norms >= threshold * final) & (final > 0)  # (..., T)
    return torch.where(reaches, lags, 0).amax(dim=-1)  # (...)


class Diagnostic(L.Callback):
    """Base class of the diagnostics: contributes charts to the one custom-scalars layout.

    The first ``Diagnostic`` in ``trainer.callbacks`` checks the module against :class:`Diagnosable` and
    writes the merged layout of all of them once at fit start, so ``tensorboard --logdir lightning_logs``
    opens organised by diagnostic and layer.
    """

    def layout(self, pl_module: Diagnosable) -> Layout:
        """Charts of this diagnostic: {category: {title: ["Multiline", [tag regex, ...]]}}."""
        return {}

    @override
    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        diagnostics = [c for c in trainer.callbacks if isinstance(c, Diagnostic)]
        if diagnostics[0] is not self:
            return
        check_diagnosable(pl_module)
        check_unscaled_gradients(trainer)
        if not trainer.is_global_zero:
            return
        writer = tensorboard_writer(trainer)
        if writer is None:
            rank_zero_warn("seqmem diagnostics write to TensorBoard only; this run has no TensorBoardLogger")
            return
        layout: Layout = {}
        for diagnostic in diagnostics:
            for category, charts in diagnostic.layout(pl_module).items():
                layout.setdefault(category, {}).update(charts)
        writer.add_custom_scalars(layout)


class PeriodicDiagnostic(Diagnostic):
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
            self.measure(writer, pl_module, trainer.global_step)

    def measure(self, writer: SummaryWriter, pl_module: Diagnosable, step: int) -> None:
        """Measure the module and write the tags at ``step``."""
        raise NotImplementedError


class ProbeDiagnostic(PeriodicDiagnostic):
    """A periodic diagnostic that runs extra forward/backward passes on a fixed probe batch.

    The probe batch is the first ``probe_batch_size`` rows of the first training batch this rank
    sees, kept for the whole run so that successive probes differ only by the weights; each probe
    starts from a zero state (stateful tasks too) and runs the whole sequence (no truncation), in
    :func:`probe_mode`. Probes are rank-local: they run on global rank 0 only and are not reduced.

    Subclasses implement :meth:`probe_and_log`.

    Args:
        every_n_steps: probe on optimizer steps 0, N, 2N, ...
        probe_batch_size: rows of the first training batch kept as the probe batch.
        lags: lags k at which the ratio of a curve to its lag-0 value is logged (those < T).
        threshold: the horizon is the largest lag whose ratio is at least this.
        decades: orders of magnitude spanned by the heatmap's colour scale.
    """

    def __init__(
        self, every_n_steps: int, probe_batch_size: int, lags: tuple[int, ...], threshold: float, decades: float
    ):
        super().__init__(every_n_steps)
        name = type(self).__name__
        require(probe_batch_size >= 1, f"probe_batch_size of {name} must be >= 1, got {probe_batch_size}")
        require(all(k >= 1 for k in lags), f"lags of {name} must all be >= 1, got {list(lags)}")
        require(0 < threshold < 1, f"threshold of {name} must be in (0, 1), got {threshold}")
        require(decades > 0, f"decades of {name} must be > 0, got {decades}")
        self.probe_batch_size = probe_batch_size
        self.lags = tuple(lags)
        self.threshold = threshold
        self.decades = decades
        self.probe: Optional[dict[str, Tensor]] = None

    def summarise(self, prefix: str, norms: Tensor) -> dict[str, Tensor]:
        """``<prefix>/final`` (lag 0), ``<prefix>/ratio_lag<k>`` and ``<prefix>/horizon`` of a (T,) curve."""
        T = norms.shape[0]
        values = {f"{prefix}/final": norms[-1]}
        for k in self.lags:
            if k < T:
                values[f"{prefix}/ratio_lag{k}"] = norms[T - 1 - k] / norms[-1]
        values[f"{prefix}/horizon"] = gradient_horizon(norms, self.threshold)
        return values

    @override
    def on_train_batch_start(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: dict, batch_idx: int
    ) -> None:
        if self.probe is None and trainer.is_global_zero:
            # Clone: the loader may reuse its buffers, and the probe must stay fixed.
            self.probe = {key: batch[key][: self.probe_batch_size].clone() for key in ("x", "y")}

    @override
    def measure(self, writer: SummaryWriter, pl_module: Diagnosable, step: int) -> None:
        if self.probe is None:
            return
        device = next(pl_module.parameters()).device  # a probe restored from a checkpoint arrives on the CPU
        x, y = (self.probe[key].to(device) for key in ("x", "y"))
        with probe_mode(pl_module):
            self.probe_and_log(writer, pl_module, x, y, step)

    @override
    def state_dict(self) -> dict[str, Any]:
        # The probe batch travels in checkpoints: a resumed run goes on probing the same batch (its first
        # training batch would be another), so its curves continue instead of jumping.
        probe = None if self.probe is None else {key: value.cpu() for key, value in self.probe.items()}
        return {"probe": probe}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probe = state_dict["probe"]

    def probe_and_log(self, writer: SummaryWriter, pl_module: Diagnosable, x: Tensor, y: Tensor, step: int) -> None:
        """Run the probe on (x, y) and write its tags at ``step``."""
        raise NotImplementedError


@contextmanager
def probe_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode (dropout off), autograd on, full precision; the training mode is restored after.

    Needed because ``on_before_optimizer_step`` runs inside ``optimizer.step``, where torch turns
    autograd off, and a probe must measure the deterministic network, not one dropout sample.
    """
    was_training = module.training
    module.eval()
    device_type = next(module.parameters()).device.type
    try:
        with torch.enable_grad(), torch.autocast(device_type, enabled=False):
            yield
    finally:
        module.train(was_training)
