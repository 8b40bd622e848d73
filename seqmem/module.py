"""SequenceModel: embedding/input -> recurrent net -> task head -> loss, trained by Lightning.

The task (sizes, loss, readout, baseline) arrives as a :class:`TaskSpec` linked from the datamodule,
so nothing is copied by hand between ``--data`` and ``--model``. Evaluation metrics live in
:class:`~seqmem.metrics.TaskMetrics`, the state carried across batches in
:class:`~seqmem.carried_state.CarriedState`.
"""

import math
from typing import Any, Iterator, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from seqmem.callbacks.base import logging_step
from seqmem.carried_state import CarriedState
from seqmem.errors import ConfigError, require, require_choice, shorten
from seqmem.metrics import TaskMetrics
from seqmem.models import Activation, OrthogonalInit, OrthogonalMap, State, build_model, detach_state
from seqmem.tasks.spec import TaskSpec
from seqmem.views import LossFn, SequenceModelView

# Checkpoints hold the TaskSpec in their hyperparameters; allow it under torch.load(weights_only=True).
torch.serialization.add_safe_globals([TaskSpec])

ClipAlgorithm = Literal["norm", "value"]
#: Optimizer arguments that must be finite and >= 0. torch lets an infinite value of each through, and NaN for some.
NON_NEGATIVE_OPTIMIZER_ARGUMENTS = ("lr", "momentum", "weight_decay", "eps")


def check_optimizer(optimizer: OptimizerCallable) -> None:
    """Refuse optimizer arguments no run can train with, before the run starts.

    torch checks an optimizer's arguments only when it is built, in ``configure_optimizers`` — after the run
    folder, its config and its logs are written — and lets an infinite learning rate through. So the arguments
    are checked here, then the optimizer is built once on a dummy parameter for torch's own checks of the rest.

    Raises:
        ConfigError: ``model.optimizer.lr``, ``momentum``, ``weight_decay`` or ``eps`` not finite or negative (a
            learning rate of 0 is allowed: it freezes the model, whose diagnostics still run), naming the argument
            and the value; or torch's reason for another argument it refuses.
    """
    # The values jsonargparse binds (a partial): checked before torch, whose messages give no rule.
    check_optimizer_numbers(getattr(optimizer, "keywords", None) or {})
    try:
        built = optimizer([nn.Parameter(torch.zeros(1))])
    except ValueError as err:  # torch's own checks: "Invalid beta parameter at index 0: 1.5"
        raise ConfigError(f"model.optimizer: {shorten(' '.join(str(err).split()))}") from None
    except Exception:  # one that builds only on the run's device (fused=True, say): left to configure_optimizers
        return
    check_optimizer_numbers(built.defaults)  # the class's defaults, and a plain callable's own values


