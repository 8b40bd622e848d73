"""The main job: train every cell on one long-memory task and compare them against chance.

    python scripts/compare.py                      # five cells + LSTM with forget bias 3, stretched agreement
    python scripts/compare.py --runs vanilla lstm lstm:forget_bias=3 --steps 400
    tensorboard --logdir lightning_logs            # runs appear as compare/<run>/version_N

A run is a cell name, optionally with model options: ``lstm:forget_bias=3,hidden_size=128`` trains
``--model.cell lstm --model.forget_bias 3 --model.hidden_size 128``.

Each run goes through the real CLI (``seqmem fit --config ...``), so everything it logs — losses,
accuracies, gradient diagnostics — lands in TensorBoard. Writes a table (markdown) and a plot of the
validation accuracy of every cell to --out.
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: write PNGs, never open a window
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmem.cli import run_cli
from seqmem.models import MODELS

CONFIGS = Path(__file__).resolve().parents[1] / "seqmem" / "configs"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", nargs="+", default=[*MODELS, "lstm:forget_bias=3"], help="cells to train, as cell[:option=value,...]"
    )
    parser.add_argument("--config", default=str(CONFIGS / "agreement.yaml"), help="task config (a shipped YAML)")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per run")
    parser.add_argument("--metric", default="val/acc", help="validation metric to compare")
    parser.add_argument("--out", default="scripts/out", help="folder for compare.md and compare.png")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further seqmem fit options")
    return parser.parse_args()


def curve(log_dir: str, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar tag, read back from the run's TensorBoard events."""
    events = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return [], []
    scalars = events.Scalars(tag)
    return [s.step for s in scalars], [s.value for s in scalars]


def run_options(run: str) -> list[str]:
    """``lstm:forget_bias=3`` -> ["--model.cell", "lstm", "--model.forget_bias", "3"]."""
    cell, _, options = run.partition(":")
    if cell not in MODELS:
        raise SystemExit(f"compare.py: error: --runs {run!r}: the cell must be one of {sorted(MODELS)}")
    args = ["--model.cell", cell]
    for option in filter(None, options.split(",")):
        name, _, value = option.partition("=")
        args += [f"--model.{name}", value]
    return args


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    for i, run in enumerate(args.runs, 1):
        print(f"[{i}/{len(args.runs)}] training {run} for {args.steps} steps ...", flush=True)
        start = time.perf_counter()
        cli = run_cli(
            [
                "fit",
                "--config",
                args.config,
                *run_options(run),
                "--trainer.max_steps",
                str(args.steps),
                "--trainer.val_check_interval",
                str(max(1, args.steps // 6)),
                *(
                    "--trainer.enable_progress_bar false --trainer.enable_model_summary false "
                    "--trainer.logger.class_path lightning.pytorch.loggers.TensorBoardLogger "
                    "--trainer.logger.init_args.save_dir lightning_logs --trainer.logger.init_args.name"
                ).split(),
                f"compare/{run.replace(':', '_')}",
                *args.extra,
            ]
        )
        seconds = time.perf_counter() - start
        metrics = cli.trainer.callback_metrics
        task = cli.model.task
        rows.append((run, float(metrics[args.metric]), float(metrics["val/loss"]), task.baseline, seconds))
        curves[run] = curve(cli.trainer.logger.log_dir, args.metric)
        print(
            f"    {run}: {args.metric} = {rows[-1][1]:.3f} in {seconds:.0f} s  ({cli.trainer.logger.log_dir})",
            flush=True,
        )

    table = [f"| run | {args.metric} | val/loss | chance loss | seconds |", "|---|---|---|---|---|"]
    table += [f"| {c} | {m:.3f} | {loss:.3f} | {b:.3f} | {s:.0f} |" for c, m, loss, b, s in rows]
    (out / "compare.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o", label=run)
    ax.set(xlabel="optimizer step", ylabel=args.metric, title=f"{task.name}: {args.metric} by run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=120)
    print(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")


if __name__ == "__main__":
    main()
