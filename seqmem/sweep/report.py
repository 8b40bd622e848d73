"""Live progress of a trial for Ray Tune: the step and the validation metrics after every validation."""

import lightning as L
from ray import tune


class ReportToTune(L.Callback):
    """Report ``step`` (``trainer.global_step``) and every ``val/*`` metric to Ray Tune after each validation.

    Only for runs inside a Ray Tune trial (``seqmem sweep`` adds it to every trial); the sweep's progress
    lines show the latest report of each running trial.
    """

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
        tune.report({"step": trainer.global_step, **metrics})
