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

from seqmem.callbacks.base import Diagnosable, Layout, PeriodicDiagnostic, chart, write_scalars


def spectral_summary(matrix: Tensor) -> dict[str, Tensor]:
    """Spectral radius (largest |eigenvalue|) and largest / smallest singular value of a square matrix."""
    w = matrix.detach().float()  # (H, H)
    singular = torch.linalg.svdvals(w)  # (H,) descending
    return {"radius": torch.linalg.eigvals(w).abs().amax(), "sigma_max": singular[0], "sigma_min": singular[-1]}


def orthogonality_error(matrix: Tensor) -> Tensor:
    """‖WᵀW − I‖_F: zero exactly when W is orthogonal."""
    w = matrix.detach().float()  # (H, H)
    return torch.linalg.matrix_norm(w.T @ w - torch.eye(w.shape[0], device=w.device))


class RecurrentSpectrum(PeriodicDiagnostic):
    """Logs ``spectral/layer<l>[/<gate>]/{radius,sigma_max,sigma_min}`` every N optimizer steps, and
    ``spectral/layer<l>/orthogonality_error`` for a net whose W_h is kept orthogonal.

    Args:
        every_n_steps: measure on optimizer steps 0, N, 2N, ... (weights before that step's update).
    """

    def __init__(self, every_n_steps: int = 100):
        super().__init__(every_n_steps)

    @override
    def layout(self, pl_module: Diagnosable) -> Layout:
        charts = {}
        for layer in range(pl_module.net.num_layers):
            charts[f"layer{layer} spectral radius"] = chart(rf"spectral/layer{layer}/(\w+/)?radius")
            charts[f"layer{layer} singular values"] = chart(rf"spectral/layer{layer}/(\w+/)?sigma_(max|min)")
        if pl_module.net.orthogonal:
            charts["distance from orthogonality"] = chart(r"spectral/layer\d+/orthogonality_error")
        return {"spectral": charts}

    @override
    def measure(self, writer: SummaryWriter, pl_module: Diagnosable, step: int) -> None:
        net = pl_module.net
        values = {}
        with torch.no_grad():
            matrices = net.recurrent_matrices()  # an orthogonal W_h is computed here, once
            for name, block in matrices.items():
                for key, value in spectral_summary(block).items():
                    values[f"spectral/{name}/{key}"] = value
            if net.orthogonal:  # one gate block per layer, named "layer<l>"
                for layer in range(net.num_layers):
                    values[f"spectral/layer{layer}/orthogonality_error"] = orthogonality_error(
                        matrices[f"layer{layer}"]
                    )
        write_scalars(writer, values, step)
