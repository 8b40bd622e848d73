"""Speed of one training step through seqmem (Lightning) against a plain PyTorch loop, same shapes.

Both sides train embedding -> recurrent net -> linear head with cross-entropy at every step on the
same copy-task batches (the same DataLoader), with the same optimizer, so the ratio is what seqmem and
Lightning add on top of torch's fused kernels. A step is timed as the gap between the starts of
consecutive batches — data, forward, backward, optimizer and every hook included — and summarised by
its median after a warm-up. seqmem and baseline alternate, repeat after repeat; the table takes the
best (smallest) of those per-repeat medians on each side, because on a shared or virtual machine
interference only ever adds time (as timeit's documentation advises), and also shows the ratio of
the medians over repeats.

    PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_speed.py [--steps 40] [--repeats 3] [--threads 1]

``--trial`` measures a whole trial instead: the main job's (agreement, hidden 64, T = 50, batch 64) as
``seqmem sweep`` runs it — the CLI, data generation, TensorBoard logging, validation every 250 steps,
checkpoints and every diagnostic of ``defaults.yaml`` — against a plain PyTorch loop over the same
network (embedding, ``nn.RNN``/``nn.LSTM``, linear head, Adam, norm clipping) on batches made before the
clock starts, and between the two, the rungs that say where the difference goes: that network as the smallest
LightningModule under ``Trainer.fit`` (Lightning's loop alone), the same with the trial's Lightning features
(TensorBoard logger, validation every 250 steps, ``last.ckpt``), and the trial without its diagnostics;
process CPU time, one thread, alternating repeats:

    PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_speed.py --trial [--trial-steps 1000] [--repeats 3]

On a GPU: ``--accelerator gpu --clock cuda [--precision bf16-mixed]`` (the baseline then runs cuDNN's kernels on
the same device, under the same autocast; steps are timed by CUDA events). Writes scripts/out/benchmark_speed.md.
"""

import argparse
import itertools
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from seqmem.lightning_cli import run_cli
from seqmem.module import SequenceModel
from seqmem.tasks import AgreementData, CopyData

OUT = Path(__file__).resolve().parents[1] / "out" / "benchmark_speed.md"
TRIAL_OUT = Path(__file__).resolve().parents[1] / "out" / "benchmark_trial.md"

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


HOST_CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCKS = [*HOST_CLOCKS, "cuda"]


class StepMarks:
    """A mark at the start of every training step; consecutive gaps are whole steps.

    ``cpu`` and ``wall`` read a host clock (process CPU time, elapsed time); ``cuda`` records a CUDA event on the
    current stream, so a gap is the device's time from one step's start to the next — the kernels and any time the
    device waited for the host — without a synchronisation inside the loop.

    Args:
        clock: "cpu", "wall" or "cuda".
    """

    def __init__(self, clock: str):
        self.clock = clock
        self.marks: list = []  # seconds (host clocks) or torch.cuda.Event

    def mark(self) -> None:
        if self.clock == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(HOST_CLOCKS[self.clock]())

    def median_ms(self, warmup: int) -> float:
        """Median step time after ``warmup`` steps, in ms."""
        marks = self.marks[warmup:]
        if self.clock == "cuda":
            torch.cuda.synchronize()
            gaps = [a.elapsed_time(b) for a, b in itertools.pairwise(marks)]  # ms
        else:
            gaps = [1000 * (b - a) for a, b in itertools.pairwise(marks)]
        return statistics.median(gaps)


class StepTimer(L.Callback):
    """A mark at the start of every training batch.

    Args:
        marks: where the marks go.
    """

    def __init__(self, marks: StepMarks):
        self.marks = marks

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.marks.mark()


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
    marks = StepMarks(args.clock)
    trainer = L.Trainer(
        max_steps=args.warmup + args.steps + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[StepTimer(marks)],
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
    )
    trainer.fit(model, train_dataloaders=data.train_dataloader())
    return marks.median_ms(args.warmup)


