"""Speed of one training step through seqmem (Lightning) against a plain PyTorch loop, same shapes.

Both sides train embedding -> recurrent net -> linear head with cross-entropy at every step on the
same copy-task batches (the same DataLoader), with the same optimizer, so the ratio is what seqmem and
Lightning add on top of torch's fused kernels. A step is timed as the gap between the starts of
consecutive batches — data, forward, backward, optimizer and every hook included — and summarised by
its median after a warm-up. seqmem and baseline alternate, repeat after repeat; the table takes the
best (smallest) of those per-repeat medians on each side, because on a shared or virtual machine
interference only ever adds time (as timeit's documentation advises), and also shows the ratio of
the medians over repeats.

    PYTHONPATH=. .venv/bin/python scripts/benchmark_speed.py [--steps 40] [--repeats 3] [--threads 1]

Writes scripts/out/benchmark_speed.md.
"""

import argparse
import itertools
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from seqmem.module import SequenceModel
from seqmem.tasks import CopyData

OUT = Path(__file__).resolve().parent / "out" / "benchmark_speed.md"

# run -> (torch module the baseline uses, its extra arguments, target ratio); a run is a cell name,
# or "cell:option=value" for a non-default option of that cell.
CELLS = {
    "vanilla": (nn.RNN, {"nonlinearity": "tanh"}, 1.10),
    "irnn": (nn.RNN, {"nonlinearity": "relu"}, 1.10),
    "gru": (nn.GRU, {}, 1.10),
    "lstm": (nn.LSTM, {}, 1.10),
    "orthogonal": (nn.RNN, {"nonlinearity": "tanh"}, 1.30),
    "orthogonal:orthogonal_map=matrix_exp": (nn.RNN, {"nonlinearity": "tanh"}, 1.30),
}


def model_options(run: str) -> dict:
    """ "orthogonal:orthogonal_map=matrix_exp" -> {"cell": "orthogonal", "orthogonal_map": "matrix_exp"}."""
    cell, _, option = run.partition(":")
    name, _, value = option.partition("=")
    return {"cell": cell, **({name: value} if option else {})}


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


class StepTimer(L.Callback):
    """Clock reading at the start of every training batch; consecutive gaps are whole training steps.

    Args:
        clock: a function returning seconds (process CPU time or wall time).
    """

    def __init__(self, clock):
        self.clock = clock
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(self.clock())


def median_step_ms(starts: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in itertools.pairwise(starts[warmup:])]
    return 1000 * statistics.median(gaps)


def time_seqmem(cell: str, data: CopyData, args: argparse.Namespace) -> float:
    """Median ms per step of SequenceModel under Trainer.fit, with every extra off."""
    torch.manual_seed(0)
    model = SequenceModel(
        data.spec,
        **model_options(cell),
        hidden_size=args.hidden,
        embedding_size=args.embedding,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
    )
    timer = StepTimer(CLOCKS[args.clock])
    trainer = L.Trainer(
        max_steps=args.warmup + args.steps + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
        accelerator="cpu",
    )
    trainer.fit(model, train_dataloaders=data.train_dataloader())
    return median_step_ms(timer.starts, args.warmup)


def time_baseline(cell: str, data: CopyData, args: argparse.Namespace) -> float:
    """Median ms per step of the same network written as a plain PyTorch training loop."""
    torch.manual_seed(0)
    rnn_class, rnn_args, _ = CELLS[cell]
    spec = data.spec
    embed = nn.Embedding(spec.input_size, args.embedding)
    rnn = rnn_class(args.embedding, args.hidden, batch_first=True, **rnn_args)
    head = nn.Linear(args.hidden, spec.output_size)
    params = [*embed.parameters(), *rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    clock, starts = CLOCKS[args.clock], []
    for step, batch in enumerate(data.train_dataloader()):
        if step > args.warmup + args.steps:
            break
        starts.append(clock())
        outputs, _ = rnn(embed(batch["x"]))  # (B, T, H)
        logits = head(outputs)  # (B, T, C)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["y"].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return median_step_ms(starts, args.warmup)


def machine() -> str:
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=100, help="copy delay T (sequences are T + 20 long)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    # One thread by default: on a shared or oversubscribed CPU, OpenMP threads spin-waiting for a
    # descheduled sibling turn 40 ms steps into seconds, and the timings become noise.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    # CPU time of the process is what a step costs; unlike wall time it does not count the time this
    # process waits for a core other jobs hold, so it stays comparable on a busy machine.
    parser.add_argument("--clock", choices=list(CLOCKS), default="cpu", help="cpu: process CPU time; wall: elapsed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    data = CopyData(seq_len=args.seq_len, batch_size=args.batch, train_batches=args.warmup + args.steps + 2)
    print(f"machine: {machine()}", flush=True)
    rows = []
    for cell in args.cells:
        ours, base = [], []
        for repeat in range(args.repeats):
            ours.append(time_seqmem(cell, data, args))
            base.append(time_baseline(cell, data, args))
            print(f"{cell} repeat {repeat}: seqmem {ours[-1]:.2f} ms, baseline {base[-1]:.2f} ms", flush=True)
        ours_ms, base_ms = min(ours), min(base)
        target = CELLS[cell][2]
        ratio = ours_ms / base_ms
        median_ratio = statistics.median(ours) / statistics.median(base)
        baseline_name = f"{CELLS[cell][0].__name__}" + (f"({CELLS[cell][1]['nonlinearity']})" if CELLS[cell][1] else "")
        rows.append((cell, baseline_name, ours_ms, base_ms, ratio, median_ratio, target, ratio <= target))

    shape = (
        f"copy task, T = {args.seq_len} + 20 steps, batch {args.batch}, hidden {args.hidden}, "
        f"embedding {args.embedding}, Adam"
    )
    lines = [
        "# Training-step speed: seqmem (Lightning) vs plain PyTorch",
        "",
        f"- machine: {machine()}",
        f"- shapes: {shape}",
        f"- clock: {args.clock} time; best of {args.repeats} alternating repeats, "
        f"each the median of {args.steps} steps "
        f"after {args.warmup} warm-up steps",
        "- command: `PYTHONPATH=. .venv/bin/python scripts/benchmark_speed.py "
        f"--seq-len {args.seq_len} --batch {args.batch} --hidden {args.hidden} "
        f"--steps {args.steps} --repeats {args.repeats} "
        f"--threads {args.threads} --clock {args.clock}`",
        "",
        "| cell | baseline | seqmem ms/step | baseline ms/step | ratio | ratio of medians | target | pass |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {cell} | {name} | {ours:.2f} | {base:.2f} | {ratio:.3f} | {median_ratio:.3f} "
        f"| ≤ {target:.2f} | {'yes' if ok else 'NO'} |"
        for cell, name, ours, base, ratio, median_ratio, target, ok in rows
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(table)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
