"""The optimizer of :class:`~seqmem.module.SequenceModel`: its arguments checked before a run starts, and its
parameter groups (the orthogonal cell's skew-symmetric parameters at their own learning rate)."""

import math
from typing import Any, Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from seqmem.errors import ConfigError, require, shorten

#: Optimizer arguments that must be finite and >= 0. torch lets an infinite value of each through, and NaN for some.
NON_NEGATIVE_OPTIMIZER_ARGUMENTS = ("lr", "momentum", "weight_decay", "eps")


def check_optimizer(optimizer: OptimizerCallable) -> None:
    """Refuse optimizer arguments no run can train with, before the run starts.

    torch checks an optimizer's arguments only when it is built, in ``configure_optimizers`` — after the run
    folder, its config and its logs are written — and lets an infinite learning rate through. So the arguments
    are checked here, then the optimizer is built once on a dummy parameter for torch's own checks of the rest.

    Raises:
        ConfigError: ``model.optimizer.lr``, ``momentum``, ``weight_decay`` or ``eps`` not finite or negative (a
            learning rate of 0 is allowed: it freezes the model, whose diagnostics still run), naming the argument
            and the value; or torch's reason for another argument it refuses.

    Example:
        >>> from functools import partial
        >>> check_optimizer(partial(torch.optim.SGD, lr=-1.0))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        seqmem.errors.ConfigError: model.optimizer.lr must be finite and >= 0 (...), got -1.0
    """
    # The values jsonargparse binds (a partial): checked before torch, whose messages give no rule.
    check_optimizer_numbers(getattr(optimizer, "keywords", None) or {})
    try:
        built = optimizer([nn.Parameter(torch.zeros(1))])
    except ValueError as err:  # torch's own checks: "Invalid beta parameter at index 0: 1.5"
        raise ConfigError(f"model.optimizer: {shorten(' '.join(str(err).split()))}") from None
    except Exception:  # one that builds only on the run's device (fused=True, say): left to configure_optimizers
        return
    check_optimizer_numbers(built.defaults)  # the class's defaults, and a plain callable's own values


def check_optimizer_numbers(arguments: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless each of :data:`NON_NEGATIVE_OPTIMIZER_ARGUMENTS` in ``arguments`` is
    finite and >= 0."""
    for name in NON_NEGATIVE_OPTIMIZER_ARGUMENTS:
        value = arguments.get(name)
        if isinstance(value, Tensor) and value.numel() == 1:  # torch takes a tensor learning rate
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rule = " (0 freezes the model for its diagnostics)" if name == "lr" else ""
            require(
                math.isfinite(value) and value >= 0,
                f"model.optimizer.{name} must be finite and >= 0{rule}, got {value}",
            )


def optimizer_and_scheduler(
    parameters: list[nn.Parameter],
    orthogonal: list[nn.Parameter],
    optimizer: OptimizerCallable,
    lr_scheduler: Optional[LRSchedulerCallable],
    orthogonal_lr_scale: float,
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer over ``parameters``, with the ``orthogonal`` ones (the
    skew-symmetric parameters behind an orthogonal W_h) in a group of their own at ``orthogonal_lr_scale`` times
    the learning rate — expRNN trains them 10x slower than the rest — and the scheduler where there is one.

    Args:
        parameters: every parameter of the model, the orthogonal ones included.
        orthogonal: the parameters behind an orthogonal W_h (the cell's ``orthogonal_parameters()``), or none.
        optimizer: ``model.optimizer``.
        lr_scheduler: ``model.lr_scheduler``, or None.
        orthogonal_lr_scale: ``model.orthogonal_lr_scale``.
    """
    rest = [p for p in parameters if all(p is not q for q in orthogonal)]
    groups = [{"params": rest}] + ([{"params": orthogonal}] if orthogonal else [])
    built = optimizer(groups)
    if orthogonal:
        built.param_groups[1]["lr"] = built.defaults["lr"] * orthogonal_lr_scale
    if lr_scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": lr_scheduler(built)}
