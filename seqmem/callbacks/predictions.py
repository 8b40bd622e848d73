"""What ``seqmem predict`` writes: the model's predictions on the test split, in the run folder."""

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

from seqmem.atomic import replaced
from seqmem.errors import WriteError

PREDICTIONS_FILE = "predictions.pt"


class PredictionWriter(L.Callback):
    """Writes ``predict``'s outputs to ``predictions.pt`` in the run folder (``trainer.log_dir``).

    The file is a ``torch.save`` dict: ``"task"`` (the task's name), ``"x"`` (inputs), ``"y"`` (targets) and
    ``"pred"`` (class ids, the argmax, for a classification task; values for regression), each the batches of the
    test split concatenated along dim 0, in order — one row per sequence (lm: per stream window). The file is
    written atomically (:mod:`seqmem.atomic`); one that cannot be is a :class:`~seqmem.errors.WriteError`.
    """

    def __init__(self):
        self.batches: list[dict[str, Tensor]] = []

    @override
    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches = []

    @override
    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.batches.append({key: value.detach().cpu() for key, value in outputs.items()})

    @override
    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_folder = Path(trainer.log_dir)  # a collective under DDP: every rank asks
        if not trainer.is_global_zero or not self.batches:
            return
        merged = {key: torch.cat([batch[key] for batch in self.batches]) for key in ("x", "y", "pred")}
        path = run_folder / PREDICTIONS_FILE
        try:
            run_folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WriteError.of(error, run_folder) from error
        with replaced(path) as file:  # whole or not at all: a full disk leaves an earlier file as it was
            torch.save({"task": pl_module.task.name, **merged}, file)
        print(f"seqmem: predictions for the test split written to {path}", file=sys.stderr)
