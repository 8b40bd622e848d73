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
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from seqmem.callbacks.base import Layout, chart, escaped, write_scalars
from seqmem.callbacks.probe import CurveProbe
from seqmem.errors import require_choice
from seqmem.views import LossFn, ModuleView, ProbeLoss, SequenceModelView


def hidden_grad_norms(view: ModuleView, batch: Any, loss: Optional[ProbeLoss] = None) -> dict[str, Tensor]:
    """‖dL/dh_t‖ of every layer and step of every recurrence of a model, the norm over the batch and hidden units.

    Args:
        view: the model's view (:func:`seqmem.views.view_of`).
        batch: a batch as the model's loss takes it.
        loss: SequenceModel's probe loss, "last" (the final-step loss L_T, the default) or "task"; other models
            differentiate their own loss (see :class:`~seqmem.views.ModuleView`).

    Returns:
        {tag prefix: (L, T) norms}, layers in the recurrence's order (``layer_names``), steps in each layer's own
        order; a recurrence the loss never ran is left out.
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
        start += count
    return curves


def timestep_grad_norms(model: Any, x: Tensor, y: Tensor, loss: ProbeLoss = "last") -> Tensor:
    """‖dL/dh_t‖ (L, T) of a SequenceModel on one batch: :func:`hidden_grad_norms` of its net.

    Args:
        model: a SequenceModel.
        x: (B, T) token ids or (B, T, I) features.
        y: targets as in a training batch.
        loss: "last" (final-step loss L_T) or "task" (the training loss).
    """
    return hidden_grad_norms(SequenceModelView(model), {"x": x, "y": y}, loss)[""]


class TimestepGradients(CurveProbe):
    """Logs ‖dL/dh_t‖ on the fixed probe batch every N steps, for every recurrent layer of the model:
    ``grad_time/<layer>/final`` (‖dL/dh_T‖), ``grad_time/<layer>/ratio_lag<k>`` (‖dL/dh_{T−k}‖ / ‖dL/dh_T‖),
    ``grad_time/<layer>/horizon`` (the gradient horizon), and per recurrence the figure ``grad_time/heatmap``
    (one row per layer, time step t left to right, colour log10(‖dL/dh_t‖ / max) from −``decades`` to 0, with
    axes, colour bar and the max in the title). ``<layer>`` is ``layer<l>`` for SequenceModel and
    ``<module path>/layer<l>[_reverse]`` for any other model; a reverse direction's steps run from the last
    position back, and a cell called in the model's loop counts each call as one step.

    Rank-local: rank 0 probes its own probe batch; nothing is reduced across ranks.

    Args:
        every_n_steps: probe on optimizer steps 0, N, 2N, ...
        probe_batch_size: rows of the first training batch kept as the probe batch (SequenceModel; any other
            model keeps the whole batch).
        loss: SequenceModel only: "last" — the final-step loss L_T (the classic figure; the default) — or
            "task", the training loss. Other models differentiate their own loss (``loss_fn``, their
            ``probe_loss``, or their training_step's).
        lags: lags k at which the ratio ‖dL/dh_{T−k}‖ / ‖dL/dh_T‖ is logged (those < T).
        threshold: the gradient horizon is the largest lag whose ratio is at least this.
        decades: orders of magnitude spanned by the heatmap's colour scale.
        loss_fn: the probe's loss, ``(module, batch) -> scalar``, in place of the module's own.
    """

    heatmap_labels = ("time step t", "layer", "‖dL/dh_t‖")

    def __init__(
        self,
        every_n_steps: int = 200,
        probe_batch_size: int = 32,
        loss: Optional[ProbeLoss] = None,
        lags: tuple[int, ...] = (1, 10, 30, 100),
        threshold: float = 1e-3,
        decades: float = 8.0,
        loss_fn: Optional[LossFn] = None,
    ):
        super().__init__(every_n_steps, probe_batch_size, lags, threshold, decades, loss_fn)
        if loss is not None:
            require_choice(loss, ProbeLoss, "loss of TimestepGradients")
        self.loss = loss
        self._unreached: set[str] = set()  # recurrences the probe loss did not run, warned about once

    @override
    def check(self, view: ModuleView) -> None:
        view.require_recurrent(type(self).__name__)
        view.require_probe_loss(type(self).__name__, self.loss)

    @override
    def layout(self, view: ModuleView) -> Layout:
        charts = {
            "gradient horizon": chart(r"grad_time/(.+/)?layer\d+(_reverse)?/horizon"),
            "final-step gradient": chart(r"grad_time/(.+/)?layer\d+(_reverse)?/final"),
        }
        for prefix, recurrence in view.recurrences.items():
            for name in recurrence.layer_names():
                charts[f"{prefix}{name} ratio at lags"] = chart(rf"grad_time/{escaped(prefix + name)}/ratio_lag\d+")
        return {"grad_time": charts}

    @override
    def probe_and_log(self, writer: SummaryWriter, view: ModuleView, batch: Any, step: int) -> None:
        curves = {prefix: norms.detach() for prefix, norms in hidden_grad_norms(view, batch, self.loss).items()}
        self._warn_unreached(view, curves)
        values = {}
        for prefix, norms in curves.items():  # (L, T)
            for name, curve in zip(view.recurrences[prefix].layer_names(), norms, strict=True):
                values.update(self.summarise(f"grad_time/{prefix}{name}", curve))
        write_scalars(writer, values, step)
        for prefix, norms in curves.items():
            writer.add_image(f"grad_time/{prefix}heatmap", self.heatmap(prefix, norms), step, dataformats="HWC")

    def _warn_unreached(self, view: ModuleView, curves: dict[str, Tensor]) -> None:
        for prefix in set(view.recurrences) - set(curves) - self._unreached:
            self._unreached.add(prefix)
            where = prefix.rstrip("/") or "the model"
            rank_zero_warn(f"{type(self).__name__}: the probe's loss never ran {where}; it is not probed")
