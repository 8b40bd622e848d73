"""Gradient norms per layer and per parameter role, plus the total, before clipping.

Measured on the averaged, unscaled, pre-clip gradient (see :mod:`seqmem.callbacks.base`), identical on
every rank, so rank 0 alone logs them.
"""

import lightning as L
import torch
from torch import Tensor, nn
from typing_extensions import override

from seqmem.callbacks.base import Diagnosable, Diagnostic, Layout, logging_step, tensorboard_writer, write_scalars


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


def gradient_norms(params: dict[str, nn.Parameter]) -> dict[str, Tensor]:
    """L2 norm of each parameter's gradient (0 where it has none) and ``grad_norm/total``, on device, in float32."""
    grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in params.values()]
    norms = torch._foreach_norm(grads, dtype=torch.float32)  # one batched kernel for all of them
    values = dict(zip(params, norms, strict=True))
    values["grad_norm/total"] = torch.linalg.vector_norm(torch.stack(norms))
    return values


class GradientNorms(Diagnostic):
    """Logs ``grad_norm/total`` and ``grad_norm/<layer>/<param>`` every ``log_every_n_steps`` steps.

    Norms are computed only on those steps (one batched ``torch._foreach_norm``), so steps that log
    nothing pay nothing. Logged by global rank 0 only: after the all-reduce the gradients are the
    same on every rank.
    """

    @override
    def layout(self, pl_module: Diagnosable) -> Layout:
        charts = {"total": ["Multiline", ["grad_norm/total"]]}
        for layer in range(pl_module.net.num_layers):
            charts[f"layer{layer}"] = ["Multiline", [rf"grad_norm/layer{layer}/.*"]]
        charts["embedding and head"] = ["Multiline", [r"grad_norm/(embedding|head)/.*"]]
        return {"grad_norm": charts}

    @override
    def on_before_optimizer_step(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not logging_step(trainer):
            return
        write_scalars(writer, gradient_norms(parameter_tags(pl_module)), trainer.global_step)
