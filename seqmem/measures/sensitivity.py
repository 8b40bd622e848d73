"""Forward sensitivity ‖∂h_T/∂x_ℓ‖ against the input position ℓ: does the state still remember x_ℓ?

The same product of Jacobians as the backward view, read the other way: ∂h_T/∂x_ℓ =
Π_{t=ℓ+1..T} J_t · ∂h_ℓ/∂x_ℓ. The Frobenius norm is estimated with random projections — for
v ~ N(0, I), E‖vᵀ ∂h_T/∂x_ℓ‖² = ‖∂h_T/∂x_ℓ‖_F² — so one backward pass gives every ℓ at once.
x_ℓ is the *embedded* input (the embedding output for token tasks, the features otherwise).
"""

from typing import Any

import torch
from torch import Tensor

from seqmem.measures.curves import from_end
from seqmem.views import ModuleView, SequenceModelView
from seqmem.views.torch_rnn import reversed_in_time


def sensitivity_norms(view: ModuleView, batch: Any, projections: int, seed: int = 0) -> dict[str, Tensor]:
    """Estimated ‖∂h_T/∂x_ℓ‖_F of each recurrence's final state (its top layer's, per direction) for every position ℓ
    of the input that recurrence stepped.

    One run of the model with every recurrence stepping a leaf copy of its input, then per final state one
    ``autograd.grad`` batched over the ``projections`` Gaussian v of every sample (``is_grads_batched``: the
    backward is vmapped, the forward not repeated) gives every vᵀ ∂h_T/∂x_ℓ; the root-mean-square over
    projections and samples is the estimate (the RMS over samples of the per-sample Frobenius norm). v comes from
    its own seeded generator, so probes do not consume the training random stream and see the same projections.

    Args:
        view: the model's view.
        batch: a batch as the model's loss takes it (the loss itself is not used).
        projections: random projections per sample.
        seed: seed of the projections.

    Returns:
        {tag prefix: (D, T) estimates}, one row per direction; a reverse direction's positions run in its own
        order (its final state, at position 0, is the last entry). For a ragged batch (a ``PackedSequence``) the
        positions are lined up by lag from each sequence's own end, position T−1−k at lag k (:func:`from_end_rms`).
    """
    _, runs = view.runs(batch, leaf_inputs=True, need_loss=False)
    curves = {}
    for prefix, (layers, inputs) in runs.items():
        rows = []
        top = view.recurrences[prefix].top_layers()
        for index in top:  # one per direction
            h_final = layers[index].states[-1][0]  # (B, H): the direction's last step
            generator = torch.Generator(device=h_final.device).manual_seed(seed)
            shape = (projections, *h_final.shape)
            v = torch.randn(shape, generator=generator, device=h_final.device, dtype=h_final.dtype)  # (P, B, H)
            # vᵀ ∂h_T/∂x_ℓ for every input: (P, B, T, I) of a module's call, (P, B, I) of a cell's.
            last = index == top[-1]  # the directions share the graph: keep it for the next one
            grads = torch.autograd.grad(
                h_final, inputs, grad_outputs=v, is_grads_batched=True, allow_unused=True, retain_graph=not last
            )
            lengths = layers[index].lengths
            if lengths is not None:  # one call of a module on a ragged batch
                rows.append(from_end_rms(grads[0], lengths, reverse=index != top[0]))
                continue
            squares = [
                torch.zeros(x.shape[1:-1], dtype=x.dtype, device=x.device).reshape(-1)  # never reached: 0
                if g is None
                else g.square().sum(dim=-1).mean(dim=(0, 1)).reshape(-1)  # (T,) or (1,)
                for g, x in zip(grads, inputs, strict=True)
            ]
            rows.append(torch.cat(squares).sqrt())  # (T,)
        if len(rows) > 1 and layers[top[1]].lengths is None:
            rows[1] = rows[1].flip(0)  # the reverse direction in its own order: its final state's position last
        curves[prefix] = torch.stack(rows)  # (D, T)
    return curves


def from_end_rms(grads: Tensor, lengths: Tensor, reverse: bool) -> Tensor:
    """The estimate of a ragged batch at each lag from the sequences' own ends: at lag k the root-mean-square over
    projections and over the sequences that reach lag k.

    Args:
        grads: (P, B, T, I) vᵀ ∂h_T/∂x_ℓ, positions ℓ in the sequence's order.
        lengths: (B,) each sequence's length.
        reverse: the final state is a reverse direction's, whose end is position 0.

    Returns:
        (T,) estimates, the last entry at lag 0.
    """
    squares = grads.square().sum(dim=-1).mean(dim=0)  # (B, T)
    squares = reversed_in_time(squares[..., None], lengths)[..., 0] if reverse else squares  # in stepping order
    aligned, reach = from_end(squares, lengths)  # (B, T), (T,)
    return (aligned.sum(dim=0) / reach).sqrt()  # (T,)


def input_sensitivity(model: Any, x: Tensor, projections: int, seed: int = 0) -> Tensor:
    """Estimated ‖∂h_T/∂x_ℓ‖_F (T,) of a SequenceModel's last layer's final state, for every position ℓ:
    :func:`sensitivity_norms` of its net. x_ℓ is the *embedded* input for token tasks, the features otherwise.

    Args:
        model: a SequenceModel.
        x: (B, T) token ids or (B, T, I) features.
        projections: random projections per sample.
        seed: seed of the projections.
    """
    return sensitivity_norms(SequenceModelView(model), {"x": x, "y": None}, projections, seed)[""][0]
