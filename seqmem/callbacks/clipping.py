"""Clipping events: how often, and how hard, gradient clipping acts.

Counted on *every* optimizer step, in device tensors (no host sync), and read only on logging steps.
Measured on the pre-clip gradient (see :mod:`seqmem.callbacks.base`), so ``clip/pre_norm`` is what
clipping saw. The clip value and algorithm come from the model's ``clip_settings()`` where it has one
(SequenceModel: ``model.gradient_clip_val`` or the Trainer's), else from the Trainer's ``gradient_clip_val``;
with no clipping nothing is logged. Works on any model. The gradients are identical on every rank: global
rank 0 alone counts and logs.
"""

from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

from seqmem.callbacks.base import Diagnostic, Layout, Measurement, chart, emit, logging_step, step_total_norm
from seqmem.measures import entries_over, params_with_grad, post_clip_norm
from seqmem.views import ModuleView


class ClippingEvents(Diagnostic):
    """Logs ``clip/...`` tags when the run clips gradients.

    Every clipping run: ``clip/pre_norm`` and ``clip/post_norm`` (total L2 norm before and after;
    for norm clipping post = min(pre, clip)), ``clip/clipped`` (1 if this step was clipped),
    ``clip/clipped_steps`` (cumulative count) and ``clip/clipped_fraction`` (of all steps so far).
    Value clipping also logs ``clip/entries_clipped`` (fraction of gradient entries clipped this
    step) and ``clip/entries_clipped_all`` (over all steps so far); a step counts as clipped when
    any entry was.
    """

    def __init__(self):
        super().__init__()
        self.steps = 0
        self.clipped_steps: Optional[Tensor] = None  # () on the gradients' device
        self.entries = 0
        self.clipped_entries: Optional[Tensor] = None  # ()

    @override
    def layout(self, view: ModuleView) -> Layout:
        return {
            "clip": {
                "norm before / after clipping": chart(r"clip/(pre|post)_norm"),
                "fraction of steps clipped": chart("clip/clipped_fraction", "clip/clipped"),
                "steps clipped so far": chart("clip/clipped_steps"),
                "fraction of entries clipped (value clipping)": chart(r"clip/entries_clipped(_all)?"),
            }
        }

    @override
    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        clip, algorithm = self.view.clip_settings(trainer)
        grads = [p.grad for p in params_with_grad(optimizer)]
        if clip is None or not (trainer.is_global_zero and trainer.loggers) or not grads:
            return
        pre = step_total_norm(trainer, optimizer)  # () float32 (float64 under 64-true) on device
        # Counters live on the gradients' device (a restored checkpoint brings them back on the CPU).
        self.clipped_steps = pre.new_zeros(()) if self.clipped_steps is None else self.clipped_steps.to(pre.device)
        self.clipped_entries = (
            pre.new_zeros(()) if self.clipped_entries is None else self.clipped_entries.to(pre.device)
        )
        if algorithm == "value":
            clipped_now = entries_over(grads, clip)  # ()
            numel = sum(g.numel() for g in grads)
            self.clipped_entries += clipped_now
            self.entries += numel
            step_clipped = clipped_now > 0
        else:
            step_clipped = pre > clip
        self.steps += 1
        self.clipped_steps += step_clipped
        if not logging_step(trainer):
            return
        values = {
            "clip/pre_norm": pre,
            "clip/post_norm": post_clip_norm(grads, pre, clip, algorithm),
            "clip/clipped": step_clipped,
            "clip/clipped_steps": self.clipped_steps,
            "clip/clipped_fraction": self.clipped_steps / self.steps,
        }
        if algorithm == "value":
            values["clip/entries_clipped"] = clipped_now / numel
            values["clip/entries_clipped_all"] = self.clipped_entries / self.entries
        emit(trainer.loggers, trainer.global_step, Measurement(values))

    @override
    def state_dict(self) -> dict[str, Any]:
        # Cumulative counts survive a resume from checkpoint (read at checkpoint time only).
        zero = torch.zeros(())
        return {
            "steps": self.steps,
            "clipped_steps": (self.clipped_steps if self.clipped_steps is not None else zero).item(),
            "entries": self.entries,
            "clipped_entries": (self.clipped_entries if self.clipped_entries is not None else zero).item(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = state_dict["steps"]
        self.entries = state_dict["entries"]
        self.clipped_steps = torch.tensor(float(state_dict["clipped_steps"]))
        self.clipped_entries = torch.tensor(float(state_dict["clipped_entries"]))
