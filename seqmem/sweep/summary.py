"""The sweep's tables: one row per trial (``trials.csv``) and one per configuration (``summary.csv``/``.md``).

A configuration is a combination of every axis but the seed axis; its row aggregates its seeds:

- steps to solve: median and min–max over the seeds, an unsolved seed counting as "not solved within
  <budget>" (infinitely many steps), so the median is "not solved" when at most half the seeds solved
  and the max is "not solved" when any seed did not;
- solved: ``k/n``, k seeds solved out of the n that finished (errors and unfinished trials are counted
  apart, never as unsolved);
- the final value of the criterion's metric (``val/loss`` without a criterion): median and min–max;
- every recorded tag: the median.
"""

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from seqmem.atomic import replaced, write_text
from seqmem.sweep.config import Sweep

FINISHED = ("solved", "not solved", "diverged", "no criterion")


@dataclass
class TrialRow:
    """The outcome of one trial.

    Args:
        name: run name (the run folder under the sweep folder).
        values: {axis name: label}.
        status: ``solved``, ``not solved``, ``diverged`` (stopped by the non-finite guard: its updates kept
            going NaN or inf; counts as not solved), ``no criterion`` (finished, nothing to solve), ``error`` or
            ``unfinished`` (interrupted, or never started).
        steps_to_solve: the first validation step that met the criterion (None unless solved).
        steps: optimizer steps trained.
        metric: the metric ``final`` is a value of (the criterion's, else ``val/loss``).
        final: its value at the trial's last validation.
        seconds: training time of the attempt that finished the trial.
        record: {record name: value} of the recorded tags.
        error: the one-line error of an ``error`` trial.
        skipped: the result was already in the run folder; nothing was trained this time.
    """

    name: str
    values: dict[str, Any]
    status: str
    steps_to_solve: Optional[int] = None
    steps: Optional[int] = None
    metric: Optional[str] = None
    final: Optional[float] = None
    seconds: Optional[float] = None
    record: dict[str, Optional[float]] = field(default_factory=dict)
    error: Optional[str] = None
    skipped: bool = False

    @classmethod
    def of(cls, sweep: Sweep, point: dict[str, Any], result: Optional[dict], error: Optional[str]) -> "TrialRow":
        """The row of one trial from its last report to Ray Tune (None if it reported nothing) or its error.

        Args:
            sweep: the sweep.
            point: the trial's {axis key: label}.
            result: the trial's last report; only the final one (see ``trial.run_trial``) has a status.
            error: the one-line error, if the trial ended with one.
        """
        values = {axis.name: point[axis.key] for axis in sweep.axes}
        name = sweep.trial_name(point)
        if error is not None:
            return cls(name, values, "error", error=error)
        if not result or result.get("status") not in FINISHED:
            return cls(name, values, "unfinished")
        fields = ("status", "steps_to_solve", "steps", "metric", "final", "seconds", "record", "skipped")
        return cls(name, values, **{key: result[key] for key in fields})

    def outcome(self, budget: int) -> str:
        """``solved at step 250``, ``not solved within 6000 steps``, ``error: ...``: one phrase."""
        if self.status == "solved":
            text = f"solved at step {self.steps_to_solve}"
        elif self.status == "not solved":
            text = f"not solved within {budget} steps"
        elif self.status == "diverged":
            return f"diverged: stopped by the non-finite guard at step {self.steps}"
        elif self.status == "no criterion":
            text = f"trained {self.steps} steps"
        elif self.status == "error":
            return f"error: {self.error}"
        else:
            return "unfinished"
        if self.final is not None:
            text += f" ({self.metric} {self.final:.4g}"
            text += ", done earlier)" if self.skipped else f", {self.seconds:.0f} s)"
        return text


