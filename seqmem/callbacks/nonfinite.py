"""Non-finite guard: skip any update whose gradient holds a NaN or an inf, stop after too many in a row.

A NaN loss backpropagates into NaN gradients, so checking the gradient covers the loss too. The check
runs in ``on_before_optimizer_step``, on the gradient the diagnostics see (see :mod:`seqmem.callbacks.base`),
before clipping and the optimizer, in automatic and manual (truncated BPTT) optimisation alike.

Where the skip is decided (``decide_on``). The host decides by one read of the flag, then sets the gradients to
None, which every torch optimizer skips. On the CPU that is free — a CPU tensor's value is there when Python
reads it, nothing queued waits — so ``"auto"`` chooses it there. On an accelerator a read would make the host
wait for the device on every step, so there the decision stays on the device, a 0-dim flag never read by the
host on a step that logs nothing:

* a fused optimizer (``fused=True``: Adam, AdamW, SGD, Adagrad) takes the flag as its ``found_inf`` tensor,
  as under ``torch.amp.GradScaler``: its kernel leaves parameters, moments and step counts as they were;
* any other optimizer steps as usual, then the tensors the update touched (the parameters and their
  optimizer state, copied just before) are put back with ``torch.where`` where the flag is set;
* under ``16-mixed`` the GradScaler already skips a non-finite update itself (reading its own flag on the host
  unless the optimizer is fused), so the guard only counts.

The host decides on an accelerator too, for a parameter's first update, whose optimizer state does not exist yet
and so cannot be put back, and for an optimizer whose state holds values other than tensors. An optimizer that
keeps its step count on the CPU while the parameters are on a GPU (Adam without ``fused`` or ``capturable``)
costs one device-to-host copy of the flag per update; the guard warns once.

The counts (skipped updates, the current run of consecutive ones, the last finite norm) are device tensors
updated in place and read on logging steps — every ``max_consecutive`` steps when ``log_every_n_steps`` is
0 — which is also where training stops, after saving the last good weights as ``last.ckpt``. The run of
non-finite updates ends at the current step, so its first step and the last finite one follow from its length.

Cost: a few tiny kernels per update. The masked update also copies the parameters and their optimizer state
into buffers kept for the run (Adam: three times the parameters' memory); found_inf and the host's decision copy
nothing. On the CPU the masked update would cost about 5 % of a small model's step, which is why ``"auto"``
leaves it to accelerators (scripts/benchmarks/benchmark_guard.py measures both).
"""

import math
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from seqmem.callbacks.base import logging_step, step_total_norm
from seqmem.errors import require, require_choice
from seqmem.measures import params_with_grad

DecideOn = Literal["auto", "device", "host"]  # where NonFiniteGuard decides a skip