def time_baseline(cell: str, data: CopyData, args: argparse.Namespace) -> float:
    """Median ms per step of the same network written as a plain PyTorch training loop (on the GPU: cuDNN's
    kernels, the batch moved to the device every step as Lightning moves it, the same autocast)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    rnn_class, rnn_args, _ = CELLS[cell]
    spec = data.spec
    embed = nn.Embedding(spec.input_size, args.embedding).to(device)
    rnn = rnn_class(args.embedding, args.hidden, batch_first=True, **rnn_args).to(device)
    head = nn.Linear(args.hidden, spec.output_size).to(device)
    params = [*embed.parameters(), *rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    marks = StepMarks(args.clock)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    for step, batch in enumerate(data.train_dataloader()):
        if step > args.warmup + args.steps:
            break
        marks.mark()
        x, y = (batch[key].to(device, non_blocking=True) for key in ("x", "y"))  # (B, T)
        with autocast:
            outputs, _ = rnn(embed(x))  # (B, T, H)
            logits = head(outputs)  # (B, T, C)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return marks.median_ms(args.warmup)


def trial_args(cell: str, steps: int, folder: Path, diagnostics: bool = True) -> list[str]:
    """The ``seqmem fit`` arguments of one main-job trial as ``seqmem sweep agreement`` builds them (its
    ``set`` and grid options, the logger, the progress bar off), for ``steps`` steps and never stopped early;
    without ``diagnostics``, defaults.yaml's callbacks (every diagnostic and the guard) are dropped."""
    return [
        "fit",
        "--config",
        "agreement",
        "--model.cell",
        cell,
        "--trainer.val_check_interval",
        "250",
        "--trainer.max_steps",
        str(steps),
        "--trainer.max_epochs",
        "-1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.class_path",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir",
        str(folder),
        "--trainer.logger.init_args.name",
        cell,
        *([] if diagnostics else ["--trainer.callbacks", "[]"]),
        "--trainer.callbacks+",
        "seqmem.callbacks.StepsToSolve",
    ]


def time_trial(cell: str, steps: int, folder: Path, diagnostics: bool = True) -> float:
    """CPU seconds of one whole main-job trial in this process (imports excluded: a Ray worker pays them once)."""
    argv, sys.argv = sys.argv, sys.argv[:1]  # as a sweep's trial: this script's own options are not the CLI's
    try:
        start = time.process_time()
        run_cli(trial_args(cell, steps, folder, diagnostics))
        return time.process_time() - start
    finally:
        sys.argv = argv


