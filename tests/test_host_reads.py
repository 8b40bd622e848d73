"""No host syncs on quiet steps, proved on a CPU: every point where Python reads a tensor's value (``item``,
``bool``, ``float``, ``tolist``, ``.cpu()``, printing, a boolean mask, ...) is intercepted with a
TorchFunctionMode that records the Python stack, during training steps that log nothing (no logging step, no
periodic diagnostic, no validation), with every diagnostic of defaults.yaml on and gradient clipping.

On a GPU each such read waits for the device; on a CPU it is free, but the same Python code runs, so a read
seen here is a sync there. A ``.to(x.device)`` moves data to wherever it already lives — a no-op on either
device — so only ``.to("cpu")`` spelt out counts. The one choice that depends on the device, where the
non-finite guard decides a skip (on the host on a CPU, where a read is free), is set to its GPU choice here
(``decide_on="device"``).
"""

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import pytest
import torch
from conftest import CONFIGS, QUIET
from torch.overrides import TorchFunctionMode

import seqmem
from seqmem.callbacks.base import Diagnostic, logging_step
from seqmem.callbacks.nonfinite import NonFiniteGuard
from seqmem.cli import run_cli
from seqmem.models import MODELS

# Tensor methods whose result is a Python value (or a host array, or text): each one waits for the device.
READS = {
    "item",
    "tolist",
    "numpy",
    "__array__",
    "cpu",
    "nonzero",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "__repr__",
    "__format__",
}
TORCH = str(Path(torch.__file__).parent)
# Frames between the caller and the mode: torch's Python-level Tensor methods that forward to it.
PASS_THROUGH = (f"{TORCH}/_tensor.py", f"{TORCH}/overrides.py", f"{TORCH}/_tensor_str.py")
OWNERS = {"seqmem": str(Path(seqmem.__file__).parent), "lightning": str(Path(L.__file__).parent), "torch": TORCH}


@dataclass
class HostRead:
    """One read: the tensor method, the training batch it happened in, and who called it."""

    name: str
    batch: Optional[int]
    stack: list[traceback.FrameSummary]

    @property
    def caller(self) -> traceback.FrameSummary:
        """The frame that called the tensor method."""
        return next(frame for frame in reversed(self.stack) if not frame.filename.startswith(PASS_THROUGH))

    @property
    def owner(self) -> str:
        """seqmem, lightning, torch or other: the package whose code made the read."""
        path = self.caller.filename
        return next((owner for owner, root in OWNERS.items() if path.startswith(root)), "other")

    def __str__(self) -> str:
        return f"{self.name} by {self.owner} in batch {self.batch}:\n" + "".join(traceback.format_list(self.stack[-8:]))


