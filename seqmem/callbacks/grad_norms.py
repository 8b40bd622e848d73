"""Gradient norms per layer and per parameter role, plus the total, before clipping.

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
from typing_extensions import override

from seqmem.callbacks.base import (
    Diagnosable,
    Diagnostic,
    Layout,
    chart,
    logging_step,
    tensorboard_writer,
    write_scalars,
)


def parameter_tags(pl_module: Diagnosable) -> dict[str, nn.Parameter]:
    """``grad_norm/<group>/<role>`` of every trainable parameter.

    Recurrent layers use their roles from ``net.layer_parameters`` (W_in, W_h, b_in, b_h, ...); the
    embedding and head are groups of their own; anything else keeps its module path, so that the
    per-tag norms always add up (in quadrature) to the total.
    """
    tags: dict[str, nn.Parameter] = {}
    net = pl_module.net
    for layer in range(net.num_layers):
        for role, param in net.layer_parameters(layer).items():
            tags[f"grad_norm/layer{layer}/{role}"] = param
    for group in ("embed", "head"):
        for name, param in getattr(pl_module, group).named_parameters():
            tags[f"grad_norm/{'embedding' if group == 'embed' else group}/{name}"] = param
    seen = {id(p) for p in tags.values()}
    for name, param in pl_module.named_parameters():
        if id(param) not in seen:
            tags[f"grad_norm/{name.replace('.', '/')}"] = param
    return {tag: p for tag, p in tags.items() if p.requires_grad}


def derived_tags(pl_module: Diagnosable) -> dict[str, Tensor]:
    """``grad_norm/layer<l>/<role>`` of the gradients of tensors computed from parameters (the orthogonal
    cell's W_h), from ``net.derived_gradients``."""
    net = pl_module.net
    return {
        f"grad_norm/layer{layer}/{role}": grad
        for layer in range(net.num_layers)
        for role, grad in net.derived_gradients(layer).items()
    }


def gradient_norms(params: dict[str, nn.Parameter], derived: Optional[dict[str, Tensor]] = None) -> dict[str, Tensor]:
    """L2 norm of each parameter's gradient (0 where it has none), ``grad_norm/total`` (of the parameters'
    gradients only) and the norm of each ``derived`` gradient, on device, in float32 whatever the precision."""
    derived = derived or {}
    grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in params.values()]
    norms = torch._foreach_norm(grads + list(derived.values()), dtype=torch.float32)  # one batched kernel
    values = dict(zip([*params, *derived], norms, strict=True))
    values["grad_norm/total"] = torch.linalg.vector_norm(torch.stack(norms[: len(params)]))
    return values


class GradientNorms(Diagnostic):
    """Logs ``grad_norm/total`` and ``grad_norm/<layer>/<param>`` every ``log_every_n_steps`` steps.

    Norms are computed only on those steps (one batched ``torch._foreach_norm``), so steps that log
    nothing pay nothing. Logged by global rank 0 only: after the all-reduce the gradients are the
    same on every rank.
    """

    @override
    def layout(self, pl_module: Diagnosable) -> Layout:
        charts = {"total": chart("grad_norm/total")}
        for layer in range(pl_module.net.num_layers):
            charts[f"layer{layer}"] = chart(rf"grad_norm/layer{layer}/.*")
        charts["embedding and head"] = chart(r"grad_norm/(embedding|head)/.*")
        return {"grad_norm": charts}

    @override
    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not logging_step(trainer):
            return
        derived = derived_tags(pl_module)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if derived and scaler is not None:
            # fp16 AMP: the hooks saw the loss-scaled gradient, the parameters' has been unscaled since.
            derived = {tag: grad / scaler.get_scale() for tag, grad in derived.items()}
        write_scalars(writer, gradient_norms(parameter_tags(pl_module), derived), trainer.global_step)
