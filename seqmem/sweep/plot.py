"""``summary.png``: steps to solve per configuration, every seed shown.

With a numeric axis in the grid (other than the seed), steps to solve are plotted against the first
such axis, one line per combination of the other axes (the median; error bars min–max; dots the
seeds). Without one, one bar per configuration. Seeds that did not solve sit on a line above the
budget labelled "not solved within N". A sweep without a solved criterion plots the final metric.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: write PNGs, never open a window
import matplotlib.pyplot as plt

from seqmem.atomic import replaced
from seqmem.sweep.config import Sweep
from seqmem.sweep.summary import FINISHED, ConfigSummary, TrialRow


def plot_summary(path: Path, rows: list[TrialRow], summaries: list[ConfigSummary], sweep: Sweep, metric: str) -> None:
    """Write the plot of the module docstring to ``path``."""
    by_steps = any(s.criterion for s in summaries)
    ceiling = sweep.budget * 1.1  # where "not solved within the budget" is drawn

    def value(row: TrialRow) -> float:
        if not by_steps:
            return row.final if row.final is not None else math.nan
        return float(row.steps_to_solve) if row.status == "solved" else ceiling

    def shown(x: float) -> float:
        return ceiling if math.isinf(x) else x

    config_axes = [axis.name for axis in sweep.config_axes]
    numeric = next((axis.name for axis in sweep.config_axes if axis.numeric), None)
    finished = [r for r in rows if r.status in FINISHED]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(summaries) + 2) if numeric is None else 7.0, 4.5))
    if numeric is not None:
        others = [a for a in config_axes if a != numeric]
        series: dict[tuple, list[ConfigSummary]] = {}
        for s in summaries:
            series.setdefault(tuple(s.values[a] for a in others), []).append(s)
        for key, group in series.items():
            points = [(s.values[numeric], s.steps if by_steps else s.final) for s in group]
            points = sorted(((x, p) for x, p in points if p is not None), key=lambda point: point[0])
            xs = [x for x, _ in points]
            med = [shown(p.median) for _, p in points]
            low = [shown(p.median) - shown(p.low) for _, p in points]
            high = [shown(p.high) - shown(p.median) for _, p in points]
            label = ",".join(f"{a}={v}" for a, v in zip(others, key, strict=True)) or "median"
            line = ax.errorbar(xs, med, yerr=[low, high], marker="o", capsize=3, label=label)
            mine = [r for r in finished if all(r.values[a] == v for a, v in zip(others, key, strict=True))]
            ax.scatter(
                [r.values[numeric] for r in mine],
                [value(r) for r in mine],
                s=12,
                alpha=0.5,
                color=line[0].get_color(),
                zorder=3,
            )
        ax.set_xlabel(numeric)
        if len(series) > 1:
            ax.legend(fontsize=8)
    else:
        names = [",".join(f"{a}={s.values[a]}" for a in config_axes) or "all" for s in summaries]
        for i, s in enumerate(summaries):
            spread = s.steps if by_steps else s.final
            if spread is None:  # no seed finished: say why instead of leaving a silent gap
                ax.text(i, 0, "error" if s.errors else "unfinished", ha="center", va="bottom", fontsize=8)
                continue
            unsolved = math.isinf(spread.median)
            ax.bar(i, shown(spread.median), color="0.85" if unsolved else "C0", hatch="//" if unsolved else None)
            ax.errorbar(
                i,
                shown(spread.median),
                yerr=[[shown(spread.median) - shown(spread.low)], [shown(spread.high) - shown(spread.median)]],
                color="k",
                capsize=3,
            )
            mine = [r for r in finished if all(r.values[a] == s.values[a] for a in config_axes)]
            ax.scatter([i] * len(mine), [value(r) for r in mine], s=12, color="k", zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    if by_steps:
        ax.axhline(ceiling, color="0.5", linestyle="--", linewidth=1)
        ax.text(ax.get_xlim()[0], ceiling, f" not solved within {sweep.budget}", va="bottom", fontsize=8, color="0.3")
        ax.set_ylim(0, ceiling * 1.08)
        ax.set_ylabel("steps to solve (median, min–max; dots: seeds)")
    else:
        ax.set_ylabel(f"final {metric} (median, min–max; dots: seeds)")
    ax.set_title(f"{sweep.path.stem}: {'steps to solve' if by_steps else 'final ' + metric}")
    fig.tight_layout()
    with replaced(path) as file:  # whole or not at all
        fig.savefig(file, format="png", dpi=120)
    plt.close(fig)
