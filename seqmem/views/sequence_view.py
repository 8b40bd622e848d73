"""seqmem's own :class:`~seqmem.module.SequenceModel` as the diagnostics read it: one provider of the view.

Its recurrent network is the one recurrence, with no path in the tags (``grad_time/layer0/...``); its embedding
and head are parameter groups of their own (``grad_norm/embedding/...``, ``grad_norm/head/...``); the probe batch
is the first rows of a training batch; the probe loss is the final step's (``last``, the classic picture) or the
task's training loss (``task``); the clipping in force is the model's.
"""

from typing import Any, Literal, Optional

from torch import Tensor, nn

from seqmem.views.module_view import LossFn, ModuleView
from seqmem.views.recurrence import SeqmemNet

ProbeLoss = Literal["last", "task"]


def probe_loss(model: nn.Module, pred: Tensor, y: Tensor, loss: ProbeLoss) -> Tensor:
    """A SequenceModel's probe loss: "task" is the training loss; "last" the final-step loss L_T alone.

    For tasks read out at the last step only, the two coincide; for readout "all" tasks (copy, lm)
    "last" keeps only the loss at the final step, so every dL/dh_t with t < T comes through the
    recurrence — the classic vanishing-gradient picture.
    """
    if loss == "last" and model.task.readout == "all":
        pred, y = pred[:, -1], y[:, -1]  # (B, C), (B,)
    return model.loss(pred, y)


class SequenceModelView(ModuleView):
    """The view of a SequenceModel (its ``diagnostic_view()``).

    Args:
        model: the SequenceModel.
        loss_fn: the probe's loss, (model, batch) -> scalar; None: :func:`probe_loss`.
    """

    def __init__(self, model: nn.Module, loss_fn: Optional[LossFn] = None):
        self.module = model
        self.loss_fn = loss_fn
        self.recurrences = {"": SeqmemNet(model.net)}

    def other_parameter_tags(self, seen: set[int]) -> dict[str, nn.Parameter]:
        tags = {}
        for group, name in (("embed", "embedding"), ("head", "head")):
            for param_name, param in getattr(self.module, group).named_parameters():
                tags[f"grad_norm/{name}/{param_name}"] = param
        seen = seen | {id(p) for p in tags.values()}
        return tags | super().other_parameter_tags(seen)

    def parameter_charts(self) -> dict[str, list[str]]:
        tags = self.other_parameter_tags({id(p) for p in self.module.net.parameters()})
        return {"embedding and head": list(tags)}

    def clip_settings(self, trainer: Any) -> tuple[Optional[float], Optional[str]]:
        return self.module.clip_settings()

    def require_probe_loss(self, who: str, loss: Optional[str] = None) -> None:
        return None  # both losses are defined for every task

    def keep_probe(self, batch: dict, rows: int) -> dict:
        """The first ``rows`` sequences of the batch, cloned: the loader may reuse its buffers."""
        return {key: batch[key][:rows].clone() for key in ("x", "y")}

    def loss(self, batch: dict, which: Optional[str] = None) -> Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(self.module, batch)
        return probe_loss(self.module, self.forward(batch), batch["y"], which or "last")

    def forward(self, batch: dict) -> Tensor:
        """The predictions on the batch's inputs, from a zero state (as every probe starts)."""
        if self.loss_fn is not None:
            return self.loss_fn(self.module, batch)
        return self.module(batch["x"])[0]
