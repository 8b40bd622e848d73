"""SequenceModel: embedding/input -> recurrent net -> task head -> loss, trained by Lightning.

The task (sizes, loss, readout, baseline) arrives as a :class:`TaskSpec` linked from the datamodule,
so nothing is copied by hand between ``--data`` and ``--model``. The network is the cell of ``model.cell``
with the options it declares (:func:`seqmem.models.registered_options`). The rest lives in components of its own:
truncated BPTT in :class:`~seqmem.tbptt.TruncatedBPTT`, clipping in :class:`~seqmem.clipping.GradientClipping`, the
optimizer's checks and groups in :mod:`seqmem.optim`, evaluation metrics in :class:`~seqmem.metrics.TaskMetrics`,
the state carried across batches in :class:`~seqmem.carried_state.CarriedState` and what an exact resume needs
in :mod:`seqmem.resume`.
"""

from typing import Any, Iterator, Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from typing_extensions import override

from seqmem.callbacks.base import logging_step
from seqmem.carried_state import CarriedState
from seqmem.clipping import ClipAlgorithm, GradientClipping
from seqmem.errors import require
from seqmem.metrics import TaskMetrics
from seqmem.models import State, build_model, registered_options
from seqmem.optim import check_optimizer, optimizer_and_scheduler
from seqmem.resume import RESUME_KEYS, restore_resume_state, save_resume_state
from seqmem.tasks.spec import TaskSpec
from seqmem.tbptt import TruncatedBPTT
from seqmem.views import LossFn, SequenceModelView

# Checkpoints hold the TaskSpec in their hyperparameters; allow it under torch.load(weights_only=True).
torch.serialization.add_safe_globals([TaskSpec])


