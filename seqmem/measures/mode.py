"""The state a model is measured in: the deterministic network, with autograd on, in full precision."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def probe_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode (dropout off), autograd on, full precision; the training mode is restored after.

    Needed because ``on_before_optimizer_step`` runs inside ``optimizer.step``, where torch turns
    autograd off, and a probe must measure the deterministic network, not one dropout sample.
    """
    was_training = module.training
    module.eval()
    device_type = next(module.parameters()).device.type
    try:
        with torch.enable_grad(), torch.autocast(device_type, enabled=False):
            yield
    finally:
        module.train(was_training)
