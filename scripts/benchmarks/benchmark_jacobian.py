"""Cost of one JacobianSpectrum probe against one training step, per cell, as ratios measured in one run.

The shipped adding setup (H = 128, T = 100, training batch 64; adding.yaml): one training step (fused
forward, backward, optimizer step) on a training batch, against one probe on its first
``--probe-batch`` rows — the measurement alone (``jacobian_spectrum``: Lyapunov exponents and σ_max(J_t)
of every layer) and the whole probe (``JacobianSpectrum.write``: plus the summaries, the scalars and the
matplotlib spectrum image written to a scratch TensorBoard directory).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_jacobian.py --cpu-time

Prints a markdown table and writes it to scripts/out/benchmark_jacobian.md.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from seqmem.callbacks import JacobianSpectrum
from seqmem.diagnose import loggers_of
from seqmem.measures import jacobian_spectrum, probe_mode
from seqmem.models import MODELS
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData

OUT = Path(__file__).resolve().parents[1] / "out"
# Every family at its default, plus the orthogonal cell with modReLU (a different step, no fused kernel).
RUNS = {
    **{cell: {"cell": cell} for cell in MODELS},
    "orthogonal, modrelu": {"cell": "orthogonal", "activation": "modrelu"},
}


def median_time(fn, repeats: int, clock) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()  # warm-up: allocator, oneDNN primitive caches, functorch's first-call setup
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def costs(options: dict, args: argparse.Namespace, clock, writer: SummaryWriter) -> tuple[float, float, float]:
    """Median seconds of one training step, one ``jacobian_spectrum`` and one full JacobianSpectrum probe."""
    torch.manual_seed(args.seed)
    data = AddingData(seq_len=args.seq_len, batch_size=args.batch)
    model = SequenceModel(data.spec, hidden_size=args.hidden, **options)
    batch = next(iter(data.train_dataloader()))
    x, y = batch["x"], batch["y"]  # (64, T, 2), (64,)
    probe_x, probe_y = x[: args.probe_batch], y[: args.probe_batch]  # (32, T, 2), (32,)
    optimizer = model.configure_optimizers()
    callback = JacobianSpectrum(probe_batch_size=args.probe_batch, k=args.k, power_iterations=args.power_iterations)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad()
        model.loss(model(x)[0], y).backward()
        optimizer.step()

    def measurement() -> None:
        with probe_mode(model):
            exponents, sigma = jacobian_spectrum(model.net, probe_x, args.k, args.power_iterations)
            exponents.tolist(), sigma.sum().item()  # the results reach the host

    callback.attach(model.diagnostic_view())
    loggers = loggers_of(writer)

    def full_probe() -> None:
        callback.write(loggers, step=0, batch={"x": probe_x, "y": probe_y})

    return tuple(median_time(fn, args.repeats, clock) for fn in (train_step, measurement, full_probe))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128, help="hidden units (adding.yaml: 128)")
    parser.add_argument("--seq-len", type=int, default=100, help="T (adding.yaml: 100)")
    parser.add_argument("--batch", type=int, default=64, help="training batch (adding.yaml: 64)")
    parser.add_argument("--probe-batch", type=int, default=32, help="probe rows (JacobianSpectrum default: 32)")
    parser.add_argument("--k", type=int, default=8, help="Lyapunov exponents (JacobianSpectrum default: 8)")
    parser.add_argument(
        "--power-iterations", type=int, default=JacobianSpectrum().power_iterations, help="σ_max iterations"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timings per measurement (median)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and data")
    parser.add_argument(
        "--cpu-time", action="store_true",
        help="time in process CPU time (unaffected by other load on the machine; use with 1 thread)",
    )  # fmt: skip
    args = parser.parse_args()
    # CPU time of a multi-threaded process sums its threads, so it only stands for wall time with 1.
    clock = time.process_time if args.cpu_time else time.perf_counter
    title = (
        f"## One JacobianSpectrum probe vs one training step (H = {args.hidden}, T = {args.seq_len}, training "
        f"batch {args.batch}, probe batch {args.probe_batch}, k = {args.k}, {args.power_iterations} power "
        f"iterations; median of {args.repeats}, {torch.get_num_threads()} CPU threads, "
        f"{'CPU' if args.cpu_time else 'wall'} time)"
    )
    lines = [
        title,
        "",
        "| cell | train step ms | measurement ms | ratio | probe_and_log (with image) ms | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        writer = SummaryWriter(scratch)
        for name, options in RUNS.items():
            step, measure, probe = costs(options, args, clock, writer)
            print(f"[{name}] step {1e3 * step:.1f} ms, measurement {1e3 * measure:.1f} ms, probe {1e3 * probe:.1f} ms",
                  flush=True)  # fmt: skip
            lines.append(
                f"| {name} | {1e3 * step:.1f} | {1e3 * measure:.1f} | {measure / step:.1f} | {1e3 * probe:.1f} "
                f"| {probe / step:.1f} |"
            )
        writer.close()
    table = "\n".join(lines) + "\n"
    print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "benchmark_jacobian.md").write_text(table)
    print(f"wrote {OUT / 'benchmark_jacobian.md'}")


if __name__ == "__main__":
    main()
