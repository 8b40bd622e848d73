"""What gradient clipping does to a set of gradients: the entries it bounds and the norm it leaves.

Both stay on the device (no host sync), so a caller may count them on every step and read them only when it logs.
"""

import torch
from torch import Tensor

from seqmem.measures.norms import total_norm


def entries_over(grads: list[Tensor], clip: float) -> Tensor:
    """The number of gradient entries whose magnitude exceeds ``clip``: those value clipping changes (a () tensor).

    Example:
        >>> entries_over([torch.tensor([0.5, -2.0]), torch.tensor([[3.0]])], clip=1.0).item()
        2
    """
    return torch.stack([(g.abs() > clip).sum() for g in grads]).sum()  # ()


def post_clip_norm(grads: list[Tensor], pre: Tensor, clip: float, algorithm: str) -> Tensor:
    """The total norm of ``grads`` after clipping at ``clip``, given their norm ``pre`` before it.

    Args:
        grads: the gradients before clipping.
        pre: their total norm (:func:`~seqmem.measures.total_norm`), a () tensor.
        clip: the clip value.
        algorithm: ``"norm"`` (rescale to norm at most ``clip``: min(pre, clip)) or ``"value"`` (clamp each entry).

    Example:
        >>> grads = [torch.tensor([3.0, 4.0])]
        >>> post_clip_norm(grads, total_norm(grads), 1.0, "norm").item()  # the norm 5 rescaled to 1
        1.0
        >>> round(post_clip_norm(grads, total_norm(grads), 1.0, "value").item(), 6)  # (1, 1): √2
        1.414214
    """
    if algorithm == "value":
        return total_norm([g.clamp(-clip, clip) for g in grads])
    return pre.clamp(max=clip)
