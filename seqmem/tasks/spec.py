"""What a task tells the model, and the base class every task datamodule derives from.

A task is a pure, seeded generator function plus a thin LightningDataModule. The datamodule
exposes a :class:`TaskSpec` *without* ``setup()`` being called, so the CLI can link it into the
model at instantiation (``parser.link_arguments("data", "model.task", apply_on="instantiate")``):
sizes are never copied by hand.

Batches are dicts:
    x:      (B, T) long token ids when ``spec.input_tokens``, else (B, T, input_size) float
    y:      readout "last": (B,) float (mse) or long (ce); readout "all": (B, T) long
    bucket: (B,) long, optional — index into ``spec.bucket_names`` for per-bucket accuracy
"""

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from seqmem.errors import require


@dataclass  # not frozen: Lightning rebuilds dataclasses in hparams when it writes hparams.yaml
class TaskSpec:
    """Sizes, loss and reporting of a task; linked from the datamodule into the model.

    Args:
        name: task name, used in metric names and logs.
        input_size: channels of a continuous input, or the vocabulary size of a token input.
        output_size: 1 for regression, else the number of classes.
        loss: ``"mse"`` (regression) or ``"ce"`` (classification).
        readout: ``"last"`` predicts from the final hidden state only; ``"all"`` at every step.
        baseline: the loss of a chance-level (memoryless) predictor, logged beside ``val/loss``.
        input_tokens: inputs are token ids that go through an embedding.
        accuracy_steps: report ``val/acc`` over the last this-many target steps (0: no accuracy).
        bucket_names: names of the buckets in ``batch["bucket"]``; ``val/acc_<name>`` per bucket.
        perplexity: report ``val/ppl`` (and ``val/bpc`` when ``char_level``).
        char_level: the tokens are characters (bits per character is meaningful).
        stateful: consecutive batches continue the same streams, so the hidden state is carried.
        solved_metric: the validation metric that says the task is solved (``StepsToSolve`` and
            ``seqmem sweep`` use it by default), e.g. ``val/acc``; None: the task has no default criterion.
        solved_threshold: the task counts as solved once ``solved_metric`` reaches this value.
        solved_mode: ``"max"``: solved when the metric is >= the threshold; ``"min"``: when it is <= it.
    """

    name: str
    input_size: int
    output_size: int
    loss: str
    readout: str
    baseline: float
    input_tokens: bool = False
    accuracy_steps: int = 0
    bucket_names: tuple[str, ...] = ()
    perplexity: bool = False
    char_level: bool = False
    stateful: bool = False
    solved_metric: Optional[str] = None
    solved_threshold: Optional[float] = None
    solved_mode: str = "max"

    def compute_loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """Mean loss of predictions against targets: MSE, or cross-entropy over every target step.

        Args:
            pred: (B,) regression outputs, (B, C) logits (readout "last") or (B, T, C) (readout "all").
            y: (B,) or (B, T) targets.
        """
        if self.loss == "mse":
            return F.mse_loss(pred, y)
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))  # over B*T targets


@dataclass(frozen=True)
class BatchShape:
    """The size of one batch of a task, which the CLI checks against the machine's memory before a run starts.

    Args:
        size: sequences per batch (B), set by ``data.batch_size``.
        steps: time steps the model reads per sequence (T).
        length_option: the option that sets ``steps``, as the user types it (``data.seq_len``).
        length: its value.
        tensor_bytes: bytes of the batch's tensors (inputs, targets, ...) as the task makes them.
    """

    size: int
    steps: int
    length_option: str
    length: int
    tensor_bytes: int


class TaskDataModule(L.LightningDataModule, ABC):
    """Base class of every task: subclasses provide :attr:`spec` and their dataloaders.

    Abstract, as is :class:`SyntheticTask`: ``--data`` offers (and accepts) only the concrete tasks.
    """

    @property
    @abstractmethod
    def spec(self) -> TaskSpec:
        """The task's sizes, loss and baseline — available right after ``__init__``."""

    def batch_shape(self) -> Optional[BatchShape]:
        """The size of one batch, for the CLI's memory check before a run starts; None (a task of one's own that
        does not say): not checked."""
        return None

    def check_stage(self, stage: str, world_size: int) -> None:
        """Raise :class:`~seqmem.errors.ConfigError` when the data cannot serve ``stage`` ("fit", "validate",
        "test", "predict") on ``world_size`` processes. The CLI calls it before anything is written; the
        synthetic tasks serve any stage."""

    @override
    def predict_dataloader(self) -> DataLoader:
        """``seqmem predict`` runs on the test split."""
        return self.test_dataloader()


