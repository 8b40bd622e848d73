"""Every figure of the diagnostics, drawn as an (H, W, 3) uint8 RGB image for a logger's image API: the
heatmaps of ``grad_time/heatmap`` and ``sensitivity/heatmap`` (:class:`NormHeatmap`) and the image
``lyapunov/spectrum`` (:class:`SpectrumPlot`).

Figures are built with matplotlib's ``Figure``, not pyplot: they need no display and select no backend. Each is
built once and redrawn with new data, because building a figure costs as much as the measurement it shows.
"""

from typing import Optional

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator
from torch import Tensor


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
        a logger's image API (:func:`seqmem.loggers.log_image`); W = 560 pixels, H = 128 + 28·R."""
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


class SpectrumPlot:
    """The image ``lyapunov/spectrum``: every exponent against training step, one panel per layer, one line
    per exponent index, coloured by index.

    The figure is built once and redrawn with the growing history: building one and drawing it afresh
    costs about 0.3 s on a CPU core, twice the probe's own measurement on a small cell, while redrawing
    a kept one costs about 0.1 s. Margins are fixed for the same reason (a layout engine would lay it out
    again on every draw). Built with ``Figure``, not pyplot: it needs no display and selects no backend.

    Args:
        num_layers: L, one panel each.
        k: exponents per layer, one line each.
        length: T of the probe sequences (for the title).
    """

    def __init__(self, num_layers: int, k: int, length: int):
        cmap = colormaps["viridis"]
        norm = BoundaryNorm(torch.arange(k + 1).add(0.5).tolist(), cmap.N)  # one colour per index 1..k
        figure = Figure(figsize=(2.5 + 4.0 * num_layers, 3.6))
        figure.subplots_adjust(left=0.9 / figure.get_figwidth(), right=0.9, bottom=0.15, top=0.8, wspace=0.1)
        self.axes = figure.subplots(1, num_layers, sharey=True, squeeze=False)[0]
        self.lines = []  # lines[layer][i]: exponent i + 1 of the layer
        for layer, ax in enumerate(self.axes):
            self.lines.append([ax.plot([], [], marker="o", markersize=3, color=cmap(norm(i + 1)))[0] for i in range(k)])
            ax.axhline(0.0, color="grey", linestyle=":", linewidth=1, label="λ = 0: neither grows nor shrinks")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            ax.set_title(f"layer {layer}")
            ax.set_xlabel("training step")
            ax.legend(loc="lower right", fontsize="small")
        self.axes[0].set_ylabel("λ_i: mean ln growth per step")
        ticks = range(1, k + 1, max(1, k // 8))
        bar = figure.colorbar(
            ScalarMappable(norm, cmap),
            ax=list(self.axes),
            label="exponent index i (1 = largest)",
            ticks=ticks,
            pad=0.02,
        )
        bar.ax.invert_yaxis()  # λ_1, the largest, on top as in the panels
        figure.suptitle(
            f"Finite-time Lyapunov exponents of the step Jacobians J_t (probe batch, T = {length})", fontsize="medium"
        )
        self.canvas = FigureCanvasAgg(figure)

    def render(self, steps: list[int], exponents: Tensor) -> np.ndarray:
        """The plot of every probe so far as an (H, W, 3) uint8 RGB image.

        Args:
            steps: training steps of the probes, (P,).
            exponents: (P, L, k) exponents of every probe, on the CPU.
        """
        pad = max(1.0, 0.05 * (max(steps) - min(steps)))  # a lone first probe still gets a sensible x-axis
        for layer, (ax, lines) in enumerate(zip(self.axes, self.lines, strict=True)):
            for i, line in enumerate(lines):
                line.set_data(steps, exponents[:, layer, i].tolist())
            ax.set_xlim(min(steps) - pad, max(steps) + pad)
            ax.relim()
            ax.autoscale_view(scalex=False)
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)
