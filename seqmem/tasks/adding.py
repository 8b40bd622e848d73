"""The adding problem (uRNN variant): remember two marked values and output their sum."""

import torch

from seqmem.errors import require
from seqmem.tasks.spec import BatchShape, SyntheticTask, TaskSpec


def adding_problem(batch_size: int, seq_len: int, generator: torch.Generator) -> dict:
    """One batch of the adding problem.

    Channel 0 holds values drawn from U[0, 1]; channel 1 marks exactly one step in the first half
    ``[0, T//2)`` and one in the second half ``[T//2, T)``. The target is the sum of the two marked
    values, so the model must hold the first one across at least ``T//2`` steps.

    Args:
        batch_size: number of sequences B.
        seq_len: sequence length T (at least 2, so both halves hold a step).
        generator: source of randomness; the batch is a pure function of it.

    Returns:
        ``x``: (B, T, 2) float, ``y``: (B,) float.
    """
    half = seq_len // 2
    values = torch.rand(batch_size, seq_len, generator=generator)  # (B, T)
    first = torch.randint(0, half, (batch_size,), generator=generator)  # (B,)
    second = torch.randint(half, seq_len, (batch_size,), generator=generator)  # (B,)
    rows = torch.arange(batch_size)  # (B,)
    markers = torch.zeros(batch_size, seq_len)  # (B, T)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)  # (B, T, 2)
    y = values[rows, first] + values[rows, second]  # (B,)
    return {"x": x, "y": y}


class AddingData(SyntheticTask):
    """Adding problem: regress the sum of the two marked values of a 2-channel sequence.

    Args:
        seq_len: sequence length T; the first marked value must be held for at least T//2 steps.
        batch_size: sequences per batch.
        train_batches: batches per training epoch (the same batches every epoch).
        val_batches: batches per validation (and test) run.
        seed: seed of the training stream; validation and test use disjoint streams derived from it.
    """

    def __init__(
        self, seq_len: int = 100, batch_size: int = 128, train_batches: int = 1000, val_batches: int = 10, seed: int = 0
    ):
        super().__init__(batch_size, train_batches, val_batches, seed)
        require(seq_len >= 2, f"data.seq_len must be >= 2 (one marker per half), got {seq_len}")
        self.save_hyperparameters()

    @property
    def spec(self) -> TaskSpec:
        # Always predicting 1 = E[U1 + U2] scores Var(U1 + U2) = 2/12. Solved: 1 % of that chance loss.
        return TaskSpec(
            name="adding",
            input_size=2,
            output_size=1,
            loss="mse",
            readout="last",
            baseline=1 / 6,
            solved_metric="val/loss",
            solved_threshold=0.01 / 6,
            solved_mode="min",
        )

    def batch_shape(self) -> BatchShape:
        B, T = self.hparams.batch_size, self.hparams.seq_len
        return BatchShape(B, T, "data.seq_len", T, tensor_bytes=B * T * 2 * 4 + B * 4)  # x (B, T, 2), y (B,) float32

    def make_batch(self, generator: torch.Generator) -> dict:
        return adding_problem(self.hparams.batch_size, self.hparams.seq_len, generator)
