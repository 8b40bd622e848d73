"""Spectrum of the recurrence every N steps: spectral radius and extreme singular values of every W_h
(:mod:`seqmem.measures.spectral`). Eigenvalues synchronise with the host on CUDA, so this runs every N steps only.
Weights are identical on every rank: global rank 0 alone logs."""

from typing import Any

import torch
from typing_extensions import override

from seqmem.callbacks.base import Diagnostic, Layout, Measurement, chart, escaped
from seqmem.measures import orthogonality_error, spectral_summary
from seqmem.views import ModuleView


class RecurrentSpectrum(Diagnostic):
    """Logs ``spectral/<layer>[/<gate>]/{radius,sigma_max,sigma_min}`` every N optimizer steps for every recurrent
    layer of the model (``spectral/<module path>/layer<l>/...``; SequenceModel's net without the path), and
    ``spectral/<layer>/orthogonality_error`` for a layer whose W_h is kept orthogonal. An LSTM with ``proj_size``
    reports the square map W_hr W_h^gate (P × P).

    Args:
        every_n_steps: measure on optimizer steps 0, N, 2N, ... (weights before that step's update).
    """

    plain_loop = "probe"

    def __init__(self, every_n_steps: int = 100):
        super().__init__(every_n_steps)

    @override
    def check(self, view: ModuleView) -> None:
        view.require_recurrent(type(self).__name__)

    @override
    def layout(self, view: ModuleView) -> Layout:
        charts = {}
        for prefix, recurrence in view.recurrences.items():
            for name in recurrence.layer_names():
                layer = escaped(prefix + name)
                charts[f"{prefix}{name} spectral radius"] = chart(rf"spectral/{layer}/(\w+/)?radius")
                charts[f"{prefix}{name} singular values"] = chart(rf"spectral/{layer}/(\w+/)?sigma_(max|min)")
        if any(recurrence.orthogonal for recurrence in view.recurrences.values()):
            charts["distance from orthogonality"] = chart(r"spectral/(.+/)?layer\d+/orthogonality_error")
        return {"spectral": charts}

    @override
    def measure(self, step: int, batch: Any) -> Measurement:
        values = {}
        with torch.no_grad():
            for prefix, recurrence in self.view.recurrences.items():
                matrices = recurrence.recurrent_matrices()  # an orthogonal W_h is computed here, once
                for name, block in matrices.items():
                    for key, value in spectral_summary(block).items():
                        values[f"spectral/{prefix}{name}/{key}"] = value
                if recurrence.orthogonal:  # one gate block per layer, named like the layer
                    for name in recurrence.layer_names():
                        values[f"spectral/{prefix}{name}/orthogonality_error"] = orthogonality_error(matrices[name])
        return Measurement(values)
