"""Evaluation metrics: the set a task reports (:class:`TaskMetrics`), and per-bucket accuracy.

Every state is a torchmetrics state, so ``compute()`` all-reduces across DDP ranks: the logged
``val/loss`` of a multi-process run equals a single-process evaluation of the same weights.
"""

import math

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from seqmem.tasks.spec import TaskSpec


class BucketAccuracy(Metric):
    """Accuracy per bucket (e.g. the agreement task's subject–verb distance); states sum across ranks.

    Args:
        num_buckets: number of buckets; ``update`` takes a bucket index per sample.

    Example:
        >>> metric = BucketAccuracy(2)
        >>> metric.update(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1]), torch.tensor([0, 0, 1]))
        >>> metric.compute()
        tensor([0.5000, 1.0000])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False  # update() needs no earlier state: torchmetrics may skip a second pass
    correct: Tensor
    total: Tensor

    def __init__(self, num_buckets: int):
        super().__init__()
        self.add_state("correct", default=torch.zeros(num_buckets), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_buckets), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, bucket: Tensor) -> None:
        """preds, target, bucket: (N,) long."""
        self.correct += torch.bincount(bucket, weights=(preds == target).float(), minlength=len(self.correct))
        self.total += torch.bincount(bucket, minlength=len(self.total)).float()

    def compute(self) -> Tensor:
        """(num_buckets,) accuracy; NaN for a bucket that saw no sample."""
        return self.correct / self.total


class TaskMetrics(nn.Module):
    """What one evaluation stage reports for a task, accumulated over batches.

    Always ``loss`` (mean over batches) and ``baseline`` (the chance-level loss); with
    ``task.accuracy_steps`` also ``acc`` over the last that-many target steps (copy: the recalled
    symbols); with ``task.bucket_names`` ``acc_<bucket>`` for every bucket that saw a sample; with
    ``task.perplexity`` ``ppl`` = e^loss, and ``bpc`` = loss / ln 2 for character-level tasks.

    Args:
        task: the task's sizes, loss and reporting flags.

    Example:
        Always predicting 1 on the adding problem scores about its chance baseline, 1/6:

        >>> from seqmem import AddingData
        >>> data = AddingData(seq_len=20, batch_size=256)
        >>> batch = next(iter(data.train_dataloader()))  # {"x": (256, 20, 2), "y": (256,)}
        >>> metrics = TaskMetrics(data.spec)
        >>> metrics.update(torch.ones_like(batch["y"]), batch)  # once per batch
        >>> {name: round(value.item(), 3) for name, value in metrics.compute().items()}
        {'loss': 0.161, 'baseline': 0.167}
        >>> metrics.reset()  # before the next evaluation
    """

    def __init__(self, task: TaskSpec):
        super().__init__()
        self.task = task
        self.loss = MeanMetric()
        self.acc = MulticlassAccuracy(task.output_size, average="micro") if task.accuracy_steps else None
        self.bucket_acc = BucketAccuracy(len(task.bucket_names)) if task.bucket_names else None

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        """Add one batch: ``pred`` as SequenceModel's forward returns it, ``batch`` with ``y`` (and ``bucket``)."""
        y = batch["y"]
        self.loss.update(self.task.compute_loss(pred, y))
        if self.acc is not None:
            # readout "all" scores only the last accuracy_steps steps (copy: the recalled symbols).
            if self.task.readout == "all":
                pred, y = pred[:, -self.task.accuracy_steps :], y[:, -self.task.accuracy_steps :]  # (B, k, C), (B, k)
            self.acc.update(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))
        if self.bucket_acc is not None:
            self.bucket_acc.update(pred.argmax(-1), y, batch["bucket"])

    def compute(self) -> dict[str, Tensor]:
        """The tagged values of everything added since the last :meth:`reset`, all-reduced across ranks."""
        loss = self.loss.compute()
        values = {"loss": loss, "baseline": torch.tensor(self.task.baseline)}
        if self.task.perplexity:
            values["ppl"] = loss.exp()
            if self.task.char_level:
                values["bpc"] = loss / math.log(2)
        if self.acc is not None:
            values["acc"] = self.acc.compute()
        if self.bucket_acc is not None:
            for name, acc in zip(self.task.bucket_names, self.bucket_acc.compute(), strict=True):
                if not acc.isnan():  # a bucket no sample fell in has no accuracy, not 0
                    values[f"acc_{name}"] = acc
        return values

    def reset(self) -> None:
        """Forget every batch added so far."""
        for metric in (self.loss, self.acc, self.bucket_acc):
            if metric is not None:
                metric.reset()