class NonFiniteError(RuntimeError):
    """Training stopped after too many consecutive non-finite updates; the message says where.

    Args:
        message: the one-line report.
        step: the optimizer step at which training stopped.
    """

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def stop_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where a stopped run keeps its last good weights: ``last.ckpt`` in the run's checkpoint folder
    (the ModelCheckpoint's, else ``<log_dir>/checkpoints``), where ``seqmem fit --ckpt_path last`` finds it."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None) or Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
    return Path(folder) / "last.ckpt"


class NonFiniteGuard(L.Callback):
    """Skip updates with a non-finite gradient; stop training after ``max_consecutive`` in a row.

    Skips are counted in TensorBoard as ``nonfinite/skipped`` (running total, at the update's
    ``global_step``, on logging steps). The stop is decided on logging steps (every ``max_consecutive``
    steps when ``log_every_n_steps`` is 0), so a run may skip more than ``max_consecutive`` updates before
    it stops; it writes ``last.ckpt`` with the last good weights, then raises :class:`NonFiniteError`.

    Args:
        max_consecutive: training stops once this many consecutive updates were non-finite (each is skipped).
        decide_on: where the skip is decided. ``"auto"``: on the host when the gradients are on the CPU (a read
            there waits for nothing), on the device otherwise; ``"device"``: on the device everywhere (what
            ``"auto"`` does on a GPU, kept testable on a CPU); ``"host"``: on the host everywhere (on a GPU one
            sync per update).
    """

    def __init__(self, max_consecutive: int = 10, decide_on: DecideOn = "auto"):
        require(max_consecutive >= 1, f"NonFiniteGuard max_consecutive must be >= 1, got {max_consecutive}")
        require_choice(decide_on, DecideOn, "NonFiniteGuard decide_on")
        self.max_consecutive = max_consecutive
        self.decide_on = decide_on
        # Device counters, updated in place: skipped updates, non-finite updates in a row up to the last one,
        # and the last finite gradient norm (NaN until there is one).
        self.skipped_count = torch.tensor(0)
        self.consecutive_count = torch.tensor(0)
        self.last_finite_norm = torch.tensor(float("nan"))
        self._stepped: set[int] = set()  # ids of the parameters with an optimizer state of their own
        self._saved: list[Tensor] = []  # copies of the tensors a masked update touches, reused every step
        self._saved_for: list[int] = []  # ids of the tensors they copy
        self._pending: Optional[tuple[list[Tensor], Tensor]] = None  # (live tensors, flag) of a masked update
        self._found_inf_set = False  # this guard, not a GradScaler, gave the optimizer its found_inf
        self._hooks: list[RemovableHandle] = []
        self._warned = False

    # ---- the per-update check, on the device ----------------------------------------------------
    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        params = params_with_grad(optimizer)
        if not params:
            return
        norm = step_total_norm(trainer, optimizer)  # () float32 — inf or nan if any entry is
        bad = norm.isfinite().logical_not()  # () bool, stays on the device
        self._count(bad, norm)
        self._arm_skip(trainer, optimizer, params, bad)
        if self._check_step(trainer):
            self._read_log_and_stop(trainer)

    def _count(self, bad: Tensor, norm: Tensor) -> None:
        """Update the device counters with this update's flag: four tiny in-place kernels, no sync."""
        if self.skipped_count.device != bad.device:  # first update, or counters restored from a checkpoint
            self.skipped_count, self.consecutive_count, self.last_finite_norm = (
                t.to(bad.device) for t in (self.skipped_count, self.consecutive_count, self.last_finite_norm)
            )
        self.skipped_count.add_(bad)
        self.consecutive_count.add_(1).mul_(bad)
        torch.where(bad, self.last_finite_norm, norm.detach(), out=self.last_finite_norm)

    def _arm_skip(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer, params: list, bad: Tensor) -> None:
        """Make the coming optimizer step a no-op where ``bad`` is set, by the cheapest exact means."""
        self._pending, self._found_inf_set = None, False
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # GradScaler skips non-finite updates itself
        on_host = self.decides_on_host(bad.device)
        state = [] if on_host else [optimizer.state.get(p, {}) for p in params]
        tensors_only = all(isinstance(v, Tensor) for s in state for v in s.values())
        if on_host or not tensors_only or any(id(p) not in self._stepped for p in params):
            if bool(bad):  # host decision: a free read, a first update, or state that cannot be masked
                for p in params:
                    p.grad = None
            return
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.found_inf = bad.float()  # read by the fused kernel; removed after the step
            self._found_inf_set = True
            return
        tensors = params + [v for s in state for v in s.values()]
        live = [t.detach() for t in tensors]  # in-place writes into a leaf that requires grad need a detached view
        if self._saved_for != (key := [id(t) for t in tensors]):  # the first masked update, or other tensors
            self._saved, self._saved_for = [torch.empty_like(t) for t in live], key
        torch._foreach_copy_(self._saved, live)
        self._pending = (live, bad)

    def decides_on_host(self, device: torch.device) -> bool:
        """Whether the skip of an update whose gradients are on ``device`` is decided by a host read."""
        return self.decide_on == "host" or (self.decide_on == "auto" and device.type == "cpu")

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer step post-hook: put back what a masked non-finite update changed."""
        self._stepped.update(id(p) for p in params_with_grad(optimizer))
        if self._found_inf_set:
            del optimizer.found_inf  # a later step must not reuse this flag
            self._found_inf_set = False
        if self._pending is None:
            return
        live, bad = self._pending
        self._pending = None
        flags = {bad.device: bad}
        for tensor, old in zip(live, self._saved, strict=True):
            if tensor.device not in flags:
                self._warn_host_state(optimizer, tensor.device)
                flags[tensor.device] = bad.to(tensor.device)  # a device-to-host copy: state kept on the CPU
            torch.where(flags[tensor.device], old, tensor, out=tensor)  # elementwise: writing in place is safe

    def _warn_host_state(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        if not self._warned:
            self._warned = True
            rank_zero_warn(
                f"NonFiniteGuard: {type(optimizer).__name__} keeps part of its state on {device}, away from the "
                "parameters, so every update costs one device-to-host copy of the skip flag; construct it with "
                "fused=True (or capturable=True) to keep the guard free of host syncs"
            )

    # ---- the host side: logging steps ---------------------------------------------------------------
    def _check_step(self, trainer: L.Trainer) -> bool:
        """Whether this step reads the counters: a logging step, or every max_consecutive steps without logging."""
        if trainer.log_every_n_steps:
            return logging_step(trainer)
        return (trainer.global_step + 1) % self.max_consecutive == 0

    def _read_log_and_stop(self, trainer: L.Trainer) -> None:
        skipped, consecutive = torch.stack([self.skipped_count, self.consecutive_count]).tolist()  # one host read
        if logging_step(trainer):
            for logger in trainer.loggers:
                logger.log_metrics({"nonfinite/skipped": float(skipped)}, step=trainer.global_step)
        if consecutive < self.max_consecutive:
            return
        path = stop_checkpoint_path(trainer)
        if trainer.is_global_zero and path.is_symlink():
            path.unlink()  # save_last="link": replace the link, not the checkpoint it points to
        trainer.save_checkpoint(path)  # the weights are the last good ones: every update since was skipped
        step = trainer.global_step
        norm = self.last_finite_norm.item()
        last = "none: no finite gradient" if math.isnan(norm) else f"{norm:.4g} at step {step - consecutive}"
        raise NonFiniteError(
            f"training stopped at step {step}: the {consecutive} updates of steps {step - consecutive + 1}-{step} "
            f"had a non-finite loss or gradient and were skipped (last finite gradient norm {last}); the last good "
            f"weights are saved in {path}. Lower the learning rate or set model.gradient_clip_val.",
            step=step,
        )

    # ---- hooks on the optimizers, and checkpoints ------------------------------------------------------
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stepped = set()  # a new fit: resumed optimizer state is checked again on its first update
        self._hooks = [optimizer.register_step_post_hook(self._after_step) for optimizer in trainer.optimizers]

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._pending, self._saved, self._saved_for = [], None, [], []

    @property
    def skipped(self) -> int:
        """Skipped updates so far (a host read)."""
        return int(self.skipped_count)

    @property
    def consecutive(self) -> int:
        """Non-finite updates in a row up to the last one (a host read)."""
        return int(self.consecutive_count)

    @override
    def state_dict(self) -> dict[str, Any]:
        norm = self.last_finite_norm.item()
        return {
            "skipped": self.skipped,
            "consecutive": self.consecutive,
            "last_finite_norm": None if math.isnan(norm) else norm,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_count = torch.tensor(state_dict["skipped"])
        self.consecutive_count = torch.tensor(state_dict["consecutive"])
        norm = state_dict["last_finite_norm"]
        self.last_finite_norm = torch.tensor(float("nan") if norm is None else norm)
