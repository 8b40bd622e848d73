"""The model's own gradient clipping (``model.gradient_clip_val``), and the one-clipper-at-a-time rule.

Lightning clips in its automatic loop only (``trainer.gradient_clip_val``) and exposes no pre-clip norm; a model
that clips in ``on_before_optimizer_step`` clips in both modes, truncated BPTT's manual optimisation included,
and Lightning runs the callbacks' hooks before the model's, so the diagnostics see the gradient before it is
clipped.
"""

from typing import Literal, Optional

import lightning as L
import torch

from seqmem.errors import require, require_choice

ClipAlgorithm = Literal["norm", "value"]


class GradientClipping:
    """Clip every update's gradient at ``value`` (None: this clipper is off).

    Args:
        value: ``model.gradient_clip_val``, > 0, or None.
        algorithm: ``model.gradient_clip_algorithm``: "norm" (rescale the total 2-norm) or "value" (clamp each
            entry).

    Raises:
        ConfigError: a value <= 0 or an unknown algorithm, naming the option.
    """

    def __init__(self, value: Optional[float], algorithm: ClipAlgorithm):
        require(value is None or value > 0, f"model.gradient_clip_val must be > 0 or null, got {value}")
        require_choice(algorithm, ClipAlgorithm, "model.gradient_clip_algorithm")
        self.value = value
        self.algorithm = algorithm

    def settings(self, module: L.LightningModule) -> tuple[Optional[float], Optional[str]]:
        """The gradient clipping in force on ``module``: (clip value or None, "norm" or "value").

        This clipper's where it is on (``module`` need not be attached to a trainer then); else a plain
        ``Trainer(gradient_clip_val=...)`` (automatic mode only).
        """
        if self.value is not None:
            return self.value, self.algorithm
        trainer = module.trainer
        return trainer.gradient_clip_val or None, trainer.gradient_clip_algorithm or "norm"

    def check(self, trainer: L.Trainer, truncated: bool) -> None:
        """One clipper at a time, and the one that works in this mode.

        Lightning refuses Trainer clipping under manual optimisation (``truncated``: truncated BPTT), and Trainer
        and model clipping together would clip twice.

        Raises:
            ConfigError: naming the conflicting options and the fix.
        """
        if not trainer.gradient_clip_val:
            return
        require(
            not truncated,
            "trainer.gradient_clip_val does not work with model.tbptt_steps (Lightning cannot clip under manual "
            "optimisation): pass --trainer.gradient_clip_val null --model.gradient_clip_val "
            f"{trainer.gradient_clip_val}",
        )
        require(
            self.value is None,
            "set trainer.gradient_clip_val or model.gradient_clip_val, not both (each would clip): pass "
            "--trainer.gradient_clip_val null to keep the model's",
        )

    def clip(self, module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        """Clip ``module``'s gradients before ``optimizer`` steps (its ``on_before_optimizer_step``)."""
        if self.value is not None:
            module.clip_gradients(optimizer, gradient_clip_val=self.value, gradient_clip_algorithm=self.algorithm)
