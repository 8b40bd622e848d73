"""Forward sensitivity ‖∂h_T/∂x_ℓ‖ against the input position ℓ on a probe batch every N steps, summarised by its
decay with the lag (the measure: :func:`seqmem.measures.sensitivity_norms`)."""

from typing import Any, Optional

from typing_extensions import override

from seqmem.callbacks.base import Diagnostic, Layout, Measurement, chart
from seqmem.callbacks.probe import RAGGED, check_curve_options
from seqmem.errors import require
from seqmem.measures import curve_summary, sensitivity_norms
from seqmem.plots import NormHeatmap
from seqmem.views import LossFn, ModuleView


class InputSensitivity(Diagnostic):
    """Logs ‖∂h_T/∂x_ℓ‖ on the fixed probe batch every N steps, for the final state of every recurrence (its top
    layer): ``sensitivity/final`` (ℓ = T), ``sensitivity/ratio_lag<k>`` (ℓ = T − k, relative to ℓ = T),
    ``sensitivity/horizon`` (largest lag whose ratio is at least ``threshold``) and the figure
    ``sensitivity/heatmap`` (input position ℓ left to right, colour log10(norm / max) from −``decades`` to 0,
    with axes, colour bar and the max in the title). For any model but SequenceModel the tags carry the
    recurrence's module path (``sensitivity/<path>/...``), and a bidirectional one's reverse direction writes
    ``sensitivity/<path>/reverse/...`` (its lags counted from position 0). On a ragged probe batch (a
    ``PackedSequence`` of sequences of different lengths) lags are counted from each sequence's own end and the
    tags end in ``_ragged`` (``sensitivity/<path>/horizon_ragged``, ...; :func:`seqmem.measures.from_end_rms`).

    Rank-local: rank 0 probes its own probe batch; nothing is reduced across ranks.

    Args:
        every_n_steps: probe on optimizer steps 0, N, 2N, ...
        probe_batch_size: rows of the first training batch kept as the probe batch (SequenceModel; any other
            model keeps the whole batch).
        projections: random projections per sample of the Frobenius-norm estimate.
        lags: lags k = T − ℓ at which the ratio is logged (those < T).
        threshold: the horizon is the largest lag whose ratio is at least this.
        decades: orders of magnitude spanned by the heatmap's colour scale.
        loss_fn: what the probe runs to reach the recurrent layers, ``(module, batch) -> scalar`` (its value is
            not used), in place of the module's own loss.
    """

    plain_loop = "probe"

    def __init__(
        self,
        every_n_steps: int = 200,
        probe_batch_size: int = 32,
        projections: int = 2,
        lags: tuple[int, ...] = (1, 10, 30, 100),
        threshold: float = 1e-3,
        decades: float = 8.0,
        loss_fn: Optional[LossFn] = None,
    ):
        super().__init__(every_n_steps, probe_batch_size, loss_fn)
        check_curve_options(type(self).__name__, lags, threshold, decades)
        require(projections >= 1, f"projections of InputSensitivity must be >= 1, got {projections}")
        self.projections = projections
        self.lags = tuple(lags)
        self.threshold = threshold
        self.decades = decades
        self.heatmaps: dict[str, NormHeatmap] = {}  # one kept figure per recurrence (tag prefix)

    @override
    def check(self, view: ModuleView) -> None:
        view.require_recurrent(type(self).__name__)
        view.require_probe_loss(type(self).__name__)

    @override
    def layout(self, view: ModuleView) -> Layout:
        ragged = f"({RAGGED})?"  # a ragged probe batch's tags share the charts
        return {
            "sensitivity": {
                "ratio at lags": chart(rf"sensitivity/(.+/)?ratio_lag\d+{ragged}"),
                "horizon": chart(rf"sensitivity/(.+/)?horizon{ragged}"),
                "final input": chart(rf"sensitivity/(.+/)?final{ragged}"),
            }
        }

    @override
    def measure(self, step: int, batch: Any) -> Measurement:
        norms = sensitivity_norms(self.view, batch, self.projections)
        curves = {prefix: rows.detach() for prefix, rows in norms.items()}
        values, images = {}, {}
        for prefix, rows in curves.items():  # (D, T)
            ragged = RAGGED if prefix in self.view.ragged else ""
            for direction, curve in zip(("", "reverse/")[: len(rows)], rows, strict=True):
                summary = curve_summary(curve, self.lags, self.threshold)
                tag = f"sensitivity/{prefix}{direction}".rstrip("/")
                values.update({f"{tag}/{key}{ragged}": value for key, value in summary.items()})
            xlabel = "inputs before each sequence's end" if ragged else "input position ℓ"
            heatmap = self.heatmaps.setdefault(prefix + ragged, NormHeatmap(self.decades, xlabel, "", "‖∂h_T/∂x_ℓ‖"))
            images[f"sensitivity/{prefix}heatmap{ragged}"] = heatmap.render(rows)
        return Measurement(values, images)
