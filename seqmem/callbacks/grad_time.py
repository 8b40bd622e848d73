"""Per-timestep gradient norms ‖dL/dh_t‖ for every step t and layer — the product-of-Jacobians law.

dL/dh_k = dL/dh_T · Π_{t=k+1..T} J_t: its norm shrinks or grows geometrically with the lag T − k.
A fused kernel never exposes it (the gradient on ``output[t]`` is only the readout's share), so the
probe runs the model's step-by-step path and takes *one* ``torch.autograd.grad`` with respect to
every h_t tensor it produced (non-leaf tensors: autograd returns the total derivative, recurrence
included): the full dL/dh_t of every layer and step, with the training gradients in ``.grad`` left
untouched (no ``.backward()``, and no parameter among the inputs, so no weight gradient is computed).
"""

from typing import Literal

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from seqmem.callbacks.base import Diagnosable, Layout, chart, write_scalars
from seqmem.callbacks.probe import CurveProbe, NormHeatmap
from seqmem.errors import require_choice

ProbeLoss = Literal["last", "task"]


def probe_loss(pl_module: Diagnosable, pred: Tensor, y: Tensor, loss: ProbeLoss) -> Tensor:
    """The probe's loss: "task" is the training loss; "last" the final-step loss L_T alone.

    For tasks read out at the last step only, the two coincide; for readout "all" tasks (copy, lm)
    "last" keeps only the loss at the final step, so every dL/dh_t with t < T comes through the
    recurrence — the classic vanishing-gradient picture.
    """
    if loss == "last" and pl_module.task.readout == "all":
        pred, y = pred[:, -1], y[:, -1]  # (B, C), (B,)
    return pl_module.loss(pred, y)


def timestep_grad_norms(pl_module: Diagnosable, x: Tensor, y: Tensor, loss: ProbeLoss = "last") -> Tensor:
    """‖dL/dh_t‖ of every layer and step, the norm taken over the batch and hidden units.

    Args:
        pl_module: a SequenceModel (``forward_steps``, ``loss``, ``task``).
        x: (B, T) token ids or (B, T, I) features.
        y: targets as in a training batch.
        loss: "last" (final-step loss L_T) or "task" (the training loss).

    Returns:
        (L, T) norms.
    """
    pred, hiddens = pl_module.forward_steps(x)
    steps = [h for layer in hiddens for h in layer]  # L*T tensors (B, H), layer-major
    grads = torch.autograd.grad(probe_loss(pl_module, pred, y, loss), steps)  # L*T × (B, H)
    # One batched kernel for all L*T norms rather than L*T separate reductions.
    return torch.stack(torch._foreach_norm(grads)).view(len(hiddens), -1)  # (L, T)


class TimestepGradients(CurveProbe):
    """Logs ‖dL/dh_t‖ on the fixed probe batch every N steps: ``grad_time/heatmap`` (a figure: one row
    per layer, time step t left to right, colour log10(‖dL/dh_t‖ / max) from −``decades`` to 0, with axes,
    colour bar and the max in the title),
    ``grad_time/layer<l>/final`` (‖dL/dh_T‖), ``grad_time/layer<l>/ratio_lag<k>``
    (‖dL/dh_{T−k}‖ / ‖dL/dh_T‖) and ``grad_time/layer<l>/horizon`` (the gradient horizon).

    Rank-local: rank 0 probes its own probe batch; nothing is reduced across ranks.

    Args:
        every_n_steps: probe on optimizer steps 0, N, 2N, ...
        probe_batch_size: rows of the first training batch kept as the probe batch.
        loss: "last" — the final-step loss L_T (the classic figure) — or "task", the training loss.
        lags: lags k at which the ratio ‖dL/dh_{T−k}‖ / ‖dL/dh_T‖ is logged (those < T).
        threshold: the gradient horizon is the largest lag whose ratio is at least this.
        decades: orders of magnitude spanned by the heatmap's colour scale.
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        probe_batch_size: int = 32,
        loss: ProbeLoss = "last",
        lags: tuple[int, ...] = (1, 10, 30, 100),
        threshold: float = 1e-3,
        decades: float = 8.0,
    ):
        super().__init__(every_n_steps, probe_batch_size, lags, threshold, decades)
        require_choice(loss, ProbeLoss, "loss of TimestepGradients")
        self.loss = loss
        self.heatmap = NormHeatmap(decades, xlabel="time step t", ylabel="layer", quantity="‖dL/dh_t‖")

    @override
    def layout(self, pl_module: Diagnosable) -> Layout:
        charts = {
            "gradient horizon": chart(r"grad_time/layer\d+/horizon"),
            "final-step gradient": chart(r"grad_time/layer\d+/final"),
        }
        for layer in range(pl_module.net.num_layers):
            charts[f"layer{layer} ratio at lags"] = chart(rf"grad_time/layer{layer}/ratio_lag\d+")
        return {"grad_time": charts}

    @override
    def probe_and_log(self, writer: SummaryWriter, pl_module: Diagnosable, x: Tensor, y: Tensor, step: int) -> None:
        norms = timestep_grad_norms(pl_module, x, y, self.loss).detach()  # (L, T)
        values = {}
        for layer, curve in enumerate(norms):
            values.update(self.summarise(f"grad_time/layer{layer}", curve))
        write_scalars(writer, values, step)
        writer.add_image("grad_time/heatmap", self.heatmap.render(norms), step, dataformats="HWC")
