"""Steps to solve: the first optimizer step at which a validation metric meets the task's criterion.

Each task states what "solved" means on its :class:`~seqmem.tasks.TaskSpec` (agreement and copy:
``val/acc >= 0.99``; adding: ``val/loss <= 0.01 * baseline``; lm: none). The callback checks it after
every validation and, the first time it holds, logs ``solved/steps_to_solve`` (the value and the x-axis
step are both ``trainer.global_step``, the optimizer steps taken so far) and can stop training there.

    seqmem fit --config seqmem/configs/agreement.yaml \\
        --trainer.callbacks+ '{"class_path": "seqmem.callbacks.StepsToSolve", "init_args": {"stop_when_solved": true}}'

Only validations measure it, so the resolution is ``trainer.val_check_interval``.
"""

from typing import Literal, Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from seqmem.errors import require

TAG = "solved/steps_to_solve"


class StepsToSolve(L.Callback):
    """Record the first step at which a validation metric meets a threshold; optionally stop there.

    With no arguments the task's own criterion is used (``TaskSpec.solved_metric`` / ``solved_threshold``
    / ``solved_mode``); a task without one (lm) records nothing unless ``metric`` is given. The solved
    step is kept in checkpoints, so a resumed run remembers it.

    Args:
        metric: validation metric to watch, e.g. ``val/acc`` or ``val/bpc``; None: the task's own.
        threshold: value the metric must reach; None: the task's own (with ``metric`` given, required).
        mode: ``max``: solved when metric >= threshold; ``min``: when metric <= threshold. None: the
            task's own (with ``metric`` given, required).
        stop_when_solved: stop training at the first validation that meets the criterion.
    """

    def __init__(
        self,
        metric: Optional[str] = None,
        threshold: Optional[float] = None,
        mode: Optional[Literal["max", "min"]] = None,
        stop_when_solved: bool = False,
    ):
        require(
            metric is None or (threshold is not None and mode is not None),
            f"StepsToSolve: with metric {metric!r} also set threshold and mode (max or min)",
        )
        require(mode in (None, "max", "min"), f"StepsToSolve mode must be max or min, got {mode!r}")
        self._given = (metric, threshold, mode)
        # Distinct keys let two instances (say two thresholds) keep their own state in one checkpoint. Made once:
        # Lightning reads a callback's state_key at every hook it calls (for its profiler's names).
        self._state_key = self._generate_state_key(metric=metric, threshold=threshold, mode=mode)
        self.metric: Optional[str] = None  # the criterion in force, resolved against the task in setup()
        self.threshold: Optional[float] = None
        self.mode: Optional[str] = None
        self.stop_when_solved = stop_when_solved
        self.solved_step: Optional[int] = None

    @property
    def state_key(self) -> str:
        return self._state_key

    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        metric, threshold, mode = self._given
        task = getattr(pl_module, "task", None)
        if metric is None:  # the task's metric and direction; an explicit threshold still wins
            metric = getattr(task, "solved_metric", None)
            mode = getattr(task, "solved_mode", None)
            threshold = threshold if threshold is not None else getattr(task, "solved_threshold", None)
        if metric is None:
            name = getattr(task, "name", type(pl_module).__name__)
            rank_zero_warn(
                f"StepsToSolve: task {name} has no default solved criterion, so nothing is recorded; "
                "pass metric, threshold and mode (e.g. val/bpc, 2.0, min)"
            )
        self.metric, self.threshold, self.mode = metric, threshold, mode

    def criterion(self) -> Optional[str]:
        """The criterion in force as text, e.g. ``val/acc >= 0.99``; None without one."""
        if self.metric is None:
            return None
        return f"{self.metric} {'>=' if self.mode == 'max' else '<='} {self.threshold:g}"

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # on_validation_end, not on_validation_epoch_end: the module logs its epoch metrics in its own
        # on_validation_epoch_end, which Lightning calls after the callbacks' hook of that name.
        if trainer.sanity_checking or self.metric is None:
            return
        if self.solved_step is None:
            metrics = trainer.callback_metrics
            require(
                self.metric in metrics,
                f"StepsToSolve metric {self.metric!r} was not logged; logged: {', '.join(sorted(metrics))}",
            )
            value = float(metrics[self.metric])
            if not (value >= self.threshold if self.mode == "max" else value <= self.threshold):
                return
            self.solved_step = trainer.global_step
            for logger in trainer.loggers:  # Lightning's loggers write on rank 0 only
                logger.log_metrics({TAG: float(self.solved_step)}, step=self.solved_step)
        if self.stop_when_solved:
            # Every rank sees the same synced metric, so every rank stops at the same step.
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"solved_step": self.solved_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.solved_step = state_dict["solved_step"]
