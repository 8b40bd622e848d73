"""What every diagnostic shares: where it writes, on which steps, the probe batch, heatmap colours.

Writing: scalars and images go straight to the TensorBoard logger's ``SummaryWriter`` as
``add_scalar`` / ``add_image`` tags (never ``add_scalars``, which opens one writer per key), and
only on global rank 0 — every other rank skips the work entirely, so no diagnostic adds a
collective operation to a DDP run.

Steps: the x-axis of every diagnostic is ``trainer.global_step`` at ``on_before_optimizer_step``,
i.e. the index of the optimizer step being taken (it advances once per chunk under truncated BPTT).
Per-step scalars are logged when ``(step + 1) % log_every_n_steps == 0`` — the same steps on which
Lightning logs ``train/loss`` in automatic optimisation — and periodic diagnostics when
``step % every_n_steps == 0``, so that step 0 shows the network at initialisation.
"""

from contextlib import contextmanager
from typing import Iterator, Optional

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from seqmem.errors import require

# Custom-scalars layout: {category: {chart title: ["Multiline", [tag regex, ...]]}}.
Layout = dict[str, dict[str, list]]

# Viridis sampled at 0, 1/4, 1/2, 3/4, 1: perceptually ordered, readable in greyscale.
_VIRIDIS = torch.tensor(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=torch.float32
) / 255.0


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
    for tag, number in zip(values, numbers):
        writer.add_scalar(tag, number, step)


def params_with_grad(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters whose gradients the optimizer is about to apply — exactly the set Lightning clips."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def log_step_due(trainer: "L.Trainer") -> bool:
    """Whether the optimizer step about to be taken is one on which Lightning flushes logs."""
    n = trainer.log_every_n_steps
    return n > 0 and (trainer.global_step + 1) % n == 0


def heatmap(log_values: Tensor, low: float, high: float, cell: tuple[int, int]) -> Tensor:
    """An RGB image of a (R, C) map: ``low`` -> dark purple, ``high`` -> yellow, clamped between.

    Args:
        log_values: (R, C) values to colour (already on a log scale).
        low: value drawn with the first colour.
        high: value drawn with the last colour.
        cell: (height, width) in pixels of each entry, so that a few layers stay visible.

    Returns:
        (3, R * height, C * width) float image in [0, 1], for ``SummaryWriter.add_image``.
    """
    position = ((log_values.float() - low) / (high - low)).clamp(0, 1) * (len(_VIRIDIS) - 1)  # (R, C)
    lower = position.floor().long().clamp(max=len(_VIRIDIS) - 2)  # (R, C)
    frac = (position - lower).unsqueeze(-1)  # (R, C, 1)
    colours = _VIRIDIS.to(log_values.device)
    rgb = colours[lower] * (1 - frac) + colours[lower + 1] * frac  # (R, C, 3)
    rgb = rgb.repeat_interleave(cell[0], dim=0).repeat_interleave(cell[1], dim=1)  # (R*h, C*w, 3)
    return rgb.permute(2, 0, 1)  # (3, R*h, C*w)


def norm_heatmap(norms: Tensor, decades: float) -> Tensor:
    """(R, T) norms -> RGB image of log10(norm / max norm), from −``decades`` (dark) to 0 (yellow)."""
    log_norms = norms.clamp_min(torch.finfo(norms.dtype).tiny).log10()  # (R, T)
    return heatmap(log_norms - log_norms.max(), -decades, 0.0, cell=(16, max(1, 512 // norms.shape[1])))


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

    The first ``Diagnostic`` in ``trainer.callbacks`` writes the merged layout of all of them once at
    fit start, so ``tensorboard --logdir lightning_logs`` opens organised by diagnostic and layer.
    """

    def layout(self, pl_module: "L.LightningModule") -> Layout:
        """Charts of this diagnostic: {category: {title: ["Multiline", [tag regex, ...]]}}."""
        return {}

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        diagnostics = [c for c in trainer.callbacks if isinstance(c, Diagnostic)]
        if diagnostics[0] is not self or not trainer.is_global_zero:
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


class ProbeDiagnostic(Diagnostic):
    """A diagnostic that runs extra forward/backward passes on a fixed probe batch every N steps.

    The probe batch is the first ``probe_batch_size`` rows of the first training batch this rank
    sees, kept for the whole run so that successive probes differ only by the weights; each probe
    starts from a zero state (stateful tasks too) and runs the whole sequence (no truncation). Probes
    are rank-local: they run on global rank 0 only and are not reduced across ranks.

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
        super().__init__()
        name = type(self).__name__
        require(every_n_steps >= 1, f"every_n_steps of {name} must be >= 1, got {every_n_steps}")
        require(probe_batch_size >= 1, f"probe_batch_size of {name} must be >= 1, got {probe_batch_size}")
        require(all(k >= 1 for k in lags), f"lags of {name} must all be >= 1, got {list(lags)}")
        require(0 < threshold < 1, f"threshold of {name} must be in (0, 1), got {threshold}")
        require(decades > 0, f"decades of {name} must be > 0, got {decades}")
        self.every_n_steps = every_n_steps
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

    def on_train_batch_start(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: dict, batch_idx: int
    ) -> None:
        if self.probe is None and trainer.is_global_zero:
            # Clone: the loader may reuse its buffers, and the probe must stay fixed.
            self.probe = {key: batch[key][: self.probe_batch_size].clone() for key in ("x", "y")}

    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        writer = tensorboard_writer(trainer)
        if writer is None or self.probe is None or step % self.every_n_steps != 0:
            return
        with probe_mode(pl_module):
            self.probe_and_log(writer, pl_module, self.probe["x"], self.probe["y"], step)

    def probe_and_log(
        self, writer: SummaryWriter, pl_module: "L.LightningModule", x: Tensor, y: Tensor, step: int
    ) -> None:
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
