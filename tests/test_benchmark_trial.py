"""scripts/benchmarks/benchmark_speed.py --trial, tiny: every Lightning rung of the ladder trains the steps asked for,
and the table's ratios follow from the seconds it measured (so the published ratios cannot come from a broken rung)."""

import argparse
import sys
from pathlib import Path
from unittest import mock

import lightning as L
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts" / "benchmarks"))

import benchmark_speed


def test_every_rung_trains_the_same_steps_and_the_ratios_follow_from_the_seconds(tmp_path: Path) -> None:
    steps, seconds, trained = 6, {}, {}
    clock = iter(range(1, 1000))  # a fake clock: each rung run takes one "second" more than the one before

    def rung(name, run):
        def timed(cell, steps_, folder, batches, data):
            run(cell, steps_, tmp_path / name.replace(" ", "_").replace(",", ""), batches, data)
            seconds.setdefault(name, []).append(float(next(clock)))
            return seconds[name][-1]

        return timed

    def count_steps(fit):  # records how many optimizer steps every Trainer.fit of a rung took
        def wrapped(trainer, *args, **kwargs):
            fit(trainer, *args, **kwargs)
            model = kwargs["model"] if "model" in kwargs else args[0]
            trained.setdefault(type(model).__name__, []).append(trainer.global_step)

        return wrapped

    rungs = {name: rung(name, run) for name, run in benchmark_speed.RUNGS.items()}
    args = argparse.Namespace(trial_steps=steps, repeats=2, trial_cells=["vanilla"])
    with mock.patch.dict(benchmark_speed.RUNGS, rungs), mock.patch.object(L.Trainer, "fit", count_steps(L.Trainer.fit)):
        table = benchmark_speed.trial_table(args)
    # bare, logged, no diagnostics, trial: two repeats each
    assert trained == {"BareModule": [steps] * 2, "LoggedModule": [steps] * 2, "SequenceModel": [steps] * 4}
    row = next(line for line in table.splitlines() if line.startswith("| vanilla |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    plain, trial = seconds["plain loop"], seconds["seqmem trial"]
    ratios = [t / p for t, p in zip(trial, plain, strict=True)]
    assert cells[6] == f"**{sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2:.3f}**"  # the median of two
    assert cells[7] == ", ".join(f"{r:.3f}" for r in ratios)
    bare = [b / p for b, p in zip(seconds["bare Lightning"], plain, strict=True)]
    assert cells[8] == f"{(bare[0] + bare[1]) / 2:.3f}"
    median = {
        (top, bottom): sum(t / b for t, b in zip(seconds[top], seconds[bottom], strict=True)) / 2
        for top, bottom in [
            ("seqmem trial", "bare Lightning"),
            ("seqmem, no diagnostics", "Lightning, logged"),
            ("seqmem trial", "seqmem, no diagnostics"),
        ]
    }
    assert cells[9:12] == [f"{m:.3f}" for m in median.values()]
