"""Peak memory of training on one long stream: truncated BPTT (k = 35) stays flat, full BPTT grows.

Every case runs in a fresh process, so each peak is that case's own:

* CPU: ru_maxrss of the child (torch allocations are invisible to tracemalloc). The idle row is the
  same process built but not trained (interpreter, torch, model, data); "train" is peak minus idle.
* CUDA (when available): torch.cuda.max_memory_allocated, which counts tensors only.

Rows: seqmem (SequenceModel + Lightning, copy task, one batch of T steps, LSTM) and a plain PyTorch
loop (nn.LSTM, detach every k steps) as the baseline. Target: peak(T = 10,000) / peak(T = 1,000)
within 1.10 under truncated BPTT.

    python scripts/benchmarks/benchmark_memory.py            # writes scripts/out/benchmark_memory.{md,json}
"""

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

LENGTHS = (1000, 10000)
K = 35
HIDDEN, BATCH = 128, 32


def run_seqmem(length: int, tbptt: int | None, train: bool) -> None:
    import lightning as L

    from seqmem.module import SequenceModel
    from seqmem.tasks import CopyData

    L.seed_everything(0, verbose=False)
    data = CopyData(seq_len=length - 20, batch_size=BATCH, train_batches=1, val_batches=1)
    model = SequenceModel(data.spec, cell="lstm", hidden_size=HIDDEN, tbptt_steps=tbptt)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    if train:
        trainer.fit(model, data)


def run_plain(length: int, tbptt: int | None, train: bool) -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    embed, rnn = torch.nn.Embedding(10, 32).to(device), torch.nn.LSTM(32, HIDDEN, batch_first=True).to(device)
    head = torch.nn.Linear(HIDDEN, 9).to(device)
    params = [*embed.parameters(), *rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params)
    x = torch.randint(0, 10, (BATCH, length), device=device)  # (B, T)
    y = torch.randint(0, 9, (BATCH, length), device=device)  # (B, T)
    if not train:
        return
    k, state = tbptt or length, None
    for start in range(0, length, k):
        out, state = rnn(embed(x[:, start : start + k]), state)  # (B, k, H)
        loss = torch.nn.functional.cross_entropy(head(out).flatten(0, 1), y[:, start : start + k].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = tuple(s.detach() for s in state)


def child(kind: str, length: int, tbptt: int | None, train: bool) -> None:
    """Run one case and print its peak memory in MiB as JSON."""
    (run_seqmem if kind == "seqmem" else run_plain)(length, tbptt, train)
    peak = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux -> MiB
    if torch.cuda.is_available():
        peak["cuda"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(peak))


def measure(kind: str, length: int, tbptt: int | None, train: bool) -> dict:
    args = [sys.executable, __file__, "--child", kind, str(length), str(tbptt or 0), str(int(train))]
    done = subprocess.run(args, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = []
    for kind in ("seqmem", "plain"):
        for tbptt in (K, None):
            mode = f"k={K}" if tbptt else "full"
            peaks = {}
            for length in LENGTHS:
                idle = measure(kind, length, tbptt, train=False)
                peak = measure(kind, length, tbptt, train=True)
                peaks[length] = {"idle": idle, "peak": peak, "train_rss": peak["rss"] - idle["rss"]}
                print(
                    f"{kind:7s} {mode:5s} T={length:6d}: peak RSS {peak['rss']:8.1f} MiB, idle {idle['rss']:8.1f} MiB",
                    flush=True,
                )
            rows.append({"kind": kind, "mode": mode, "peaks": peaks})

    short, long = LENGTHS
    lines = [
        f"LSTM H={HIDDEN}, batch {BATCH}, one stream of T steps; peak resident memory per fresh process (MiB).",
        "",
        f"| code | BPTT | peak T={short} | peak T={long} | ratio "
        f"| train-only T={short} | train-only T={long} | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        a, b = row["peaks"][short], row["peaks"][long]
        lines.append(
            f"| {row['kind']} | {row['mode']} | {a['peak']['rss']:.0f} | {b['peak']['rss']:.0f} | "
            f"{b['peak']['rss'] / a['peak']['rss']:.3f} | {a['train_rss']:.0f} | {b['train_rss']:.0f} | "
            f"{b['train_rss'] / max(a['train_rss'], 1e-9):.2f} |"
        )
        if "cuda" in a["peak"]:
            lines[-1] += f" CUDA {a['peak']['cuda']:.0f} -> {b['peak']['cuda']:.0f} MiB"
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(__file__).resolve().parents[1] / "out"
    out.mkdir(exist_ok=True)
    (out / "benchmark_memory.md").write_text(table + "\n")
    (out / "benchmark_memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("KIND", "LENGTH", "TBPTT", "TRAIN"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        kind, length, tbptt, train = options.child
        child(kind, int(length), int(tbptt) or None, bool(int(train)))
    else:
        main()
