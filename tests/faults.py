"""A disk that fills up mid-write, for the fault tests: a torch.save that writes half its bytes, then fails with
ENOSPC as a full disk does, and a callback that switches it on from a given step (in-process runs and Ray trials:
``tests.faults.FullDisk``)."""

import errno
import io
import os
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from typing_extensions import override

REAL_SAVE = torch.save


def half_then_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    """``torch.save`` on a disk that fills up halfway: half the bytes reach ``f`` (a file object, or a path, which
    is what a non-atomic save would write to), then ENOSPC."""
    buffer = io.BytesIO()
    REAL_SAVE(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as file:
            file.write(data[: len(data) // 2])
    else:
        f.write(data[: len(data) // 2])
        f.flush()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk(L.Callback):
    """From optimizer step ``after`` on (while ``marker``, if given, exists), every ``torch.save`` fails halfway.

    Args:
        after: the first step whose checkpoint fails (its train batch ends at this global step).
        marker: a file whose presence keeps the disk full; None: always full from ``after`` on. Removing it is
            "freeing space": the same command then runs as usual.
    """

    def __init__(self, after: int, marker: Optional[str] = None):
        self.after = after
        self.marker = marker
        self.saved: Optional[Callable] = None

    @override
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        full = self.marker is None or Path(self.marker).exists()
        if trainer.global_step >= self.after and full and self.saved is None:
            self.saved, torch.save = torch.save, half_then_full

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()  # a failed run calls no teardown hook

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if self.saved is not None:  # the next test, or the next trial of a Ray worker, runs in this process
            torch.save, self.saved = self.saved, None