def is_host_read(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether a call of tensor function ``name`` with these arguments makes the host wait for the device."""
    if name in READS:
        return True
    if name == "to":  # .to("cpu") / .to(device="cpu") spelt out
        return any(isinstance(a, str) and a.startswith("cpu") for a in (*args[1:], kwargs.get("device")))
    if name in ("__getitem__", "__setitem__"):  # a boolean mask: its size depends on the values
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    return False


class HostReads(TorchFunctionMode):
    """Records every host read made while ``recording`` is on, tagged with the current training batch."""

    def __init__(self):
        super().__init__()
        self.recording = False
        self.batch: Optional[int] = None
        self.reads: list[HostRead] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.recording and is_host_read(name, args, kwargs):
            self.reads.append(HostRead(name, self.batch, traceback.extract_stack()[:-1]))
        return func(*args, **kwargs)


class QuietBatches(L.Callback):
    """Turns recording on at the start of every training batch and marks the batches that are not quiet: one of
    their optimizer steps is a logging step or a periodic diagnostic's step, or Lightning writes its logs."""

    def __init__(self, reads: HostReads):
        self.reads = reads
        self.noisy: set[int] = set()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.reads.batch, self.reads.recording = batch_idx, True
        if trainer._logger_connector.should_update_logs:  # Lightning's own cadence (batches, not chunk updates)
            self.noisy.add(batch_idx)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        periodic = [c.every_n_steps for c in trainer.callbacks if isinstance(c, Diagnostic) and c.every_n_steps]
        if logging_step(trainer) or any(trainer.global_step % every == 0 for every in periodic):
            self.noisy.add(self.reads.batch)


class StopRecording(L.Callback):
    """The last callback: recording stops once every hook of the batch has run."""

    def __init__(self, reads: HostReads):
        self.reads = reads

    def on_train_batch_end(self, *args: Any) -> None:
        self.reads.recording = False


def quiet_reads(root: Path, args: list[str], reads: Optional[HostReads] = None) -> list[HostRead]:
    """Host reads on the quiet batches of a ``seqmem fit`` built by the real CLI (defaults.yaml: every
    diagnostic, the guard, log_every_n_steps 10; copy.yaml's last.ckpt) with the given arguments.

    ``reads``: the recorder, HostReads by default; scripts/gpu_check.py passes one with the same ``recording``,
    ``batch`` and ``reads`` that records CUDA's own synchronisations instead.
    """
    config = ["--config", str(CONFIGS / "copy.yaml"), "--trainer.default_root_dir", str(root)]
    cli = run_cli([*config, "--trainer.num_sanity_val_steps", "0", *args], run=False)
    reads = HostReads() if reads is None else reads
    quiet = QuietBatches(reads)
    callbacks = cli.trainer.callbacks
    for guard in (c for c in callbacks if isinstance(c, NonFiniteGuard)):
        guard.decide_on = "device"  # what "auto" chooses on a GPU, proved here on the CPU
    callbacks[:] = [quiet, *callbacks, StopRecording(reads)]
    with reads:
        cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == int(args[args.index("--trainer.max_steps") + 1])
    assert len(set(range(7)) - quiet.noisy) >= 4, "too few quiet batches to prove anything"
    return [read for read in reads.reads if read.batch not in quiet.noisy]


SMALL = "--model.hidden_size 8 --data.seq_len 10 --data.batch_size 4".split()
# Full BPTT: one update per batch. Truncated: copy's 30 steps cut into 3 chunks of 10, three updates per batch.
MODES = {
    "full": ["--trainer.max_steps", "12", "--trainer.gradient_clip_val", "1.0"],
    "tbptt": ["--trainer.max_steps", "21", "--model.tbptt_steps", "10", "--model.gradient_clip_val", "1.0"],
}


def test_the_detector_sees_every_host_read_point() -> None:
    """The instrument itself: each way of reading a value is caught and attributed to its caller; moving data
    to the device it is on, and plain arithmetic, are not reads."""
    t, s = torch.tensor([1.5, 2.0]), torch.tensor(1)
    reads = HostReads()
    points = [
        lambda: s.item(),
        lambda: bool(s),
        lambda: 1 if s else 0,
        lambda: float(s),
        lambda: int(s),
        lambda: [0, 1][s],
        lambda: t.tolist(),
        lambda: t.numpy(),
        lambda: t.cpu(),
        lambda: t.to("cpu"),
        lambda: t.nonzero(),
        lambda: repr(t),
        lambda: f"{s:.3g}",
        lambda: t[t > 1.6],
        lambda: t.__setitem__(t > 5, 0.0),
    ]
    with reads:
        reads.recording = True
        for point in points:
            point()
        t.to(s.device), t + s, t[0], torch.where(s > 0, t, 0)  # not reads
    assert len(reads.reads) == len(points)
    assert {read.owner for read in reads.reads} == {"other"}
    assert all(read.caller.filename == __file__ for read in reads.reads)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("cell", sorted(MODELS))
def test_quiet_training_steps_make_no_host_reads(workdir: Path, cell: str, mode: str) -> None:
    """With the progress bar off, a step that logs nothing reads nothing from the device — not seqmem's
    code (the diagnostics, clipping counters, the non-finite guard, truncated BPTT), not Lightning's."""
    reads = quiet_reads(workdir, [*QUIET, *SMALL, "--model.cell", cell, *MODES[mode]])
    assert not reads, "\n".join(str(read) for read in reads[:5])


@pytest.mark.parametrize(
    "mode, options",
    [
        ("full", ["--model.optimizer", "torch.optim.Adam", "--model.optimizer.fused", "true"]),  # guard: found_inf
        ("tbptt", ["--trainer.precision", "bf16-mixed"]),
    ],
    ids=["fused-adam", "bf16-mixed"],
)
def test_quiet_steps_stay_quiet_with_a_fused_optimizer_and_under_bf16(workdir: Path, mode: str, options: list) -> None:
    reads = quiet_reads(workdir, [*QUIET, *SMALL, "--model.cell", "lstm", *MODES[mode], *options])
    assert not reads, "\n".join(str(read) for read in reads[:5])


def test_lightnings_progress_bar_reads_its_values_on_every_refresh(workdir: Path) -> None:
    """What Lightning itself reads: the progress bar turns the ``prog_bar=True`` values (train/loss) into
    numbers on every refresh — every batch for the default bar; for TQDMProgressBar only every ``refresh_rate``
    batches and on the last one, so a refresh rate equal to log_every_n_steps keeps the quiet steps quiet."""
    args = [*SMALL, "--model.cell", "gru", *MODES["full"], "--trainer.enable_model_summary", "false"]
    reads = quiet_reads(workdir / "default", args)
    assert reads and {read.owner for read in reads} == {"lightning"}
    assert all(any(frame.name == "get_metrics" for frame in read.stack) for read in reads)
    tqdm = ["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar", "--trainer.callbacks.refresh_rate=10"]
    assert {read.batch for read in quiet_reads(workdir / "tqdm", [*args, *tqdm])} == {11}  # the run's last batch


def test_quiet_steps_of_a_users_own_model_make_no_host_reads(tmp_path: Path) -> None:
    """A user's word-level LM (tests/user_models.py) under its own L.Trainer with every diagnostic at the shipped
    intervals, clipping and the guard: a step that logs nothing reads nothing from the device."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from user_models import WordLM, lm_data

    from seqmem.callbacks import (
        ClippingEvents,
        GradientNorms,
        InputSensitivity,
        JacobianSpectrum,
        RecurrentSpectrum,
        TimestepGradients,
    )

    reads = HostReads()
    quiet = QuietBatches(reads)
    diagnostics = [
        GradientNorms(),
        ClippingEvents(),
        RecurrentSpectrum(every_n_steps=100),
        TimestepGradients(every_n_steps=1000),
        InputSensitivity(every_n_steps=1000),
        JacobianSpectrum(every_n_steps=2000),
        NonFiniteGuard(decide_on="device"),  # what "auto" chooses on a GPU
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=12,
        max_epochs=-1,
        log_every_n_steps=10,
        gradient_clip_val=1.0,
        callbacks=[quiet, *diagnostics, StopRecording(reads)],
        logger=TensorBoardLogger(str(tmp_path), name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with reads:
        trainer.fit(WordLM(), lm_data(batches=4))
    assert trainer.global_step == 12 and len(set(range(12)) - quiet.noisy) >= 8
    found = [read for read in reads.reads if read.batch not in quiet.noisy]
    assert not found, "\n".join(str(read) for read in found[:5])