class SequenceModel(L.LightningModule):
    """A recurrent network trained on one task.

    Args:
        task: sizes, loss and baseline of the task — linked from ``--data`` automatically.
        cell: recurrent family: vanilla (tanh), orthogonal (W_h kept orthogonal), irnn (ReLU, W_h = I),
            gru, lstm, lru (the Linear Recurrent Unit) — or the import path of a cell of one's own,
            ``package.module.Class``: a subclass of seqmem.models.RecurrentNet (the cell protocol), importable
            (installed, or on PYTHONPATH).
        hidden_size: units per recurrent layer.
        num_layers: stacked recurrent layers.
        dropout: dropout between recurrent layers.
        embedding_size: width of the token embedding (token tasks only: copy, agreement, lm).
        orthogonal_lr_scale: learning-rate multiplier for the skew-symmetric parameters behind an
            orthogonal W_h (expRNN trains them at 0.1× the others).
        cell_options: further constructor arguments of the cell, e.g. ``{"alpha": 0.5}`` for a cell of one's own.
        tbptt_steps: truncated BPTT: cut each batch into chunks of this many steps, carry the hidden state
            across chunk boundaries (detached, so the gradient stops there) and take one optimizer step per
            chunk; ``trainer.global_step`` then counts chunk updates. A task with a loss at its last step only
            (adding, agreement) makes one update a batch, through its last ``tbptt_steps`` steps
            (seqmem.tbptt). None: full BPTT, one update per batch.
        gradient_clip_val: clip the gradient of every update at this value (None: no clipping). With full
            BPTT ``trainer.gradient_clip_val`` does the same; with ``tbptt_steps`` only this option
            works, because Lightning refuses Trainer clipping under manual optimisation. Diagnostics see
            the gradient before either clips.
        gradient_clip_algorithm: "norm" (rescale the total 2-norm) or "value" (clamp each entry).
        optimizer: optimizer class and arguments, e.g. ``--model.optimizer RMSprop --model.optimizer.lr 1e-3``;
            ``lr``, ``momentum``, ``weight_decay`` and ``eps`` finite and >= 0 (lr 0 freezes the model for its
            diagnostics).
        lr_scheduler: optional learning-rate scheduler class and arguments.
        options: the options the cells of :data:`~seqmem.models.MODELS` declare, by name (``forget_bias=3.0``;
            :func:`~seqmem.models.registered_options`), each ``--model.<name>`` with its own help; None or absent
            leaves the cell's default.

    Raises:
        ConfigError: an option out of range, or one that does not apply to the chosen cell.

    Example:
        >>> import lightning as L
        >>> from seqmem import AddingData, SequenceModel
        >>> data = AddingData(seq_len=20)
        >>> model = SequenceModel(data.spec, cell="irnn", hidden_size=32)
        >>> trainer = L.Trainer(max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        >>> trainer.fit(model, data)
        >>> trainer.global_step
        20
    """

    def __init__(
        self,
        task: Optional[TaskSpec] = None,
        cell: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.0,
        embedding_size: int = 32,
        orthogonal_lr_scale: float = 0.1,
        cell_options: Optional[dict[str, Any]] = None,
        tbptt_steps: Optional[int] = None,
        gradient_clip_val: Optional[float] = None,
        gradient_clip_algorithm: ClipAlgorithm = "norm",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        **options: Any,
    ):
        super().__init__()
        require(task is not None, "model.task is missing: it is linked from the data module (pass --data ...)")
        require(embedding_size >= 1, f"model.embedding_size must be >= 1, got {embedding_size}")
        require(orthogonal_lr_scale > 0, f"model.orthogonal_lr_scale must be > 0, got {orthogonal_lr_scale}")
        self.tbptt = None if tbptt_steps is None else TruncatedBPTT(tbptt_steps)
        self.clipping = GradientClipping(gradient_clip_val, gradient_clip_algorithm)
        check_optimizer(optimizer)
        known = registered_options()
        for name in options:
            require(name in known, f"model.{name} is not an option; the cells' options are: {', '.join(known)}")
        # Every cell option a hyperparameter, None where not given (save_hyperparameters reads `options` as it is
        # now): a checkpoint names the whole architecture.
        options = {name: options.get(name) for name in known}
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.task = task
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        # Truncated BPTT takes several optimizer steps per batch, which only manual optimisation allows.
        self.automatic_optimization = tbptt_steps is None
        self.embed = nn.Embedding(task.input_size, embedding_size) if task.input_tokens else nn.Identity()
        net_input = embedding_size if task.input_tokens else task.input_size
        self.net = build_model(cell, net_input, hidden_size, num_layers, dropout, cell_options, **options)
        self.head = nn.Linear(hidden_size, task.output_size)
        self.carried = CarriedState(enabled=task.stateful)
        self.eval_metrics = nn.ModuleDict({stage: TaskMetrics(task) for stage in ("val", "test")})

    # ---- model --------------------------------------------------------------------------------
    @override
    def forward(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """x: (B, T) token ids or (B, T, I) features -> predictions and final state.

        Predictions: readout "last": (B,) for regression, (B, C) logits; readout "all": (B, T, C).
        """
        outputs, state = self.net(self.embed(x), state)  # (B, T, H)
        return self.readout(outputs), state

    def forward_steps(self, x: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        """Step-by-step twin of :meth:`forward` for diagnostics: predictions and ``hiddens[l][t]``, layer l's h_t
        (B, H) as the graph consumed it, so ``autograd.grad`` of a loss with respect to those tensors is the full
        dL/dh_t of every layer and step (see RecurrentNet.forward_steps)."""
        outputs, _, hiddens = self.net.forward_steps(self.embed(x))
        return self.readout(outputs), hiddens

    def readout(self, outputs: Tensor) -> Tensor:
        """Task head on the recurrent outputs (B, T, H) — shared by the fused and step-by-step paths."""
        if self.task.readout == "last":
            outputs = outputs[:, -1]  # (B, H)
        pred = self.head(outputs)  # (B, [T,] C)
        return pred.squeeze(-1) if self.task.loss == "mse" else pred

    def diagnostic_view(self, loss_fn: Optional[LossFn] = None) -> SequenceModelView:
        """What the diagnostics read from this model (:mod:`seqmem.views`): the net without a path in the tags,
        the embedding and head as groups of their own, the first rows of a batch as the probe batch."""
        return SequenceModelView(self, loss_fn)

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """Mean loss of predictions against targets (MSE or cross-entropy over every target)."""
        return self.task.compute_loss(pred, y)

    # ---- training -----------------------------------------------------------------------------
    @override
    def training_step(self, batch: dict, batch_idx: int) -> Optional[Tensor]:
        if batch_idx == 0:
            # The streams restart with the epoch. Keyed on the batch index rather than on the epoch
            # start, so that a run resumed mid-epoch keeps the state restored from its checkpoint.
            self.carried.reset("train")
        if self.tbptt is not None:
            return self.tbptt.training_step(self, batch)
        pred, state = self(batch["x"], self.carried.get("train"))
        self.carried.carry("train", state)
        loss = self.loss(pred, batch["y"])
        # Lightning writes a per-step value to the logger only on logging steps; handing it over on every step
        # costs about 0.5 ms (its result collection), a tenth of a small model's step, for nothing.
        if logging_step(self.trainer):
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def tbptt_chunks(self, x: Tensor, y: Tensor, state: Optional[State] = None) -> Iterator[tuple[Tensor, State]]:
        """Truncated BPTT over one batch (``model.tbptt_steps``): yields ``(loss, state)`` once per update, in time
        order (:meth:`TruncatedBPTT.chunks <seqmem.tbptt.TruncatedBPTT.chunks>`)."""
        require(self.tbptt is not None, "model.tbptt_steps is not set: this model trains with full BPTT")
        return self.tbptt.chunks(self, x, y, state)

    @override
    def on_train_epoch_end(self) -> None:
        # Manual optimisation leaves schedulers to us; step per epoch, as the automatic loop does.
        if not self.automatic_optimization and (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()

    # ---- checkpoints --------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_resume_state(self, self.carried, checkpoint)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, **kwargs: Any) -> "SequenceModel":
        """Lightning's ``load_from_checkpoint``, the hyperparameters handed to the class as they are: the CLI's
        checkpoints name jsonargparse as their instantiator, which knows the signature, not the cells' options."""
        return super().load_from_checkpoint(checkpoint_path, _instantiator=None, **kwargs)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied in on_train_start, not here (seqmem.resume.restore_resume_state says why).
        self._resume_from = {key: checkpoint.get(key) for key in RESUME_KEYS}

    @override
    def on_train_start(self) -> None:
        saved = self.__dict__.pop("_resume_from", None)
        if saved is not None:
            restore_resume_state(saved, self, self.carried)

    # ---- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, batch: dict, stage: str) -> None:
        pred, state = self(batch["x"], self.carried.get(stage))
        self.carried.carry(stage, state)
        self.eval_metrics[stage].update(pred, batch)

    def _log_epoch(self, stage: str) -> None:
        metrics = self.eval_metrics[stage]
        # compute() already all-reduces across DDP ranks, so values are logged without sync_dist.
        values = {f"{stage}/{name}": value for name, value in metrics.compute().items()}
        self.log_dict(values, prog_bar=stage == "val")
        if not self.automatic_optimization and stage == "val":
            self.log("step", float(self.global_step))  # same x-axis as the chunk updates
        metrics.reset()
        # The next evaluation reads its streams from the start again: no state survives the epoch.
        self.carried.reset(stage)

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    @override
    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    @override
    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """Inputs, targets and predictions of one batch, as ``seqmem predict`` writes them: class ids (the argmax)
        for a classification task, values for regression. A stateful task carries its state from batch to
        batch, as evaluation does."""
        if batch_idx == 0:
            self.carried.reset("predict")
        pred, state = self(batch["x"], self.carried.get("predict"))
        self.carried.carry("predict", state)
        if self.task.loss == "ce":
            pred = pred.argmax(dim=-1)  # (B[, T])
        return {"x": batch["x"], "y": batch["y"], "pred": pred}

    # ---- optimisation -------------------------------------------------------------------------
    def clip_settings(self) -> tuple[Optional[float], Optional[str]]:
        """The gradient clipping in force, (clip value or None, "norm" or "value"), as the diagnostics read it: the
        model's own where set (it works in both modes), else a plain ``Trainer(gradient_clip_val=...)``."""
        return self.clipping.settings(self)

    def check_clipping(self, trainer: L.Trainer) -> None:
        """Raise :class:`~seqmem.errors.ConfigError` unless one clipper works, the one this mode allows
        (:meth:`seqmem.clipping.GradientClipping.check`). Called in :meth:`on_fit_start`, so a Trainer built in
        Python is checked; the CLI calls it before fitting, ahead of Lightning's own refusal (a traceback)."""
        self.clipping.check(trainer, truncated=self.tbptt is not None)

    @override
    def on_fit_start(self) -> None:
        self.check_clipping(self.trainer)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning runs the callbacks' hooks before this one, so diagnostics see the pre-clip gradient.
        self.clipping.clip(self, optimizer)

    @override
    def configure_optimizers(self) -> Any:
        orthogonal, scale = self.net.orthogonal_parameters(), self.hparams.orthogonal_lr_scale
        return optimizer_and_scheduler(list(self.parameters()), orthogonal, self.optimizer, self.lr_scheduler, scale)
