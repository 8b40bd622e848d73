"""Cost of the gradient-flow diagnostics, measured as ratios in one run.

1. Training overhead: the same short fit of a shipped config with its diagnostics at the shipped
   intervals vs with them removed (every other callback kept), alternating on/off, median of repeats.
   Target: ≤ 5 %.
2. Probe cost: one per-timestep probe (``timestep_grad_norms``, one step-by-step forward and one
   autograd.grad) vs one training step (fused forward, backward, optimizer step) on the same batch,
   per cell; the forward-sensitivity probe alongside. Target: ≤ 3×.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/benchmark_diagnostics.py --steps 500 --repeats 3 --cpu-time
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/benchmark_diagnostics.py --skip-fit --cpu-time

Prints a markdown table and writes it to scripts/out/benchmark_diagnostics.md (probe-only runs:
scripts/out/benchmark_diagnostics_probes.md).
"""

import argparse
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from seqmem.callbacks import Diagnostic, input_sensitivity, timestep_grad_norms
from seqmem.callbacks.probe import probe_mode
from seqmem.cli import SeqmemCLI, run_cli
from seqmem.models import MODELS

OUT = Path(__file__).resolve().parent / "out"


class Stopwatch(L.Callback):
    """Time of the training loop alone (no setup, no teardown), on ``clock``."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = self.clock()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = self.clock() - self.start


def build(config: str, steps: int, extra: list[str]) -> SeqmemCLI:
    """The shipped config through the real CLI (shared defaults and their diagnostics included),
    shortened and quiet, logging under scripts/out/."""
    args = [
        "--config",
        config,
        "--trainer.max_steps",
        str(steps),
        *(
            "--trainer.limit_val_batches 0 --trainer.enable_progress_bar false "
            "--trainer.enable_model_summary false --trainer.enable_checkpointing false --trainer.default_root_dir"
        ).split(),
        str(OUT / "benchmark_logs"),
        *extra,
    ]
    return run_cli(args, run=False)


def timed_fit(config: str, steps: int, diagnostics: bool, clock=time.perf_counter) -> float:
    """Seconds of the training loop of one fit, with or without the Diagnostic callbacks."""
    cli = build(config, steps, [])
    if not diagnostics:
        cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, Diagnostic)]
    watch = Stopwatch(clock)
    cli.trainer.callbacks.append(watch)
    cli.trainer.fit(cli.model, cli.datamodule)
    return watch.seconds


def median_time(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()  # warm-up: allocator, oneDNN primitive caches
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def probe_costs(config: str, cell: str, repeats: int, clock) -> tuple[float, float, float]:
    """Median seconds of one training step, one per-timestep probe and one sensitivity probe."""
    cli = build(config, 1, ["--model.cell", cell])
    model, data = cli.model, cli.datamodule
    batch = next(iter(data.train_dataloader()))
    x, y = batch["x"], batch["y"]
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer

    def train_step() -> None:
        model.train()
        optimizer.zero_grad()
        model.loss(model(x)[0], y).backward()
        optimizer.step()

    def grad_probe() -> None:
        with probe_mode(model):
            timestep_grad_norms(model, x, y).tolist()  # .tolist(): the probe's result reaches the host

    def sensitivity_probe() -> None:
        with probe_mode(model):
            input_sensitivity(model, x, projections=2).tolist()

    return tuple(median_time(fn, repeats, clock) for fn in (train_step, grad_probe, sensitivity_probe))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="adding", help="shipped config for the overhead run")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per fit")
    parser.add_argument("--repeats", type=int, default=3, help="on/off pairs of fits")
    parser.add_argument("--probe-repeats", type=int, default=10, help="timings per probe measurement")
    parser.add_argument("--skip-fit", action="store_true", help="only the probe table, no overhead fits")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time fits and probes in process CPU time (little affected by other load; use with 1 thread)",
    )
    args = parser.parse_args()
    # The CLI is driven with explicit args while this script has its own argv; that is intended here.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")

    # CPU time of a multi-threaded process sums its threads, so it only stands for wall time with 1.
    clock = time.process_time if args.cpu_time else time.perf_counter
    lines = []
    if not args.skip_fit:
        on, off = [], []
        timed_fit(args.config, 20, True, clock)  # warm-up fit: imports, first-use kernel setup
        for repeat in range(args.repeats):
            on.append(timed_fit(args.config, args.steps, True, clock))
            off.append(timed_fit(args.config, args.steps, False, clock))
            print(f"[fit {repeat + 1}/{args.repeats}] diagnostics on {on[-1]:.2f}s, off {off[-1]:.2f}s", flush=True)
        on_s, off_s = statistics.median(on), statistics.median(off)
        lines += [
            f"## Diagnostics overhead ({args.config}.yaml, {args.steps} steps, median of {args.repeats}, "
            f"{torch.get_num_threads()} CPU threads, {'CPU' if args.cpu_time else 'wall'} time)",
            "",
            "| run | seconds | ratio to off |",
            "|---|---|---|",
            f"| diagnostics off | {off_s:.2f} | 1.000 |",
            f"| diagnostics on (shipped intervals) | {on_s:.2f} | {on_s / off_s:.3f} |",
            "",
        ]
    lines += [
        f"## One probe vs one training step on the same batch ({args.config}.yaml batch, median of "
        f"{args.probe_repeats}, {torch.get_num_threads()} CPU threads, {'CPU' if args.cpu_time else 'wall'} time)",
        "",
        "| cell | train step ms | grad_time probe ms | ratio | sensitivity probe (2 projections) ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for cell in MODELS:
        step, probe, sens = probe_costs(args.config, cell, args.probe_repeats, clock)
        print(f"[probe] {cell}: step {1e3 * step:.1f} ms, probe {1e3 * probe:.1f} ms", flush=True)
        lines.append(
            f"| {cell} | {1e3 * step:.1f} | {1e3 * probe:.1f} | {probe / step:.2f} "
            f"| {1e3 * sens:.1f} | {sens / step:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    # A probe-only run must not overwrite the full report.
    path = OUT / ("benchmark_diagnostics_probes.md" if args.skip_fit else "benchmark_diagnostics.md")
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