def check_optimizer_numbers(arguments: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless each of :data:`NON_NEGATIVE_OPTIMIZER_ARGUMENTS` in ``arguments`` is
    finite and >= 0."""
    for name in NON_NEGATIVE_OPTIMIZER_ARGUMENTS:
        value = arguments.get(name)
        if isinstance(value, Tensor) and value.numel() == 1:  # torch takes a tensor learning rate
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rule = " (0 freezes the model for its diagnostics)" if name == "lr" else ""
            require(
                math.isfinite(value) and value >= 0,
                f"model.optimizer.{name} must be finite and >= 0{rule}, got {value}",
            )


def restore_cuda_rng_state(states: Optional[list[Tensor]]) -> None:
    """Give every visible GPU its random state back from a checkpoint (None: written without CUDA).

    A checkpoint from a machine with another number of GPUs cannot be matched device to device: the
    generators keep their seeded state, with a warning that the resumed run is not bit-exact.
    """
    if states is None or not torch.cuda.is_available():
        return
    if len(states) != torch.cuda.device_count():
        rank_zero_warn(
            f"the checkpoint holds the random state of {len(states)} GPUs, this machine has "
            f"{torch.cuda.device_count()}: GPU random states are not restored, so dropout differs from the original run"
        )
        return
    torch.cuda.set_rng_state_all(states)


class SequenceModel(L.LightningModule):
    """A recurrent network trained on one task.

    Args:
        task: sizes, loss and baseline of the task — linked from ``--data`` automatically.
        cell: recurrent family: vanilla (tanh), orthogonal (W_h kept orthogonal), irnn (ReLU, W_h = I),
            gru, lstm — or the import path of a cell of one's own, ``package.module.Class``: a subclass of
            seqmem.models.RecurrentNet (the cell protocol), importable (installed, or on PYTHONPATH).
        hidden_size: units per recurrent layer.
        num_layers: stacked recurrent layers.
        dropout: dropout between recurrent layers.
        embedding_size: width of the token embedding (token tasks only: copy, agreement, lm).
        activation: orthogonal only — tanh (fused kernel) or modrelu (step-by-step path, slower).
        orthogonal_init: orthogonal only — initial W_h: henaff, cayley or random.
        orthogonal_map: orthogonal only — cayley (default, scoRNN) or matrix_exp (expRNN, slower backward).
        orthogonal_lr_scale: learning-rate multiplier for the skew-symmetric parameters behind an
            orthogonal W_h (expRNN trains them at 0.1× the others).
        irnn_scale: irnn only — W_h is initialised to this multiple of the identity.
        spectral_radius: vanilla only — rescale the initial W_h to this spectral radius (e.g. 1.5 to make
            gradients explode; None keeps PyTorch's init, radius ≈ 0.58).
        forget_bias: lstm only — initial forget-gate bias (default 1.0; keeps the cell's memory open).
        cell_options: a cell of one's own only — its further constructor arguments, e.g. ``{"alpha": 0.5}``.
        tbptt_steps: truncated BPTT: cut each batch into chunks of this many steps, carry the hidden state
            across chunk boundaries (detached, so the gradient stops there) and take one optimizer step per
            chunk; ``trainer.global_step`` then counts chunk updates. Readout "all" tasks (copy, lm) take
            the loss of each chunk on its own targets; readout "last" tasks (adding, agreement) have a loss
            only at the final step, so the steps before the last ``tbptt_steps`` only advance the state
            (no gradient) and each batch makes one update. None: full BPTT, one update per batch.
        gradient_clip_val: clip the gradient of every update at this value (None: no clipping). With full
            BPTT ``trainer.gradient_clip_val`` does the same; with ``tbptt_steps`` only this option
            works, because Lightning refuses Trainer clipping under manual optimisation. Diagnostics see
            the gradient before either clips.
        gradient_clip_algorithm: "norm" (rescale the total 2-norm) or "value" (clamp each entry).
        optimizer: optimizer class and arguments, e.g. ``--model.optimizer RMSprop --model.optimizer.lr 1e-3``;
            ``lr``, ``momentum``, ``weight_decay`` and ``eps`` finite and >= 0 (lr 0 freezes the model for its
            diagnostics).
        lr_scheduler: optional learning-rate scheduler class and arguments.

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
        activation: Optional[Activation] = None,
        orthogonal_init: Optional[OrthogonalInit] = None,
        orthogonal_map: Optional[OrthogonalMap] = None,
        orthogonal_lr_scale: float = 0.1,
        irnn_scale: Optional[float] = None,
        spectral_radius: Optional[float] = None,
        forget_bias: Optional[float] = None,
        cell_options: Optional[dict[str, Any]] = None,
        tbptt_steps: Optional[int] = None,
        gradient_clip_val: Optional[float] = None,
        gradient_clip_algorithm: ClipAlgorithm = "norm",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ):
        super().__init__()
        require(task is not None, "model.task is missing: it is linked from the data module (pass --data ...)")
        require(embedding_size >= 1, f"model.embedding_size must be >= 1, got {embedding_size}")
        require(orthogonal_lr_scale > 0, f"model.orthogonal_lr_scale must be > 0, got {orthogonal_lr_scale}")
        require(tbptt_steps is None or tbptt_steps >= 1, f"model.tbptt_steps must be >= 1 or null, got {tbptt_steps}")
        require(
            gradient_clip_val is None or gradient_clip_val > 0,
            f"model.gradient_clip_val must be > 0 or null, got {gradient_clip_val}",
        )
        require_choice(gradient_clip_algorithm, ClipAlgorithm, "model.gradient_clip_algorithm")
        check_optimizer(optimizer)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.task = task
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        # Truncated BPTT takes several optimizer steps per batch, which only manual optimisation allows.
        self.automatic_optimization = tbptt_steps is None
        self.embed = nn.Embedding(task.input_size, embedding_size) if task.input_tokens else nn.Identity()
        net_input = embedding_size if task.input_tokens else task.input_size
        options = dict(
            activation=activation,
            orthogonal_init=orthogonal_init,
            orthogonal_map=orthogonal_map,
            irnn_scale=irnn_scale,
            spectral_radius=spectral_radius,
            forget_bias=forget_bias,
        )
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

    def activation_bytes(self, batch_size: int, steps: int, value_bytes: int = 4) -> int:
        """The fewest bytes one forward pass over a batch of ``batch_size`` sequences of ``steps`` takes: the
        embedding's output, every recurrent layer's outputs and a readout "all" head's, ``value_bytes`` a value.
        Over a chunk only under truncated BPTT; backward keeps more (the gates), which this leaves out."""
        hp, task = self.hparams, self.task
        steps = min(steps, hp.tbptt_steps or steps)
        per_step = hp.hidden_size * hp.num_layers  # (B, T, H) per layer
        per_step += hp.embedding_size if task.input_tokens else 0  # (B, T, E)
        per_step += task.output_size if task.readout == "all" else 0  # (B, T, C)
        return batch_size * steps * per_step * value_bytes

    def forward_steps(self, x: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        """Step-by-step twin of :meth:`forward` for diagnostics: predictions and ``hiddens[l][t]``.

        ``hiddens[l][t]`` is layer l's h_t (B, H) as the graph consumed it, so ``autograd.grad`` of a
        loss with respect to those tensors is the full dL/dh_t of every layer and step (see
        RecurrentNet.forward_steps).
        """
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
        if self.hparams.tbptt_steps is not None:
            return self._truncated_step(batch)
        pred, state = self(batch["x"], self.carried.get("train"))
        self.carried.carry("train", state)
        loss = self.loss(pred, batch["y"])
        # Lightning writes a per-step value to the logger only on logging steps; handing it over on every step
        # costs about 0.5 ms (its result collection), a tenth of a small model's step, for nothing.
        if logging_step(self.trainer):
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def tbptt_chunks(self, x: Tensor, y: Tensor, state: Optional[State] = None) -> Iterator[tuple[Tensor, State]]:
        """Truncated BPTT over one batch: yields ``(loss, state)`` once per update, in time order.

        The consumer runs backward (and the optimizer step) on each loss before asking for the next;
        the state is then detached, so no gradient crosses a chunk boundary while the forward values
        flow on unchanged: the last state yielded equals the uncut forward's final state.

        Args:
            x: (B, T) token ids or (B, T, I) features.
            y: targets, (B,) for readout "last", (B, T) for readout "all".
            state: initial state (the carried state of a stateful task), zeros when None.
        """
        k, T = self.hparams.tbptt_steps, x.shape[1]
        if self.task.readout == "last":
            # The only loss is at step T: the steps before the last k advance the state without a
            # gradient (none could reach them), then one update backpropagates through the last k.
            cut = max(T - k, 0)
            if cut:
                with torch.no_grad():
                    _, state = self.net(self.embed(x[:, :cut]), state)  # state after step cut
            pred, state = self(x[:, cut:], state)  # (B[, C])
            yield self.loss(pred, y), state
            return
        for start in range(0, T, k):
            pred, state = self(x[:, start : start + k], state)  # (B, k, C)
            yield self.loss(pred, y[:, start : start + k]), state
            state = detach_state(state)

    def _truncated_step(self, batch: dict) -> None:
        optimizer = self.optimizers()
        state = self.carried.get("train")
        for loss, state_after in self.tbptt_chunks(batch["x"], batch["y"], state):
            optimizer.zero_grad()
            self.manual_backward(loss)
            self._log_update(loss)
            optimizer.step()  # runs on_before_optimizer_step: the callbacks' first, then our clipping
            state = state_after
        self.carried.carry("train", state)
        # Lightning writes self.log values once per batch at its batch counter; a "step" value makes
        # it use global_step (chunk updates) instead, so every logged curve shares one x-axis.
        self.log("step", float(self.global_step))

    def _log_update(self, loss: Tensor) -> None:
        """train/loss of one chunk update, written at its own global_step on the logging cadence."""
        self.log("train/loss", loss, prog_bar=True, logger=False)
        if logging_step(self.trainer):  # the cadence of Lightning's automatic loop and of the diagnostics
            for logger in self.loggers:
                logger.log_metrics({"train/loss": loss.item()}, step=self.global_step)

    @override
    def on_train_epoch_end(self) -> None:
        # Manual optimisation leaves schedulers to us; step per epoch, as the automatic loop does.
        if not self.automatic_optimization and (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()

    # ---- checkpoints --------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Exact resume: the carried lm state of every rank (a collective, so every rank calls it) and the
        # random states that dropout draws from, the CPU's and every visible GPU's. Lightning restores none.
        carried = self.carried.gather_train(self)
        if carried is not None:
            checkpoint["carried_train_state"] = carried
        checkpoint["cpu_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state_all()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied when training starts: the trainer (ranks, device) is known only then, and a model
        # loaded for analysis (load_from_checkpoint) must not reset the global random state.
        keys = ("cpu_rng_state", "cuda_rng_state", "carried_train_state")
        self._resume_from = {key: checkpoint.get(key) for key in keys}

    @override
    def on_train_start(self) -> None:
        checkpoint = self.__dict__.pop("_resume_from", None)
        if checkpoint is None:
            return
        if checkpoint["cpu_rng_state"] is not None:
            torch.set_rng_state(checkpoint["cpu_rng_state"])
        restore_cuda_rng_state(checkpoint["cuda_rng_state"])
        if checkpoint["carried_train_state"] is not None:
            trainer = self.trainer
            self.carried.restore_train(
                checkpoint["carried_train_state"], trainer.global_rank, trainer.world_size, self.device
            )

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
        """The gradient clipping in force: (clip value or None, "norm" or "value").

        Diagnostics read clipping from here rather than from the Trainer: ``model.gradient_clip_val``
        works in both modes; a plain ``Trainer(gradient_clip_val=...)`` (automatic mode only) is
        reported when the model sets none.
        """
        if self.hparams.gradient_clip_val is not None:
            return self.hparams.gradient_clip_val, self.hparams.gradient_clip_algorithm
        trainer = self.trainer
        return trainer.gradient_clip_val or None, trainer.gradient_clip_algorithm or "norm"

    def check_clipping(self, trainer: L.Trainer) -> None:
        """One clipper at a time, and the one that works in this mode.

        Lightning refuses Trainer clipping under manual optimisation (truncated BPTT), and Trainer and
        model clipping together would clip twice. Called in :meth:`on_fit_start`, so a Trainer built in
        Python is checked; the CLI calls it before fitting, ahead of Lightning's own refusal (a traceback).

        Raises:
            ConfigError: naming the conflicting options and the fix.
        """
        if not trainer.gradient_clip_val:
            return
        require(
            self.hparams.tbptt_steps is None,
            "trainer.gradient_clip_val does not work with model.tbptt_steps (Lightning cannot clip under manual "
            "optimisation): pass --trainer.gradient_clip_val null --model.gradient_clip_val "
            f"{trainer.gradient_clip_val}",
        )
        require(
            self.hparams.gradient_clip_val is None,
            "set trainer.gradient_clip_val or model.gradient_clip_val, not both (each would clip): pass "
            "--trainer.gradient_clip_val null to keep the model's",
        )

    @override
    def on_fit_start(self) -> None:
        self.check_clipping(self.trainer)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning runs the callbacks' hooks before this one, so diagnostics see the pre-clip gradient.
        if self.hparams.gradient_clip_val is not None:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.hparams.gradient_clip_val,
                gradient_clip_algorithm=self.hparams.gradient_clip_algorithm,
            )

    @override
    def configure_optimizers(self) -> Any:
        # The parameters behind an orthogonal W_h (its skew-symmetric A) get their own learning rate:
        # expRNN trains them 10x slower than the rest.
        orthogonal = self.net.orthogonal_parameters()
        rest = [p for p in self.parameters() if all(p is not q for q in orthogonal)]
        groups = [{"params": rest}] + ([{"params": orthogonal}] if orthogonal else [])
        optimizer = self.optimizer(groups)
        if orthogonal:
            optimizer.param_groups[1]["lr"] = optimizer.defaults["lr"] * self.hparams.orthogonal_lr_scale
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
