"""Per-timestep gradient norms ‖dL/dh_t‖ on a probe batch every N steps, summarised by their decay with the lag
(the measure: :func:`seqmem.measures.hidden_grad_norms`)."""

from typing import Any, Optional

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from seqmem.callbacks.base import Diagnostic, Layout, Measurement, chart, escaped
from seqmem.callbacks.probe import RAGGED, check_curve_options
from seqmem.errors import require_choice
from seqmem.measures import curve_summary, hidden_grad_norms
from seqmem.plots import NormHeatmap
from seqmem.views import LossFn, ModuleView, ProbeLoss


class TimestepGradients(Diagnostic):
    """Logs ‖dL/dh_t‖ on the fixed probe batch every N steps, for every recurrent layer of the model:
    ``grad_time/<layer>/final`` (‖dL/dh_T‖), ``grad_time/<layer>/ratio_lag<k>`` (‖dL/dh_{T−k}‖ / ‖dL/dh_T‖),
    ``grad_time/<layer>/horizon`` (the gradient horizon), and per recurrence the figure ``grad_time/heatmap``
    (one row per layer, time step t left to right, colour log10(‖dL/dh_t‖ / max) from −``decades`` to 0, with
    axes, colour bar and the max in the title). ``<layer>`` is ``layer<l>`` for SequenceModel and
    ``<module path>/layer<l>[_reverse]`` for any other model; a reverse direction's steps run from the last
    position back, and a cell called in the model's loop counts each call as one step. On a ragged probe batch
    (a ``PackedSequence`` of sequences of different lengths) lags are counted from each sequence's own end and
    the tags end in ``_ragged`` (``grad_time/<layer>/ratio_lag<k>_ragged``, ``grad_time/heatmap_ragged``, ...;
    :func:`seqmem.measures.from_end_norms`).

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

    plain_loop = "probe"

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
        super().__init__(every_n_steps, probe_batch_size, loss_fn)
        check_curve_options(type(self).__name__, lags, threshold, decades)
        if loss is not None:
            require_choice(loss, ProbeLoss, "loss of TimestepGradients")
        self.loss = loss
        self.lags = tuple(lags)
        self.threshold = threshold
        self.decades = decades
        self.heatmaps: dict[str, NormHeatmap] = {}  # one kept figure per recurrence (tag prefix)
        self._unreached: set[str] = set()  # recurrences the probe loss did not run, warned about once

    @override
    def check(self, view: ModuleView) -> None:
        view.require_recurrent(type(self).__name__)
        view.require_probe_loss(type(self).__name__, self.loss)

    @override
    def layout(self, view: ModuleView) -> Layout:
        ragged = f"({RAGGED})?"  # a ragged probe batch's tags share the charts
        charts = {
            "gradient horizon": chart(rf"grad_time/(.+/)?layer\d+(_reverse)?/horizon{ragged}"),
            "final-step gradient": chart(rf"grad_time/(.+/)?layer\d+(_reverse)?/final{ragged}"),
        }
        for prefix, recurrence in view.recurrences.items():
            for name in recurrence.layer_names():
                pattern = rf"grad_time/{escaped(prefix + name)}/ratio_lag\d+{ragged}"
                charts[f"{prefix}{name} ratio at lags"] = chart(pattern)
        return {"grad_time": charts}

    @override
    def measure(self, step: int, batch: Any) -> Measurement:
        curves = {prefix: norms.detach() for prefix, norms in hidden_grad_norms(self.view, batch, self.loss).items()}
        self._warn_unreached(self.view, curves)
        values, images = {}, {}
        for prefix, norms in curves.items():  # (L, T)
            ragged = RAGGED if prefix in self.view.ragged else ""
            for name, curve in zip(self.view.recurrences[prefix].layer_names(), norms, strict=True):
                summary = curve_summary(curve, self.lags, self.threshold)
                values.update({f"grad_time/{prefix}{name}/{key}{ragged}": value for key, value in summary.items()})
            xlabel = "steps before each sequence's end" if ragged else "time step t"
            heatmap = self.heatmaps.setdefault(prefix + ragged, NormHeatmap(self.decades, xlabel, "layer", "‖dL/dh_t‖"))
            images[f"grad_time/{prefix}heatmap{ragged}"] = heatmap.render(norms)
        return Measurement(values, images)

    def _warn_unreached(self, view: ModuleView, curves: dict[str, Tensor]) -> None:
        for prefix in set(view.recurrences) - set(curves) - self._unreached:
            self._unreached.add(prefix)
            where = prefix.rstrip("/") or "the model"
            rank_zero_warn(f"{type(self).__name__}: the probe's loss never ran {where}; it is not probed")
