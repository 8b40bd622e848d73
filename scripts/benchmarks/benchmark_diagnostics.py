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

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_diagnostics.py \
        --config agreement --steps 2000 --repeats 3 --cpu-time
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_diagnostics.py --skip-fit --cpu-time
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_diagnostics.py --steps 2000 \
        --repeats 3 --cpu-time --user-lm ../shared/data/tinyshakespeare/input.txt  # a user's own model (user_lm.py)

Prints a markdown table and writes it to scripts/out/benchmark_diagnostics.md (probe-only runs:
scripts/out/benchmark_diagnostics_probes.md).
"""

import argparse
import importlib
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader

from seqmem.callbacks import Diagnostic
from seqmem.configs import DEFAULTS
from seqmem.lightning_cli import SeqmemCLI, run_cli
from seqmem.measures import input_sensitivity, probe_mode, timestep_grad_norms
from seqmem.models import MODELS

OUT = Path(__file__).resolve().parents[1] / "out"


class Stopwatch(L.Callback):
    """Time of the training loop alone (no setup, no teardown), on ``clock``, and of the hooks of the
    callbacks it is asked to :meth:`watch` within it.

    Args:
        clock: a function returning seconds.
        sync: called before and after each watched hook (``torch.cuda.synchronize`` on a GPU), so that a hook's
            time holds the device work it launched and none of the training work queued before it; None: host
            time only, which on a CPU is all there is.
    """

    def __init__(self, clock=time.perf_counter, sync=None):
        self.clock = clock
        self.sync = sync
        self.running = False
        self.in_watched = 0.0

    def watch(self, callback: L.Callback) -> None:
        """Add the time of every hook ``callback`` overrides to ``in_watched`` (while the loop runs)."""
        for name in dir(L.Callback):
            if name.startswith("on_") and getattr(type(callback), name) is not getattr(L.Callback, name):
                setattr(callback, name, self._timed(getattr(callback, name)))

    def _timed(self, hook):
        def timed(*args, **kwargs):
            if self.sync is not None:
                self.sync()
            start = self.clock()
            try:
                return hook(*args, **kwargs)
            finally:
                if self.sync is not None:
                    self.sync()
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


def shipped_callbacks() -> list[L.Callback]:
    """The callbacks of defaults.yaml (every diagnostic at its shipped interval, and the guard), built from it."""
    callbacks = []
    for entry in yaml.safe_load(DEFAULTS.read_text())["trainer"]["callbacks"]:
        module, _, name = entry["class_path"].rpartition(".")
        callbacks.append(getattr(importlib.import_module(module), name)(**entry.get("init_args", {})))
    return callbacks


def timed_user_fit(text: Path, steps: int, diagnostics: bool, clock=time.perf_counter) -> tuple[float, float]:
    """Like :func:`timed_fit`, for a user's own model: scripts/studies/user_lm.py's word-level LSTM LM (2 × 128, tied
    weights, bptt 35, batch 20, vocabulary 5,000) under a plain L.Trainer with defaults.yaml's callbacks."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))  # user_lm.py is a study script
    from user_lm import Batches, WordLM, corpus

    torch.manual_seed(0)
    loader = DataLoader(Batches(corpus(text, 5000), bsz=20, bptt=35), batch_size=None)
    callbacks = [c for c in shipped_callbacks() if diagnostics or not isinstance(c, Diagnostic)]
    watch = Stopwatch(clock)
    for callback in callbacks:
        if isinstance(callback, Diagnostic):
            watch.watch(callback)
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        gradient_clip_val=0.25,
        log_every_n_steps=10,
        callbacks=[*callbacks, watch],
        logger=L.pytorch.loggers.TensorBoardLogger(str(OUT / "benchmark_logs"), name="user_lm"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(WordLM(5000), loader)
    return watch.seconds, watch.in_watched


def timed_fit(
    config: str,
    cell: str,
    steps: int,
    diagnostics: bool,
    clock=time.perf_counter,
    extra: tuple[str, ...] = (),
    sync=None,
) -> tuple[float, float]:
    """Seconds of the training loop of one fit of ``cell``, with or without the Diagnostic callbacks, and
    the seconds spent in the Diagnostic callbacks' hooks within it (``extra``: more CLI options, such as
    ``--trainer.accelerator gpu``; ``sync``: see :class:`Stopwatch`)."""
    cli = build(config, steps, ["--model.cell", cell, *extra])
    watch = Stopwatch(clock, sync)
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
        "--user-lm",
        type=Path,
        metavar="TEXT",
        help="time a user's own model instead: scripts/studies/user_lm.py's word LM on this text file (no probe table)",
    )
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
        fits = {cell: partial(timed_fit, args.config, cell) for cell in args.cells}
        if args.user_lm is not None:
            fits = {"user WordLM (scripts/studies/user_lm.py)": partial(timed_user_fit, args.user_lm)}
        setup = "a user's WordLM, defaults.yaml's callbacks" if args.user_lm else f"{args.config}.yaml"
        lines += [
            f"## Diagnostics overhead ({setup}, {args.steps} steps, median of {args.repeats} on/off "
            f"pairs, {torch.get_num_threads()} CPU threads, {'CPU' if args.cpu_time else 'wall'} time)",
            "",
            "In-run: the time inside the diagnostics' hooks over the rest of the same run (immune to the",
            "machine's speed drifting between runs). On/off: whole fits with and without them (noisier).",
            "",
            "| cell | loop s (on) | in diagnostics s | overhead in-run | loop s (off) | ratio on / off |",
            "|---|---|---|---|---|---|",
        ]
        for cell, timed in fits.items():
            on, inside, off = [], [], []
            timed(20, True, clock)  # warm-up fit: imports, first-use kernel setup
            for repeat in range(args.repeats):
                seconds, in_diagnostics = timed(args.steps, True, clock)
                on.append(seconds)
                inside.append(in_diagnostics)
                off.append(timed(args.steps, False, clock)[0])
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
    if args.user_lm is not None:  # the probe table is SequenceModel's
        write_report(lines, OUT / "benchmark_diagnostics_user_lm.md")
        return
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
    # A probe-only run must not overwrite the full report.
    write_report(lines, OUT / ("benchmark_diagnostics_probes.md" if args.skip_fit else "benchmark_diagnostics.md"))


def write_report(lines: list[str], path: Path) -> None:
    table = "\n".join(lines) + "\n"
    print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
