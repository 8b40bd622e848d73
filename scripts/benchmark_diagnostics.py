"""Cost of the gradient-flow diagnostics, measured as ratios in one run.

1. Training overhead: the same short fit of a shipped config with its diagnostics at the shipped
   intervals vs with them removed (every other callback kept), alternating on/off, median of repeats,
   per cell (vanilla by default: the cheapest step, so the largest ratio; and the LSTM). A 2,000-step
   fit holds every probe at its shipped rate (the per-timestep ones at steps 0 and 1,000, the Jacobian
   one at 0). Reported in-run too: the time inside the diagnostics' hooks over the rest of the same
   fit, which a machine whose speed drifts between fits cannot blur. Target: ≤ 5 %.
2. Probe cost: one per-timestep probe (``timestep_grad_norms``, one step-by-step forward and one
   autograd.grad) vs one training step (fused forward, backward, optimizer step) on the same batch,
   per cell; the forward-sensitivity probe alongside. Target: ≤ 3×.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/benchmark_diagnostics.py \
        --config agreement --steps 2000 --repeats 3 --cpu-time
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
from seqmem.lightning_cli import SeqmemCLI, run_cli
from seqmem.models import MODELS

OUT = Path(__file__).resolve().parent / "out"


class Stopwatch(L.Callback):
    """Time of the training loop alone (no setup, no teardown), on ``clock``, and of the hooks of the
    callbacks it is asked to :meth:`watch` within it."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.running = False
        self.in_watched = 0.0

    def watch(self, callback: L.Callback) -> None:
        """Add the time of every hook ``callback`` overrides to ``in_watched`` (while the loop runs)."""
        for name in dir(L.Callback):
            if name.startswith("on_") and getattr(type(callback), name) is not getattr(L.Callback, name):
                setattr(callback, name, self._timed(getattr(callback, name)))

    def _timed(self, hook):
        def timed(*args, **kwargs):
            start = self.clock()
            try:
                return hook(*args, **kwargs)
            finally:
                if self.running:
                    self.in_watched += self.clock() - start

        return timed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.running = True
        self.start = self.clock()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = self.clock() - self.start
        self.running = False


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


def timed_fit(config: str, cell: str, steps: int, diagnostics: bool, clock=time.perf_counter) -> tuple[float, float]:
    """Seconds of the training loop of one fit of ``cell``, with or without the Diagnostic callbacks, and
    the seconds spent in the Diagnostic callbacks' hooks within it."""
    cli = build(config, steps, ["--model.cell", cell])
    watch = Stopwatch(clock)
    for callback in cli.trainer.callbacks:
        if isinstance(callback, Diagnostic):
            watch.watch(callback)
    if not diagnostics:
        cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, Diagnostic)]
    cli.trainer.callbacks.append(watch)
    cli.trainer.fit(cli.model, cli.datamodule)
    return watch.seconds, watch.in_watched


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
    parser.add_argument(
        "--cells", nargs="+", default=["vanilla", "lstm"], choices=list(MODELS), help="cells of the overhead fits"
    )
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
        lines += [
            f"## Diagnostics overhead ({args.config}.yaml, {args.steps} steps, median of {args.repeats} on/off "
            f"pairs, {torch.get_num_threads()} CPU threads, {'CPU' if args.cpu_time else 'wall'} time)",
            "",
            "In-run: the time inside the diagnostics' hooks over the rest of the same run (immune to the",
            "machine's speed drifting between runs). On/off: whole fits with and without them (noisier).",
            "",
            "| cell | loop s (on) | in diagnostics s | overhead in-run | loop s (off) | ratio on / off |",
            "|---|---|---|---|---|---|",
        ]
        for cell in args.cells:
            on, inside, off = [], [], []
            timed_fit(args.config, cell, 20, True, clock)  # warm-up fit: imports, first-use kernel setup
            for repeat in range(args.repeats):
                seconds, in_diagnostics = timed_fit(args.config, cell, args.steps, True, clock)
                on.append(seconds)
                inside.append(in_diagnostics)
                off.append(timed_fit(args.config, cell, args.steps, False, clock)[0])
                print(
                    f"[fit {cell} {repeat + 1}/{args.repeats}] on {on[-1]:.2f}s ({inside[-1]:.2f}s in diagnostics), "
                    f"off {off[-1]:.2f}s",
                    flush=True,
                )
            on_s, in_s, off_s = (statistics.median(v) for v in (on, inside, off))
            overhead = statistics.median(i / (o - i) for o, i in zip(on, inside, strict=True))
            lines.append(
                f"| {cell} | {on_s:.2f} | {in_s:.2f} | {100 * overhead:.1f} % | {off_s:.2f} | {on_s / off_s:.3f} |"
            )
        lines.append("")
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
