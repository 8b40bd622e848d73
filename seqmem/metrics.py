"""Metrics torchmetrics does not ship: accuracy split by bucket (e.g. agreement distance)."""

import torch
from torch import Tensor
from torchmetrics import Metric


class BucketAccuracy(Metric):
    """Accuracy per bucket; states are summed across DDP ranks before ``compute``.

    Args:
        num_buckets: number of buckets; ``update`` takes a bucket index per sample.
    """

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
