"""Gradient norms per layer and per parameter role, plus the total, before clipping — on any model.

Measured on the averaged, unscaled, pre-clip gradient (see :mod:`seqmem.callbacks.base`), identical on
every rank, so rank 0 alone logs them. ``grad_norm/total`` is the L2 norm of the gradients of every
trainable parameter — embedding, recurrent layers, head: the vector clipping sees — and the
per-parameter tags add up to it in quadrature. A tensor computed from parameters gets its own tag
outside the total: the orthogonal cell's ``W_h`` is dL/dW_h of the matrix the forward used, its
parameter ``A_skew`` is in the total; W_h's gradient is not all-reduced, so under DDP it is rank 0's.
"""

from typing import Any, Optional

import lightning as L
from torch import nn
from typing_extensions import override

from seqmem.callbacks.base import Diagnostic, Layout, Measurement, chart, escaped
from seqmem.measures import gradient_norms
from seqmem.views import ModuleView, view_of


def parameter_tags(pl_module: nn.Module) -> dict[str, nn.Parameter]:
    """``grad_norm/<tag>`` of every trainable parameter of any model, as :class:`GradientNorms` names them.

    Recurrent layers use their roles (``grad_norm/<path>/layer<l>/W_in``, W_h, b_in, b_h, ...; SequenceModel's net
    without the path), SequenceModel's embedding and head are groups of their own, and anything else keeps its
    module path, so that the per-tag norms always add up (in quadrature) to the total.
    """
    return view_of(pl_module).parameter_tags()


class GradientNorms(Diagnostic):
    """Logs ``grad_norm/total`` and ``grad_norm/<layer>/<param>`` every ``log_every_n_steps`` steps, on any model.

    Norms are computed only on those steps (one batched ``torch._foreach_norm``), so steps that log
    nothing pay nothing. Logged by global rank 0 only: after the all-reduce the gradients are the
    same on every rank.
    """

    plain_loop = "gradients"

    def __init__(self):
        super().__init__()
        self.scaler: Optional[Any] = None  # fp16 AMP's GradScaler, when the run has one

    @override
    def layout(self, view: ModuleView) -> Layout:
        charts = {"total": chart("grad_norm/total")}
        for prefix, recurrence in view.recurrences.items():
            for name in recurrence.layer_names():
                charts[f"{prefix}{name}"] = chart(rf"grad_norm/{escaped(prefix + name)}/.*")
        for title, tags in view.parameter_charts().items():
            if tags:
                charts[title] = chart(*map(escaped, tags))
        return {"grad_norm": charts}

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.scaler = getattr(trainer.precision_plugin, "scaler", None)

    @override
    def measure(self, step: int, batch: Any) -> Measurement:
        # Tensor hooks saw the derived gradients scaled by fp16 AMP's loss scale (the parameters' own are unscaled
        # by now); the scale is read on logging steps only.
        derived = self.view.derived_tags()
        if derived and self.scaler is not None:
            scale = self.scaler.get_scale()
            derived = {tag: grad / scale for tag, grad in derived.items()}
        return Measurement(gradient_norms(self.view.parameter_tags(), derived))
