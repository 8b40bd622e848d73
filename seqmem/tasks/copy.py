"""The copy-memory task (Arjovsky et al. 2016): recall a few symbols after a long blank delay."""

import math

import torch

from seqmem.errors import require
from seqmem.tasks.spec import BatchShape, SyntheticTask, TaskSpec


def copy_memory(
    batch_size: int, seq_len: int, generator: torch.Generator, num_symbols: int = 8, num_copy: int = 10
) -> dict:
    """One batch of the copy-memory task.

    Token ids: 0 blank, ``1..num_symbols`` symbols, ``num_symbols + 1`` the marker. The input is
    ``num_copy`` symbols, ``T - 1`` blanks, the marker, ``num_copy`` blanks; the target is
    ``T + num_copy`` blanks followed by the ``num_copy`` symbols.

    Args:
        batch_size: number of sequences B.
        seq_len: delay T between the symbols and the marker (at least 1).
        generator: source of randomness; the batch is a pure function of it.
        num_symbols: size of the symbol alphabet.
        num_copy: number of symbols to recall.

    Returns:
        ``x`` and ``y``: (B, T + 2 * num_copy) long.
    """
    symbols = torch.randint(1, num_symbols + 1, (batch_size, num_copy), generator=generator)  # (B, C)
    delay = torch.zeros(batch_size, seq_len - 1, dtype=torch.long)  # (B, T-1)
    marker = torch.full((batch_size, 1), num_symbols + 1, dtype=torch.long)  # (B, 1)
    blanks = torch.zeros(batch_size, num_copy, dtype=torch.long)  # (B, C)
    x = torch.cat([symbols, delay, marker, blanks], dim=1)  # (B, T+2C)
    wait = torch.zeros(batch_size, seq_len + num_copy, dtype=torch.long)  # (B, T+C)
    y = torch.cat([wait, symbols], dim=1)  # (B, T+2C)
    return {"x": x, "y": y}


class CopyData(SyntheticTask):
    """Copy memory: reproduce the first symbols of the sequence after a blank delay and a marker.

    Args:
        seq_len: delay T between the symbols and the marker; sequences are T + 2*num_copy long.
        batch_size: sequences per batch.
        train_batches: batches per training epoch (the same batches every epoch).
        val_batches: batches per validation (and test) run.
        seed: seed of the training stream; validation and test use disjoint streams derived from it.
        num_symbols: size of the symbol alphabet (8 in Arjovsky et al.).
        num_copy: number of symbols to recall (10 in Arjovsky et al.).
    """

    def __init__(
        self,
        seq_len: int = 100,
        batch_size: int = 128,
        train_batches: int = 1000,
        val_batches: int = 10,
        seed: int = 0,
        num_symbols: int = 8,
        num_copy: int = 10,
    ):
        super().__init__(batch_size, train_batches, val_batches, seed)
        require(seq_len >= 1, f"data.seq_len must be >= 1, got {seq_len}")
        require(num_symbols >= 2, f"data.num_symbols must be >= 2, got {num_symbols}")
        require(num_copy >= 1, f"data.num_copy must be >= 1, got {num_copy}")
        self.save_hyperparameters()

    @property
    def spec(self) -> TaskSpec:
        hp = self.hparams
        # A memoryless model can emit blanks perfectly but must guess each recalled symbol.
        baseline = hp.num_copy * math.log(hp.num_symbols) / (hp.seq_len + 2 * hp.num_copy)
        return TaskSpec(
            name="copy",
            input_size=hp.num_symbols + 2,
            output_size=hp.num_symbols + 1,
            loss="ce",
            readout="all",
            baseline=baseline,
            input_tokens=True,
            accuracy_steps=hp.num_copy,
            solved_metric="val/acc",  # on the recalled symbols only
            solved_threshold=0.99,
            solved_mode="max",
        )

    def batch_shape(self) -> BatchShape:
        hp = self.hparams
        steps = hp.seq_len + 2 * hp.num_copy
        return BatchShape(hp.batch_size, steps, "data.seq_len", hp.seq_len, tensor_bytes=2 * hp.batch_size * steps * 8)

    def make_batch(self, generator: torch.Generator) -> dict:
        hp = self.hparams
        return copy_memory(hp.batch_size, hp.seq_len, generator, num_symbols=hp.num_symbols, num_copy=hp.num_copy)
