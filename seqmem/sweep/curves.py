"""``curves.png``: the sweep config's ``curves`` tags against training step, one line per configuration.

One panel per tag. A configuration's line is the median over its seeds at every step some seed logged
(a seed that stopped early, once solved, drops out from there), the band its min–max; errored trials
are left out. Where people would rather look than read: loss curves with and without clipping side by
side, or accuracy climbing at each distance.
"""

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: write PNGs, never open a window
import matplotlib.pyplot as plt

from seqmem.atomic import replaced
from seqmem.sweep.config import Sweep
from seqmem.sweep.events import read_scalars
from seqmem.sweep.summary import FINISHED, TrialRow


def seed_band(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, and the median, min and max over the curves that logged each step.

    Args:
        curves: one (step, value) list per seed.

    Returns:
        steps (sorted), median, low, high: four lists of the same length.
    """
    at: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            at.setdefault(step, []).append(value)
    steps = sorted(at)
    return steps, [statistics.median(at[s]) for s in steps], [min(at[s]) for s in steps], [max(at[s]) for s in steps]


def plot_curves(path: Path, out: Path, rows: list[TrialRow], sweep: Sweep) -> None:
    """Write ``curves.png`` for the ``curves`` of ``sweep``, reading every finished trial's events under ``out``."""
    tags = [tag for tag, _ in sweep.curves]
    axes_names = [axis.name for axis in sweep.config_axes]
    configs: dict[tuple, list[TrialRow]] = {}
    for row in rows:
        if row.status in FINISHED:
            configs.setdefault(tuple(row.values[a] for a in axes_names), []).append(row)
    scalars = {row.name: read_scalars(out / row.name, tags) for group in configs.values() for row in group}
    # One colour per configuration in every panel, even where a configuration has no curve (a tag that only some
    # arms log, such as clip/ without clipping), so the panels read side by side.
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {key: cycle[i % len(cycle)] for i, key in enumerate(configs)}
    fig, panels = plt.subplots(1, len(tags), figsize=(5.5 * len(tags), 4.2), squeeze=False)
    for ax, (tag, scale) in zip(panels[0], sweep.curves, strict=True):
        for key, group in configs.items():
            steps, median, low, high = seed_band([scalars[row.name][tag] for row in group])
            if not steps:
                continue
            label = ",".join(f"{a}={v}" for a, v in zip(axes_names, key, strict=True)) or "median"
            ax.plot(steps, median, color=colour[key], label=f"{label} ({len(group)} seeds)")
            ax.fill_between(steps, low, high, color=colour[key], alpha=0.2, linewidth=0)
        ax.set(xlabel="optimizer step", ylabel=tag, yscale=scale, title=tag)
        ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.path.stem}: median over seeds, band min–max", fontsize="medium")
    fig.tight_layout()
    with replaced(path) as file:  # whole or not at all
        fig.savefig(file, format="png", dpi=120)
    plt.close(fig)
