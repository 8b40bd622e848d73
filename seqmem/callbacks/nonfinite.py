"""Non-finite guard: skip any update whose gradient holds a NaN or an inf, stop after too many in a row.

A NaN loss backpropagates into NaN gradients, so checking the gradient covers the loss too. The check
runs in ``on_before_optimizer_step``, on the gradient the diagnostics see (see :mod:`seqmem.callbacks.base`),
before clipping and the optimizer, in automatic and manual (truncated BPTT) optimisation alike. A skipped
update sets every gradient to None: torch optimizers leave a parameter with no gradient untouched
(no step, no moment update, no step count), so a skipped update leaves no trace in the weights.

Cost: one host sync per update (reading the finite flag), the same one torch.amp.GradScaler pays —
optimizers decide in Python whether a parameter steps, so the decision cannot stay on the device.
"""

from typing import Optional

import lightning as L
import torch
from typing_extensions import override

from seqmem.callbacks.base import logging_step, params_with_grad
from seqmem.errors import require


class NonFiniteError(RuntimeError):
    """Training stopped after too many consecutive non-finite updates; the message says where."""


class NonFiniteGuard(L.Callback):
    """Skip updates with a non-finite gradient; stop training after ``max_consecutive`` in a row.

    Skips are counted in TensorBoard as ``nonfinite/skipped`` (running total, at the update's
    ``global_step``). The stop is an exception, so Lightning saves no further checkpoint: the last
    good one stays as it was.

    Args:
        max_consecutive: training stops at this many consecutive non-finite updates (each is skipped).
    """

    def __init__(self, max_consecutive: int = 10):
        require(max_consecutive >= 1, f"NonFiniteGuard max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0  # total skipped updates
        self.consecutive = 0
        self.last_finite_norm: Optional[torch.Tensor] = None  # () on the device; read only to report
        self.last_finite_step: Optional[int] = None

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        params = params_with_grad(optimizer)
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])  # () — inf or nan if any entry is
        step = trainer.global_step
        if bool(norm.isfinite()):  # the one host sync per update
            self.consecutive = 0
            self.last_finite_norm, self.last_finite_step = norm.detach(), step
            if logging_step(trainer):
                self._log(trainer, step)
            return
        for p in params:
            p.grad = None
        self.skipped += 1
        self.consecutive += 1
        if logging_step(trainer):
            self._log(trainer, step)
        if self.consecutive >= self.max_consecutive:
            last = (
                f"{self.last_finite_norm.item():.4g} at step {self.last_finite_step}"
                if self.last_finite_norm is not None
                else "none: no finite gradient yet"
            )
            raise NonFiniteError(
                f"training stopped at step {step}: {self.consecutive} consecutive updates had a non-finite loss "
                f"or gradient and were skipped (last finite gradient norm {last}); the last checkpoint is left as "
                "it was. Lower the learning rate or set model.gradient_clip_val."
            )

    def _log(self, trainer: L.Trainer, step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({"nonfinite/skipped": float(self.skipped)}, step=step)

    @override
    def state_dict(self) -> dict:
        norm = None if self.last_finite_norm is None else self.last_finite_norm.item()
        return {
            "skipped": self.skipped,
            "consecutive": self.consecutive,
            "last_finite_norm": norm,
            "last_finite_step": self.last_finite_step,
        }

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped, self.consecutive = state_dict["skipped"], state_dict["consecutive"]
        norm = state_dict["last_finite_norm"]
        self.last_finite_norm = None if norm is None else torch.tensor(norm)
        self.last_finite_step = state_dict["last_finite_step"]
