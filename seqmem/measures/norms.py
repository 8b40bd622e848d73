"""Gradient norms: of each parameter, of groups of them, of everything an optimizer is about to apply.

Norms are computed on the device in float32 whatever the precision (float64 when any tensor is, as under 64-true),
never in half precision, whose sum of squares overflows at 65504; so a norm means the same in every precision.
"""

from typing import Optional

import torch
from torch import Tensor, nn


def norm_dtype(tensors: list[Tensor]) -> torch.dtype:
    """The dtype norms of ``tensors`` are computed in: float32, or float64 where any tensor is (64-true precision);
    never half precision, whose sum of squares overflows at 65504."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def total_norm(tensors: list[Tensor]) -> Tensor:
    """L2 norm of all the tensors together, in :func:`norm_dtype`, on the device: NaN or inf when any entry is."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, dtype=norm_dtype(tensors))))


def params_with_grad(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The parameters whose gradients the optimizer is about to apply — exactly the set Lightning clips."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def gradient_norms(params: dict[str, nn.Parameter], derived: Optional[dict[str, Tensor]] = None) -> dict[str, Tensor]:
    """L2 norm of each parameter's gradient (0 where it has none), ``grad_norm/total`` (of the parameters'
    gradients only) and the norm of each ``derived`` gradient, on device, in float32 whatever the precision (float64
    under 64-true).

    Args:
        params: {tag: parameter}, e.g. :meth:`seqmem.views.ModuleView.parameter_tags`.
        derived: {tag: gradient} of tensors computed from parameters (kept out of the total).

    Example:
        >>> w = nn.Parameter(torch.zeros(2))
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> {tag: norm.item() for tag, norm in gradient_norms({"w": w}).items()}
        {'w': 5.0, 'grad_norm/total': 5.0}
    """
    derived = derived or {}
    grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in params.values()]
    tensors = grads + list(derived.values())
    norms = torch._foreach_norm(tensors, dtype=norm_dtype(tensors))  # one batched kernel
    values = dict(zip([*params, *derived], norms, strict=True))
    values["grad_norm/total"] = torch.linalg.vector_norm(torch.stack(norms[: len(params)]))
    return values