class PlainNet(nn.Module):
    """The main job's network written the usual way: embedding, ``nn.RNN``/``nn.LSTM``, linear head on the last step."""

    def __init__(self, cell: str, input_size: int, output_size: int):
        super().__init__()
        rnn_class, rnn_args, _ = CELLS[cell]
        self.embed = nn.Embedding(input_size, 32)
        self.rnn = rnn_class(32, 64, batch_first=True, **rnn_args)
        self.head = nn.Linear(64, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.rnn(self.embed(x))  # (B, T, H)
        return self.head(outputs[:, -1])  # (B, C): the verb slot is the last step


def time_plain_trial(cell: str, batches: list[dict], data: AgreementData) -> float:
    """CPU seconds of a plain PyTorch loop over the main job's network and optimizer on pre-made ``batches``."""
    torch.manual_seed(0)
    net = PlainNet(cell, data.spec.input_size, data.spec.output_size)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    start = time.process_time()
    for batch in batches:
        loss = F.cross_entropy(net(batch["x"]), batch["y"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
    return time.process_time() - start


class BareModule(L.LightningModule):
    """The plain loop's network and optimizer as the smallest LightningModule: what Lightning's loop alone costs."""

    def __init__(self, cell: str, input_size: int, output_size: int):
        super().__init__()
        self.net = PlainNet(cell, input_size, output_size)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.net(batch["x"]), batch["y"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class LoggedModule(BareModule):
    """:class:`BareModule` with what a trial logs through Lightning itself: ``train/loss`` on logging steps and a
    validation loss and accuracy per validation run."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.net(batch["x"])  # (B, C)
        self.log("val/loss", F.cross_entropy(logits, batch["y"]))
        self.log("val/acc", (logits.argmax(-1) == batch["y"]).float().mean())


def time_lightning_trial(cell: str, batches: list[dict], data: AgreementData, folder: Optional[Path] = None) -> float:
    """CPU seconds of ``Trainer.fit`` on the same pre-made ``batches``, norm clipping at 1 and no progress bar.

    Without ``folder``: :class:`BareModule` and nothing else (no logger, checkpoint, validation or callback),
    Lightning's loop alone. With it: :class:`LoggedModule` with the trial's Lightning features and nothing of
    seqmem's — a TensorBoard logger in ``folder``, validation every 250 steps on the trial's validation batches,
    ``last.ckpt`` at each; what is left between this rung and the trial is seqmem's own.
    """
    torch.manual_seed(0)
    module = (BareModule if folder is None else LoggedModule)(cell, data.spec.input_size, data.spec.output_size)
    features = (
        dict(logger=False, enable_checkpointing=False, limit_val_batches=0)
        if folder is None
        else dict(
            logger=L.pytorch.loggers.TensorBoardLogger(folder, name=cell),
            callbacks=[L.pytorch.callbacks.ModelCheckpoint(save_last=True)],
            val_check_interval=250,
            check_val_every_n_epoch=None,
        )
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=len(batches),
        gradient_clip_val=1.0,
        enable_progress_bar=False,
        enable_model_summary=False,
        **features,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the batches as they are, in order
    validation = None if folder is None else torch.utils.data.DataLoader(list(data.val_dataloader()), batch_size=None)
    start = time.process_time()
    trainer.fit(module, loader, validation)
    return time.process_time() - start


# The rungs of the trial table, cheapest first: each adds one layer to the one before.
RUNGS = {
    "plain loop": lambda cell, steps, folder, batches, data: time_plain_trial(cell, batches, data),
    "bare Lightning": lambda cell, steps, folder, batches, data: time_lightning_trial(cell, batches, data),
    "Lightning, logged": lambda cell, steps, folder, batches, data: time_lightning_trial(cell, batches, data, folder),
    "seqmem, no diagnostics": lambda cell, steps, folder, batches, data: time_trial(cell, steps, folder, False),
    "seqmem trial": lambda cell, steps, folder, batches, data: time_trial(cell, steps, folder),
}


def ratios(seconds: dict[str, list[float]], top: str, bottom: str) -> list[float]:
    """Per-repeat ratios of rung ``top`` to rung ``bottom``: a repeat's rungs ran back to back, under one load."""
    return [a / b for a, b in zip(seconds[top], seconds[bottom], strict=True)]


def trial_table(args: argparse.Namespace) -> str:
    """Whole main-job trials against Lightning's bare loop and a plain loop, alternating, as a markdown table."""
    import tempfile

    data = AgreementData(min_len=50, max_len=50, distance=30, batch_size=64)
    train = data.train_dataloader().dataset
    batches = [train[i % len(train)] for i in range(args.trial_steps)]  # made before any clock starts
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for cell in args.trial_cells:
            seconds: dict[str, list[float]] = {rung: [] for rung in RUNGS}
            for repeat in range(args.repeats):
                for rung, run in RUNGS.items():
                    where = Path(folder) / f"{rung}-{repeat}".replace(" ", "_").replace(",", "")
                    seconds[rung].append(run(cell, args.trial_steps, where, batches, data))
                print(f"{cell} repeat {repeat}: " + ", ".join(f"{r} {s[-1]:.2f} s" for r, s in seconds.items()))
            rows.append((cell, seconds))
    plain = "plain loop"
    lines = [
        "# One main-job trial end to end against Lightning's bare loop and a plain PyTorch loop",
        "",
        f"- machine: {machine()}",
        f"- trial: `seqmem fit --config agreement` as `seqmem sweep agreement` runs it, {args.trial_steps} steps "
        "(validation every 250, TensorBoard, checkpoints, every diagnostic of defaults.yaml); without them: the "
        "same with `--trainer.callbacks []`; bare Lightning: the plain loop's network and optimizer as the "
        "smallest LightningModule under `Trainer.fit` (clipping at 1, nothing else); Lightning, logged: the same with "
        "the trial's TensorBoard logger, validation every 250 steps and last.ckpt; plain: embedding + "
        "nn.RNN/nn.LSTM + linear head, Adam 3e-3, norm clipping at 1; both on pre-made batches",
        f"- clock: process CPU time; each ratio is the median over {args.repeats} alternating repeats of the "
        "ratio within a repeat",
        f"- command: `PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_speed.py --trial --trial-steps "
        f"{args.trial_steps} --repeats {args.repeats} --trial-cells {' '.join(args.trial_cells)}`",
        "",
        "| cell | " + " | ".join(f"{rung} s" for rung in RUNGS) + " | ratio to plain (median) | ratios "
        "| bare Lightning / plain | seqmem trial / bare Lightning | seqmem, no diagnostics / Lightning, logged "
        "| seqmem trial / seqmem, no diagnostics | ms/step above plain | target |",
        "|---|" + "---:|" * len(RUNGS) + "---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cell, seconds in rows:
        trial = ratios(seconds, "seqmem trial", plain)
        above = 1000 * (statistics.median(seconds["seqmem trial"]) - statistics.median(seconds[plain]))
        lines.append(
            f"| {cell} | "
            + " | ".join(f"{statistics.median(s):.2f}" for s in seconds.values())
            + f" | **{statistics.median(trial):.3f}** | {', '.join(f'{r:.3f}' for r in trial)} "
            f"| {statistics.median(ratios(seconds, 'bare Lightning', plain)):.3f} "
            f"| {statistics.median(ratios(seconds, 'seqmem trial', 'bare Lightning')):.3f} "
            f"| {statistics.median(ratios(seconds, 'seqmem, no diagnostics', 'Lightning, logged')):.3f} "
            f"| {statistics.median(ratios(seconds, 'seqmem trial', 'seqmem, no diagnostics')):.3f} "
            f"| {above / args.trial_steps:.2f} | ≤ 1.10 |"
        )
    return "\n".join(lines) + "\n"


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
    parser.add_argument(
        "--clock", choices=CLOCKS, default="cpu", help="cpu: process CPU time; wall: elapsed; cuda: CUDA events"
    )
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="where both sides train")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--trial", action="store_true", help="time whole main-job trials instead of single steps")
    parser.add_argument("--trial-steps", type=int, default=1000, help="steps of each trial (--trial)")
    parser.add_argument(
        "--trial-cells", nargs="+", default=["vanilla", "lstm"], choices=["vanilla", "irnn", "gru", "lstm"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.trial:
        print(f"machine: {machine()}", flush=True)
        table = trial_table(args)
        print("\n" + table)
        TRIAL_OUT.parent.mkdir(parents=True, exist_ok=True)
        TRIAL_OUT.write_text(table)
        print(f"wrote {TRIAL_OUT}")
        return
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
        f"embedding {args.embedding}, Adam, {args.accelerator}, {args.precision}"
    )
    lines = [
        "# Training-step speed: seqmem (Lightning) vs plain PyTorch",
        "",
        f"- machine: {machine()}",
        f"- shapes: {shape}",
        f"- clock: {args.clock} time; best of {args.repeats} alternating repeats, "
        f"each the median of {args.steps} steps "
        f"after {args.warmup} warm-up steps",
        "- command: `PYTHONPATH=. .venv/bin/python scripts/benchmarks/benchmark_speed.py "
        f"--seq-len {args.seq_len} --batch {args.batch} --hidden {args.hidden} "
        f"--steps {args.steps} --repeats {args.repeats} "
        f"--threads {args.threads} --clock {args.clock} --accelerator {args.accelerator} --precision {args.precision}`",
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
