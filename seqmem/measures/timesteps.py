"""Per-timestep gradient norms ‖dL/dh_t‖ for every step t and layer — the product-of-Jacobians law.

dL/dh_k = dL/dh_T · Π_{t=k+1..T} J_t: its norm shrinks or grows geometrically with the lag T − k.
A fused kernel never exposes it (the gradient on ``output[t]`` is only the readout's share), so the
probe runs the model with its recurrent layers on their step-by-step path (:mod:`seqmem.views`) and takes
*one* ``torch.autograd.grad`` with respect to
every h_t tensor it produced (non-leaf tensors: autograd returns the total derivative, recurrence
included): the full dL/dh_t of every layer and step, with the training gradients in ``.grad`` left
untouched (no ``.backward()``, and no parameter among the inputs, so no weight gradient is computed).
"""

from typing import Any, Optional

import torch
from torch import Tensor

from seqmem.measures.curves import from_end
from seqmem.views import ModuleView, ProbeLoss, SequenceModelView


def hidden_grad_norms(view: ModuleView, batch: Any, loss: Optional[ProbeLoss] = None) -> dict[str, Tensor]:
    """‖dL/dh_t‖ of every layer and step of every recurrence of a model, the norm over the batch and hidden units.

    Args:
        view: the model's view (:func:`seqmem.views.view_of`).
        batch: a batch as the model's loss takes it.
        loss: SequenceModel's probe loss, "last" (the final-step loss L_T, the default) or "task"; other models
            differentiate their own loss (see :class:`~seqmem.views.ModuleView`).

    Returns:
        {tag prefix: (L, T) norms}, layers in the recurrence's order (``layer_names``), steps in each layer's own
        order — for a ragged batch (a ``PackedSequence``) lined up by lag from each sequence's own end, position
        T−1−k at lag k (:func:`from_end_norms`); a recurrence the loss never ran is left out.
    """
    value, runs = view.runs(batch, loss)
    hiddens = {prefix: [layer.hiddens for layer in layers] for prefix, (layers, _) in runs.items()}
    steps = [h for layers in hiddens.values() for hs in layers for h in hs]  # every h_t, (B, H) each
    grads = torch.autograd.grad(value, steps, allow_unused=True)  # no parameter among the inputs: .grad untouched
    grads = [torch.zeros_like(h) if g is None else g for g, h in zip(grads, steps, strict=True)]
    # One batched kernel for all the norms rather than one reduction per step.
    norms = torch.stack(torch._foreach_norm(grads))  # (ΣL*T,)
    curves, start = {}, 0
    for prefix, layers in hiddens.items():
        count = sum(len(hs) for hs in layers)
        curves[prefix] = norms[start : start + count].view(len(layers), -1)  # (L, T)
        lengths = runs[prefix][0][0].lengths
        if lengths is not None:
            layer_grads = torch.stack(grads[start : start + count]).view(len(layers), -1, *grads[start].shape)
            curves[prefix] = torch.stack([from_end_norms(g, lengths) for g in layer_grads])  # (L, T)
        start += count
    return curves


def from_end_norms(grads: Tensor, lengths: Tensor) -> Tensor:
    """‖dL/dh‖ at each lag from the sequences' own ends of a ragged batch: at lag k, the norm over batch and hidden
    units of the sequences that reach lag k, scaled to the whole batch, √(B/n_k · Σ_{b reaching k} ‖dL/dh_b‖²) —
    the plain norm over the batch when every sequence has the same length.

    Args:
        grads: (T, B, H) dL/dh_t of one layer, in its own step order.
        lengths: (B,) each sequence's number of steps.

    Returns:
        (T,) norms, the last entry at lag 0.
    """
    squares, reach = from_end(grads.square().sum(dim=-1).T, lengths)  # (B, T), (T,)
    return (squares.sum(dim=0) * grads.shape[1] / reach).sqrt()  # (T,)


def timestep_grad_norms(model: Any, x: Tensor, y: Tensor, loss: ProbeLoss = "last") -> Tensor:
    """‖dL/dh_t‖ (L, T) of a SequenceModel on one batch: :func:`hidden_grad_norms` of its net.

    Args:
        model: a SequenceModel.
        x: (B, T) token ids or (B, T, I) features.
        y: targets as in a training batch.
        loss: "last" (final-step loss L_T) or "task" (the training loss).
    """
    return hidden_grad_norms(SequenceModelView(model), {"x": x, "y": y}, loss)[""]
