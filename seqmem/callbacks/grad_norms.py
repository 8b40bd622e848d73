"""Gradient norms per layer and per parameter role, plus the total, before clipping — on any model.

Measured on the averaged, unscaled, pre-clip gradient (see :mod:`seqmem.callbacks.base`), identical on
every rank, so rank 0 alone logs them. ``grad_norm/total`` is the L2 norm of the gradients of every
trainable parameter — embedding, recurrent layers, head: the vector clipping sees — and the
per-parameter tags add up to it in quadrature. A tensor computed from parameters gets its own tag
outside the total: the orthogonal cell's ``W_h`` is dL/dW_h of the matrix the forward used, its
parameter ``A_skew`` is in the total; W_h's gradient is not all-reduced, so under DDP it is rank 0's.
"""

from typing import Optional

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from seqmem.callbacks.base import (
    Diagnostic,
    Layout,
    chart,
    escaped,
    logging_step,
    norm_dtype,
    tensorboard_writer,
    write_scalars,
)
from seqmem.views import ModuleView, view_of


def parameter_tags(pl_module: nn.Module) -> dict[str, nn.Parameter]:
    """``grad_norm/<tag>`` of every trainable parameter of any model, as :class:`GradientNorms` names them.

    Recurrent layers use their roles (``grad_norm/<path>/layer<l>/W_in``, W_h, b_in, b_h, ...; SequenceModel's net
    without the path), SequenceModel's embedding and head are groups of their own, and anything else keeps its
    module path, so that the per-tag norms always add up (in quadrature) to the total.
    """
    return view_of(pl_module).parameter_tags()


def gradient_norms(params: dict[str, nn.Parameter], derived: Optional[dict[str, Tensor]] = None) -> dict[str, Tensor]:
    """L2 norm of each parameter's gradient (0 where it has none), ``grad_norm/total`` (of the parameters'
    gradients only) and the norm of each ``derived`` gradient, on device, in float32 whatever the precision (float64
    under 64-true)."""
    derived = derived or {}
    grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in params.values()]
    tensors = grads + list(derived.values())
    norms = torch._foreach_norm(tensors, dtype=norm_dtype(tensors))  # one batched kernel
    values = dict(zip([*params, *derived], norms, strict=True))
    values["grad_norm/total"] = torch.linalg.vector_norm(torch.stack(norms[: len(params)]))
    return values


class GradientNorms(Diagnostic):
    """Logs ``grad_norm/total`` and ``grad_norm/<layer>/<param>`` every ``log_every_n_steps`` steps, on any model.

    Norms are computed only on those steps (one batched ``torch._foreach_norm``), so steps that log
    nothing pay nothing. Logged by global rank 0 only: after the all-reduce the gradients are the
    same on every rank.
    """

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
    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not logging_step(trainer):
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.measure(writer, self.view, trainer.global_step, None if scaler is None else scaler.get_scale())

    def measure(self, writer: SummaryWriter, view: ModuleView, step: int, loss_scale: Optional[float] = None) -> None:
        """Write the norms of the gradients the parameters hold now (after backward, before clipping) at ``step``.

        Args:
            writer: where to write.
            view: the model's view.
            step: the x-axis value.
            loss_scale: fp16 AMP's scale, by which tensor hooks saw the derived gradients (the parameters' own
                are unscaled by then); None without it.
        """
        derived = view.derived_tags()
        if derived and loss_scale is not None:
            derived = {tag: grad / loss_scale for tag, grad in derived.items()}
        write_scalars(writer, gradient_norms(view.parameter_tags(), derived), step)
