"""Speed of the LRU's training path: its parallel scan against its own step-by-step loop and against nn.LSTM.

One forward and backward of the recurrent network alone (inputs (B, T, I), a squared-output loss), at each
sequence length: the LRU on its scan (``forward``, what training runs), the same LRU on its step path
(``forward_steps``, what the diagnostics run), and seqmem's LSTM (``nn.LSTM``) with the hidden size that gives it the
LRU's parameter count (as near as an integer allows). Each is timed ``--repeats`` times after a warm-up; the table
keeps the best, since interference on a shared machine only adds time, and the ratios to the scan.

    PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_lru.py [--lengths 100 1000] [--repeats 3] [--threads 1]

Writes scripts/out/benchmark_lru.md.
"""

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from seqmem.models import build_model

OUT = Path(__file__).resolve().parents[1] / "out" / "benchmark_lru.md"


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matching_lstm_size(target: int, input_size: int) -> int:
    """The LSTM hidden size whose parameter count, 4H(I + H) + 8H, is nearest ``target``."""
    return min(range(1, 4 * target), key=lambda h: abs(4 * h * (input_size + h) + 8 * h - target))


def best_time(path: Callable[[Tensor], tuple], x: Tensor, repeats: int) -> float:
    """The smallest of ``repeats`` timings of one forward and backward of ``path`` on ``x``, after one untimed run."""
    path(x)[0].square().mean().backward()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        path(x)[0].square().mean().backward()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000], help="sequence lengths T")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=int, default=2, help="input features I (adding: 2)")
    parser.add_argument("--hidden", type=int, default=64, help="the LRU's width H (and N = H complex units)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lru = build_model("lru", args.input, args.hidden)
    lstm_hidden = matching_lstm_size(parameter_count(lru), args.input)
    lstm = build_model("lstm", args.input, lstm_hidden)
    rows = [
        f"LRU H = N = {args.hidden} ({parameter_count(lru)} parameters) against nn.LSTM H = {lstm_hidden} "
        f"({parameter_count(lstm)}); batch {args.batch}, one forward + backward, best of {args.repeats}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}, torch {torch.__version__}.",
        "",
        "| T | LRU scan (s) | LRU step loop (s) | nn.LSTM (s) | step loop / scan | nn.LSTM / scan |",
        "|---|---|---|---|---|---|",
    ]
    for length in args.lengths:
        x = torch.randn(args.batch, length, args.input)  # (B, T, I)
        scan = best_time(lru, x, args.repeats)
        steps = best_time(lru.forward_steps, x, args.repeats)
        fused = best_time(lstm, x, args.repeats)
        rows.append(f"| {length} | {scan:.3f} | {steps:.3f} | {fused:.3f} | {steps / scan:.2f} | {fused / scan:.2f} |")
        print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(rows) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