@dataclass(frozen=True)
class Spread:
    """Median and range of some values; ``inf`` stands for "not solved within the budget"."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Optional["Spread"]:
        return cls(statistics.median(values), min(values), max(values)) if values else None


@dataclass
class ConfigSummary:
    """One configuration aggregated over its seeds (see the module docstring).

    Args:
        values: {axis name: label} of every axis but the seed axis.
        runs: trials that finished.
        solved: of those, how many solved.
        diverged: trials stopped by the non-finite guard (among ``runs``, counted as not solved).
        errors: trials that ended with an error.
        unfinished: trials interrupted or not yet run.
        criterion: whether the trials had a solved criterion at all.
        steps: spread of steps to solve over the finished trials (inf: not solved); None without any.
        final: spread of the final metric.
        record: median of every recorded tag (None where no trial logged it).
    """

    values: dict[str, Any]
    runs: int
    solved: int
    diverged: int
    errors: int
    unfinished: int
    criterion: bool
    steps: Optional[Spread]
    final: Optional[Spread]
    record: dict[str, Optional[float]]


def summarise(rows: list[TrialRow], config_axes: list[str], records: list[str]) -> list[ConfigSummary]:
    """Group trials by their labels on ``config_axes`` (first-seen order) and aggregate each group.

    Args:
        rows: every trial.
        config_axes: names of the axes that make a configuration (all but the seed axis).
        records: names of the recorded tags.
    """
    groups: dict[tuple, list[TrialRow]] = {}
    for row in rows:
        groups.setdefault(tuple(row.values[a] for a in config_axes), []).append(row)
    summaries = []
    for key, group in groups.items():
        finished = [r for r in group if r.status in FINISHED]
        # A diverged run has no criterion of its own but did not solve: it counts as not solved.
        judged = [r for r in finished if r.status != "no criterion"]
        steps = [float(r.steps_to_solve) if r.status == "solved" else math.inf for r in judged]
        record = {}
        for name in records:
            values = [r.record[name] for r in finished if r.record.get(name) is not None]
            record[name] = statistics.median(values) if values else None
        summaries.append(
            ConfigSummary(
                values=dict(zip(config_axes, key, strict=True)),
                runs=len(finished),
                solved=sum(r.status == "solved" for r in finished),
                diverged=sum(r.status == "diverged" for r in finished),
                errors=sum(r.status == "error" for r in group),
                unfinished=sum(r.status == "unfinished" for r in group),
                criterion=bool(judged),
                steps=Spread.of(steps),
                final=Spread.of([r.final for r in finished if r.final is not None]),
                record=record,
            )
        )
    return summaries


def write_trials_csv(path: Path, rows: list[TrialRow], sweep: Sweep) -> None:
    """``trials.csv``: one row per trial, its axis labels, outcome and recorded values."""
    axes = [axis.name for axis in sweep.axes]
    records = [record.name for record in sweep.record]
    header = ["name", *axes, "status", "steps_to_solve", "steps", "metric", "final", "seconds", *records, "error"]
    with replaced(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for r in rows:
            writer.writerow(
                [
                    r.name,
                    *(r.values[a] for a in axes),
                    r.status,
                    _cell(r.steps_to_solve),
                    _cell(r.steps),
                    _cell(r.metric),
                    _cell(r.final),
                    _cell(r.seconds),
                    *(_cell(r.record.get(n)) for n in records),
                    _cell(r.error),
                ]
            )


def write_summary(out: Path, summaries: list[ConfigSummary], sweep: Sweep, metric: str) -> str:
    """``summary.csv`` (numbers; steps empty where not solved) and ``summary.md``; returns the markdown."""
    axes = [axis.name for axis in sweep.config_axes]
    records = [record.name for record in sweep.record]
    with replaced(out / "summary.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                *axes,
                "solved",
                "runs",
                "errors",
                "unfinished",
                "steps_median",
                "steps_min",
                "steps_max",
                f"{metric}_median",
                f"{metric}_min",
                f"{metric}_max",
                *records,
            ]
        )
        for s in summaries:
            steps = s.steps or Spread(math.inf, math.inf, math.inf)
            final = s.final or Spread(math.nan, math.nan, math.nan)
            writer.writerow(
                [
                    *(s.values[a] for a in axes),
                    s.solved if s.criterion else "",
                    s.runs,
                    s.errors,
                    s.unfinished,
                    *(_cell(v) for v in (steps.median, steps.low, steps.high)),
                    *(_cell(v) for v in (final.median, final.low, final.high)),
                    *(_cell(s.record[n]) for n in records),
                ]
            )
    header = [*axes, "solved", "steps to solve (median)", "min–max", f"final {metric} (median, min–max)", *records]
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    for s in summaries:
        solved = "—" if not s.runs else f"{s.solved}/{s.runs}" if s.criterion else "no criterion"
        counts = ((s.diverged, "diverged"), (s.errors, "error"), (s.unfinished, "unfinished"))
        solved += "".join(f", {n} {what}" for n, what in counts if n)
        steps = ("—", "—") if s.steps is None else (_steps(s.steps.median, sweep.budget), _range(s.steps))
        final = "—" if s.final is None else f"{s.final.median:.4g} ({s.final.low:.4g} – {s.final.high:.4g})"
        recorded = ["—" if s.record[n] is None else f"{s.record[n]:.4g}" for n in records]
        lines.append(f"| {' | '.join([*(str(s.values[a]) for a in axes), solved, *steps, final, *recorded])} |")
    table = "\n".join(lines) + "\n"
    write_text(out / "summary.md", table)
    return table


def _steps(value: float, budget: int) -> str:
    return f"not solved within {budget}" if math.isinf(value) else f"{value:.0f}"


def _range(steps: Spread) -> str:
    """``250 – 750``, ``250 – not solved`` or ``not solved`` (no seed solved)."""
    if math.isinf(steps.low):
        return "not solved"
    return f"{steps.low:.0f} – {'not solved' if math.isinf(steps.high) else f'{steps.high:.0f}'}"


def _cell(value: Any) -> Any:
    """A CSV cell: empty for None, NaN and "not solved" (inf)."""
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value
