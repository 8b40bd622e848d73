"""Cost of the non-finite guard: one training step (forward, backward, optimizer step) with and without it.

The step (process CPU time, so run it on one thread) is a plain loop over a SequenceModel on the adding task
(no Lightning around it, so the guard's own cost is not lost in the loop's), the guard called exactly as
Lightning calls it: ``on_before_optimizer_step`` before the update, its optimizer post-hook after. Per way of
skipping: the host's decision (what ``decide_on="auto"`` does on a CPU: one read of the flag), and the two
device decisions an accelerator uses, measured here on the CPU with ``decide_on="device"``: Adam (the masked
update: the touched tensors copied, put back with torch.where) and Adam(fused=True) (the fused kernel's
found_inf). Alternating with/without, best of the repeats of the median step, and the time spent inside the
guard's own calls (the direct measure: step times on a shared machine wander by more than the guard costs).
Memory: the copies the masked update keeps (parameters and Adam's state).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_guard.py --steps 200 --repeats 5

Prints a markdown table and writes it to scripts/out/benchmark_guard.md.
"""

import argparse
import statistics
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from seqmem.callbacks.nonfinite import NonFiniteGuard
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData, adding_problem

OUT = Path(__file__).resolve().parents[1] / "out"
# way of skipping -> (optimizer, the guard's decide_on)
WAYS = {
    "Adam, host decision (auto on a CPU)": (partial(torch.optim.Adam, lr=1e-3), "auto"),
    "Adam, masked update (device)": (partial(torch.optim.Adam, lr=1e-3), "device"),
    "Adam fused, found_inf (device)": (partial(torch.optim.Adam, lr=1e-3, fused=True), "device"),
}


def step_times(
    hidden: int, seq_len: int, optimizer_cls, decide_on: str, steps: int, guarded: bool
) -> tuple[list[float], list[float]]:
    """Seconds of each of ``steps`` training steps of an LSTM (batch 64) on the adding task, and of the guard's
    own calls within each (its hook and its optimizer post-hook; zeros without the guard)."""
    torch.manual_seed(0)
    model = SequenceModel(AddingData(seq_len=seq_len).spec, cell="lstm", hidden_size=hidden)
    optimizer = optimizer_cls(model.parameters())
    batch = adding_problem(64, seq_len, torch.Generator().manual_seed(0))
    guard = NonFiniteGuard(decide_on=decide_on)
    # What the guard reads from the Trainer: no logging step ever, full precision, no GradScaler.
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=10**9, precision_plugin=None, optimizers=[optimizer])
    in_guard = [0.0]

    def timed_post_hook(*args) -> None:  # the guard's own post-hook, timed (registered here, not in on_fit_start)
        start = time.process_time()
        guard._after_step(*args)
        in_guard[0] += time.process_time() - start

    if guarded:
        optimizer.register_step_post_hook(timed_post_hook)
    times, guard_times = [], []
    for step in range(steps):
        in_guard[0] = 0.0
        start = time.process_time()
        optimizer.zero_grad()
        model.loss(model(batch["x"])[0], batch["y"]).backward()
        if guarded:
            trainer.global_step = step
            hook_start = time.process_time()
            guard.on_before_optimizer_step(trainer, model, optimizer)
            in_guard[0] += time.process_time() - hook_start
        optimizer.step()
        times.append(time.process_time() - start)
        guard_times.append(in_guard[0])
    return times[5:], guard_times[5:]  # the first steps create the optimizer state (the guard decides on the host)


def masked_copy_bytes(hidden: int, seq_len: int) -> int:
    """Bytes of the copies the masked update keeps: the parameters and Adam's state (moments, step counts)."""
    model = SequenceModel(AddingData(seq_len=seq_len).spec, cell="lstm", hidden_size=hidden)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return 3 * params + 4 * len(list(model.parameters()))  # param, exp_avg, exp_avg_sq; one float32 step each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    header = "| LSTM | way of skipping | step ms, no guard | step ms, guard | ratio | guard µs per update | copies |"
    rows = [header, "|---" * 7 + "|"]
    for hidden, seq_len in ((32, 20), (128, 100)):
        for name, (optimizer_cls, decide_on) in WAYS.items():
            best = {False: float("inf"), True: float("inf")}
            in_guard = float("inf")
            for _ in range(args.repeats):
                for guarded in (False, True):  # alternating: drift on a shared machine hits both alike
                    times, guard_times = step_times(hidden, seq_len, optimizer_cls, decide_on, args.steps, guarded)
                    best[guarded] = min(best[guarded], statistics.median(times))
                    if guarded:
                        in_guard = min(in_guard, statistics.median(guard_times))
            copied = f"{masked_copy_bytes(hidden, seq_len) / 2**10:.0f} KiB" if "masked" in name else "none"
            rows.append(
                f"| H = {hidden}, T = {seq_len} | {name} | {best[False] * 1e3:.2f} | {best[True] * 1e3:.2f} | "
                f"{best[True] / best[False]:.3f} | {in_guard * 1e6:.0f} | {copied} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    OUT.mkdir(exist_ok=True)
    (OUT / "benchmark_guard.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
