"""Spectrum of the recurrence: spectral radius and extreme singular values of every W_h.

ρ(W_h) governs the linearised dynamics h_t ≈ W_h h_{t-1} (ρ < 1 forgets geometrically, ρ > 1 can
explode); σ_max / σ_min bound how much one step of the recurrence can stretch or shrink a gradient.
GRU and LSTM are reported per gate block. For the orthogonal cell, ‖W_hᵀW_h − I‖_F shows how far
numerical drift has taken it from orthogonality. Eigenvalues synchronise with the host on CUDA, so
this runs every N steps only. Weights are identical on every rank: global rank 0 alone logs.
"""

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from seqmem.callbacks.base import Layout, PeriodicDiagnostic, chart, escaped, write_scalars
from seqmem.views import ModuleView


def spectral_summary(matrix: Tensor) -> dict[str, Tensor]:
    """Spectral radius (the largest eigenvalue modulus) and largest / smallest singular value of a square matrix."""
    w = matrix.detach().float()  # (H, H)
    singular = torch.linalg.svdvals(w)  # (H,) descending
    return {"radius": torch.linalg.eigvals(w).abs().amax(), "sigma_max": singular[0], "sigma_min": singular[-1]}


def orthogonality_error(matrix: Tensor) -> Tensor:
    """‖WᵀW − I‖_F: zero exactly when W is orthogonal."""
    w = matrix.detach().float()  # (H, H)
    return torch.linalg.matrix_norm(w.T @ w - torch.eye(w.shape[0], device=w.device))


class RecurrentSpectrum(PeriodicDiagnostic):
    """Logs ``spectral/<layer>[/<gate>]/{radius,sigma_max,sigma_min}`` every N optimizer steps for every recurrent
    layer of the model (``spectral/<module path>/layer<l>/...``; SequenceModel's net without the path), and
    ``spectral/<layer>/orthogonality_error`` for a layer whose W_h is kept orthogonal. An LSTM with ``proj_size``
    reports the square map W_hr W_h^gate (P × P).

    Args:
        every_n_steps: measure on optimizer steps 0, N, 2N, ... (weights before that step's update).
    """

    def __init__(self, every_n_steps: int = 100):
        super().__init__(every_n_steps)

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
    def measure(self, writer: SummaryWriter, view: ModuleView, step: int) -> None:
        values = {}
        with torch.no_grad():
            for prefix, recurrence in view.recurrences.items():
                matrices = recurrence.recurrent_matrices()  # an orthogonal W_h is computed here, once
                for name, block in matrices.items():
                    for key, value in spectral_summary(block).items():
                        values[f"spectral/{prefix}{name}/{key}"] = value
                if recurrence.orthogonal:  # one gate block per layer, named like the layer
                    for name in recurrence.layer_names():
                        values[f"spectral/{prefix}{name}/orthogonality_error"] = orthogonality_error(matrices[name])
        write_scalars(writer, values, step)