class SyntheticTask(TaskDataModule):
    """Base of the generated tasks: validates the stream options, serves train / val / test batches.

    Subclasses call ``super().__init__(batch_size, train_batches, val_batches, seed)``, then
    ``self.save_hyperparameters()``, and implement :meth:`make_batch` with their pure generator.

    Args:
        batch_size: sequences per batch.
        train_batches: batches per training epoch (the same batches every epoch: batch ``i`` is
            seeded by ``(seed, i)``).
        val_batches: batches per validation (and test) run.
        seed: seed of the training stream; validation and test use disjoint streams derived from it.
    """

    def __init__(self, batch_size: int, train_batches: int, val_batches: int, seed: int):
        super().__init__()
        require(batch_size >= 1, f"data.batch_size must be >= 1, got {batch_size}")
        require(train_batches >= 1, f"data.train_batches must be >= 1, got {train_batches}")
        require(val_batches >= 1, f"data.val_batches must be >= 1, got {val_batches}")
        require(seed >= 0, f"data.seed must be >= 0, got {seed}")

    @abstractmethod
    def make_batch(self, generator: torch.Generator) -> dict:
        """One batch, a pure function of ``generator``."""

    def _loader(self, split: int, num_batches: int) -> DataLoader:
        # Seeds 3*seed + split never coincide across (seed, split) pairs: the streams are disjoint.
        return batch_loader(SyntheticBatches(self.make_batch, num_batches, 3 * self.hparams.seed + split))

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(0, self.hparams.train_batches)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(1, self.hparams.val_batches)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(2, self.hparams.val_batches)


class SyntheticBatches(Dataset):
    """``num_batches`` whole batches from a pure generator, batch ``i`` seeded by ``(seed, i)``.

    Random access by index keeps every batch reproducible whatever the worker count, sampler or
    resume point: the data of step ``i`` never depends on what was drawn before it. So a batch once made is
    kept and served again (every epoch, every validation) until ``cache_bytes`` are held: generating a
    batch costs several percent of a small model's step, and a pure function need not run twice.

    Args:
        make_batch: the task's generator, a pure function of the ``torch.Generator`` it is given.
        num_batches: batches in one pass.
        seed: seed of the stream; batch ``i`` is made from seed ``seed * 1_000_003 + i``.
        cache_bytes: the most tensor memory kept for batches already made (0: make every batch afresh).
    """

    def __init__(
        self, make_batch: Callable[[torch.Generator], dict], num_batches: int, seed: int, cache_bytes: int = 256 * 2**20
    ):
        self.make_batch = make_batch
        self.num_batches = num_batches
        self.seed = seed
        self.cache_bytes = cache_bytes
        self._made: dict[int, dict] = {}
        self._made_bytes = 0

    def __len__(self) -> int:
        return self.num_batches

    @override
    def __getitem__(self, i: int) -> dict:
        if (batch := self._made.get(i)) is not None:
            return batch
        # A large odd multiplier keeps (seed, i) pairs from colliding for the seeds people use.
        batch = self.make_batch(torch.Generator().manual_seed(self.seed * 1_000_003 + i))
        size = sum(t.numel() * t.element_size() for t in batch.values() if isinstance(t, torch.Tensor))
        if self._made_bytes + size <= self.cache_bytes:
            self._made[i], self._made_bytes = batch, self._made_bytes + size
        return batch


class ResumableLoader(DataLoader):
    """A DataLoader that can restart mid-epoch at the next unseen batch.

    Lightning saves the ``state_dict`` of a training loader that has one in every checkpoint and
    loads it on resume, so a run stopped at batch N of an epoch continues with batch N instead of
    replaying the epoch from its start. Skipped batches are drawn and dropped (cheap next to a step).
    Lightning fetches no batch ahead for loaders with a length, so "served" is "consumed".
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._served = 0  # batches handed out by the current pass
        self._resume_at = 0

    @override
    def __iter__(self):
        start, self._resume_at = self._resume_at, 0
        self._served = start
        for batch in itertools.islice(super().__iter__(), start, None):
            self._served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"served": self._served}

    def load_state_dict(self, state_dict: dict) -> None:
        # A checkpoint taken after the last batch of an epoch resumes at the start of the next one.
        self._resume_at = state_dict["served"] % len(self)


def batch_loader(dataset: Dataset) -> DataLoader:
    """A resumable loader over a dataset whose items are already whole batches."""
    # Its own generator: creating an iterator would otherwise draw from the global random state,
    # shifting dropout's random stream by one draw per loader pass (and a resumed run's by one more).
    return ResumableLoader(dataset, batch_size=None, shuffle=False, num_workers=0, generator=torch.Generator())
