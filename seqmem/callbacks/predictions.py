"""What ``seqmem predict`` writes: the model's predictions on the test split, in the run folder."""

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

PREDICTIONS_FILE = "predictions.pt"


class PredictionWriter(L.Callback):
    """Writes ``predict``'s outputs to ``predictions.pt`` in the run folder (``trainer.log_dir``).

    The file is a ``torch.save`` dict: ``"task"`` (the task's name), ``"x"`` (inputs), ``"y"`` (targets) and
    ``"pred"`` (class ids, the argmax, for a classification task; values for regression), each the batches of the
    test split concatenated along dim 0, in order — one row per sequence (lm: per stream window).
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
        run_folder.mkdir(parents=True, exist_ok=True)
        path = run_folder / PREDICTIONS_FILE
        torch.save({"task": pl_module.task.name, **merged}, path)
        print(f"seqmem: predictions for the test split written to {path}", file=sys.stderr)
