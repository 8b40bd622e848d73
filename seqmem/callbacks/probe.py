"""The fixed batch a probe diagnostic measures on, kept from the first training batch for the whole run.

A probe runs extra forward/backward passes of the model, its recurrent layers on the step-by-step path, on a
fixed batch every N steps, without touching the training gradients; so that successive probes differ only by
the weights, the batch is the same each time, and it travels in checkpoints.
"""

from typing import Any, Optional

import torch

from seqmem.errors import require
from seqmem.views import ModuleView, batch_to


class ProbeBatch:
    """The probe batch of one diagnostic: SequenceModel keeps the first ``size`` rows of the first training batch
    this rank sees, any other model the whole batch (its layout is the model's own). Probes are rank-local: only
    global rank 0 keeps one.

    Args:
        size: rows of the first training batch kept (SequenceModel).
        who: the diagnostic's name, for the error message of a bad ``size``.
    """

    def __init__(self, size: int, who: str):
        require(size >= 1, f"probe_batch_size of {who} must be >= 1, got {size}")
        self.size = size
        self.batch: Optional[Any] = None

    def keep(self, view: ModuleView, batch: Any) -> None:
        """Keep the probe's rows of ``batch`` unless a batch is already kept."""
        if self.batch is None:
            self.batch = view.keep_probe(batch, self.size)

    def on_device(self, module: torch.nn.Module, batch: Optional[Any] = None) -> Optional[Any]:
        """``batch`` (by default the kept one) on the module's device; None while there is none."""
        batch = self.batch if batch is None else batch
        if batch is None:
            return None
        device = next(module.parameters()).device  # a probe restored from a checkpoint arrives on the CPU
        return batch_to(batch, lambda t: t.to(device))

    def state(self) -> Optional[Any]:
        """The kept batch on the CPU, for a checkpoint: a resumed run goes on probing the same batch (its first
        training batch would be another), so its curves continue instead of jumping."""
        return None if self.batch is None else batch_to(self.batch, lambda t: t.cpu())

    def load(self, state: Optional[Any]) -> None:
        """Take back the batch :meth:`state` gave."""
        self.batch = state


#: What ends the tags of a curve measured on a ragged probe batch (a PackedSequence of sequences of different
#: lengths), whose lags are counted from each sequence's own end.
RAGGED = "_ragged"


def check_curve_options(who: str, lags: tuple[int, ...], threshold: float, decades: float) -> None:
    """Refuse, in one line, the lags, threshold or colour scale of a diagnostic that summarises curves."""
    require(all(k >= 1 for k in lags), f"lags of {who} must all be >= 1, got {list(lags)}")
    require(0 < threshold < 1, f"threshold of {who} must be in (0, 1), got {threshold}")
    require(decades > 0, f"decades of {who} must be > 0, got {decades}")
