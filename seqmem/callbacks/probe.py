"""The probe diagnostics' common ground: a fixed probe batch, probe mode, and the curves they summarise.

A probe runs extra forward/backward passes of the model, its recurrent layers on the step-by-step path, on a
fixed batch every N steps, without touching the training gradients. The per-timestep gradients and the input
sensitivity both measure a curve over time whose ratio to its last entry decays with the lag: :class:`CurveProbe`
summarises such a curve (final value, ratios at chosen lags, horizon) and draws it as a heatmap.
"""

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import lightning as L
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from seqmem.callbacks.base import PeriodicDiagnostic
from seqmem.errors import require
from seqmem.views import LossFn, ModuleView, batch_to, view_of


class ProbeDiagnostic(PeriodicDiagnostic):
    """A periodic diagnostic that runs extra forward/backward passes on a fixed probe batch.

    The probe batch is kept from the first training batch this rank sees, for the whole run, so that successive
    probes differ only by the weights: SequenceModel keeps its first ``probe_batch_size`` rows, any other model
    the whole batch (its layout is the model's own). Each probe runs the model in :func:`probe_mode` with its
    recurrent layers stepped (:mod:`seqmem.views`); a SequenceModel starts from a zero state and runs the whole
    sequence (no truncation). Probes are rank-local: they run on global rank 0 only and are not reduced.

    Subclasses implement :meth:`probe_and_log`.

    Args:
        every_n_steps: probe on optimizer steps 0, N, 2N, ...
        probe_batch_size: rows of the first training batch kept as the probe batch (SequenceModel).
        loss_fn: the loss the probes run, ``(module, batch) -> scalar``; None: the module's own
            (``probe_loss(batch)`` if it defines one, else its training_step's; SequenceModel's probe loss).
    """

    def __init__(self, every_n_steps: int, probe_batch_size: int, loss_fn: Optional[LossFn] = None):
        super().__init__(every_n_steps)
        name = type(self).__name__
        require(probe_batch_size >= 1, f"probe_batch_size of {name} must be >= 1, got {probe_batch_size}")
        self.probe_batch_size = probe_batch_size
        self.loss_fn = loss_fn
        self.probe: Optional[Any] = None

    @override
    def make_view(self, pl_module: "L.LightningModule") -> ModuleView:
        return view_of(pl_module, self.loss_fn)

    @override
    def check(self, view: ModuleView) -> None:
        super().check(view)
        view.require_probe_loss(type(self).__name__)

    @override
    def on_train_batch_start(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        if self.probe is None and trainer.is_global_zero:
            self.probe = self.view.keep_probe(batch, self.probe_batch_size)

    @override
    def measure(self, writer: SummaryWriter, view: ModuleView, step: int) -> None:
        if self.probe is None:
            return
        device = next(view.module.parameters()).device  # a probe restored from a checkpoint arrives on the CPU
        batch = batch_to(self.probe, lambda t: t.to(device))
        with probe_mode(view.module):
            self.probe_and_log(writer, view, batch, step)

    @override
    def state_dict(self) -> dict[str, Any]:
        # The probe batch travels in checkpoints: a resumed run goes on probing the same batch (its first
        # training batch would be another), so its curves continue instead of jumping.
        return {"probe": None if self.probe is None else batch_to(self.probe, lambda t: t.cpu())}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probe = state_dict["probe"]

    def probe_and_log(self, writer: SummaryWriter, view: ModuleView, batch: Any, step: int) -> None:
        """Run the probe on ``batch`` (on the model's device) and write its tags at ``step``."""
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


class CurveProbe(ProbeDiagnostic):
    """A probe that measures a curve over time (a norm per step or input position) and logs its decay with lag.

    Args:
        every_n_steps: probe on optimizer steps 0, N, 2N, ...
        probe_batch_size: rows of the first training batch kept as the probe batch.
        lags: lags k at which the ratio of a curve to its lag-0 value is logged (those < T).
        threshold: the horizon is the largest lag whose ratio is at least this.
        decades: orders of magnitude spanned by the heatmap's colour scale.
    """

    #: The heatmap's labels: (xlabel, ylabel, quantity), see :class:`NormHeatmap`.
    heatmap_labels: tuple[str, str, str] = ("time step t", "layer", "norm")

    def __init__(
        self,
        every_n_steps: int,
        probe_batch_size: int,
        lags: tuple[int, ...],
        threshold: float,
        decades: float,
        loss_fn: Optional[LossFn] = None,
    ):
        super().__init__(every_n_steps, probe_batch_size, loss_fn)
        name = type(self).__name__
        require(all(k >= 1 for k in lags), f"lags of {name} must all be >= 1, got {list(lags)}")
        require(0 < threshold < 1, f"threshold of {name} must be in (0, 1), got {threshold}")
        require(decades > 0, f"decades of {name} must be > 0, got {decades}")
        self.lags = tuple(lags)
        self.threshold = threshold
        self.decades = decades
        self.heatmaps: dict[str, NormHeatmap] = {}  # one kept figure per recurrence (tag prefix)

    def heatmap(self, prefix: str, norms: Tensor) -> np.ndarray:
        """The heatmap image of one recurrence's (R, T) curves, drawn on its kept figure."""
        if prefix not in self.heatmaps:
            self.heatmaps[prefix] = NormHeatmap(self.decades, *self.heatmap_labels)
        return self.heatmaps[prefix].render(norms)

    def summarise(self, prefix: str, norms: Tensor) -> dict[str, Tensor]:
        """``<prefix>/final`` (lag 0), ``<prefix>/ratio_lag<k>`` and ``<prefix>/horizon`` of a (T,) curve."""
        T = norms.shape[0]
        values = {f"{prefix}/final": norms[-1]}
        for k in self.lags:
            if k < T:
                values[f"{prefix}/ratio_lag{k}"] = norms[T - 1 - k] / norms[-1]
        values[f"{prefix}/horizon"] = gradient_horizon(norms, self.threshold)
        return values


class NormHeatmap:
    """A heatmap of (R, T) norms, readable on its own: log10(norm / max) from −``decades`` to 0 in viridis,
    one row per R (layers), T along the x axis, with axis labels, a colour bar and the max in the title.

    The figure is built once, at the first render, and redrawn with each probe's data: building one costs
    about 0.2 s on a CPU core (text layout, colour bar), as much as the probe it shows, while redrawing a
    kept one costs about 0.06 s. Margins are fixed in inches for the same reason (a layout engine would
    lay the figure out again on every draw).

    Args:
        decades: orders of magnitude spanned by the colour scale; smaller ratios share its darkest colour.
        xlabel: what the columns are (time step t, input position ℓ).
        ylabel: what the rows are ("layer"), or "" for a single unlabelled row.
        quantity: the norm's name in the title and colour bar, e.g. "‖dL/dh_t‖".
    """

    def __init__(self, decades: float, xlabel: str, ylabel: str, quantity: str):
        self.decades = decades
        self.xlabel = xlabel
        self.ylabel = ylabel
        self.quantity = quantity
        self._canvas: Optional[FigureCanvasAgg] = None  # built at the first render, for its (R, T)
        self._image: Optional[AxesImage] = None

    def render(self, norms: Tensor) -> np.ndarray:
        """The heatmap of ``norms`` (R, T) as an (H, W, 3) uint8 RGB image for
        ``SummaryWriter.add_image(..., dataformats="HWC")``; W = 560 pixels, H = 128 + 28·R."""
        log_norms = norms.detach().float().clamp_min(torch.finfo(torch.float32).tiny).log10()  # (R, T)
        peak = log_norms.max()
        if self._image is None or self._image.get_array().shape != log_norms.shape:
            self._build(*log_norms.shape)
        self._image.set_data((log_norms - peak).cpu().numpy())  # (R, T)
        self._image.axes.set_title(f"{self.quantity} relative to its max ({10 ** peak.item():.3g})", fontsize="medium")
        self._canvas.draw()
        return np.asarray(self._canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)

    def _build(self, rows: int, steps: int) -> None:
        width, height = 7.0, 1.6 + 0.35 * rows  # inches, at 80 dpi
        figure = Figure(figsize=(width, height), dpi=80)
        # [left, bottom, width, height] as fractions of the figure, from margins in inches: room for the
        # y label on the left, the x label below, the title above, and the colour bar with its label right.
        left, right, bottom, top = 0.75, 1.45, 0.5, 0.35
        axes = figure.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))
        bar = figure.add_axes(((width - 1.25) / width, bottom / height, 0.15 / width, 1 - (bottom + top) / height))
        self._image = axes.imshow(
            np.zeros((rows, steps)),
            aspect="auto",
            cmap="viridis",
            vmin=-self.decades,
            vmax=0.0,
            interpolation="nearest",
            extent=(-0.5, steps - 0.5, rows - 0.5, -0.5),
        )
        axes.set_xlabel(self.xlabel)
        axes.set_ylabel(self.ylabel)
        axes.set_yticks(range(rows) if self.ylabel else [])
        figure.colorbar(self._image, cax=bar, label=f"log10({self.quantity} / max)")
        self._canvas = FigureCanvasAgg(figure)


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
