"""Spectrum of the recurrence: spectral radius and extreme singular values of every W_h.

ρ(W_h) governs the linearised dynamics h_t ≈ W_h h_{t-1} (ρ < 1 forgets geometrically, ρ > 1 can
explode); σ_max / σ_min bound how much one step of the recurrence can stretch or shrink a gradient.
GRU and LSTM are reported per gate block. For the orthogonal cell, ‖W_hᵀW_h − I‖_F shows how far
numerical drift has taken it from orthogonality. Eigenvalues synchronise with the host on CUDA, which is
why :class:`~seqmem.callbacks.RecurrentSpectrum` measures every N steps only.
"""

import torch
from torch import Tensor


def spectral_summary(matrix: Tensor) -> dict[str, Tensor]:
    """Spectral radius (the largest eigenvalue modulus) and largest / smallest singular value of a square matrix."""
    w = matrix.detach().float()  # (H, H)
    singular = torch.linalg.svdvals(w)  # (H,) descending
    return {"radius": torch.linalg.eigvals(w).abs().amax(), "sigma_max": singular[0], "sigma_min": singular[-1]}


def orthogonality_error(matrix: Tensor) -> Tensor:
    """‖WᵀW − I‖_F: zero exactly when W is orthogonal."""
    w = matrix.detach().float()  # (H, H)
    return torch.linalg.matrix_norm(w.T @ w - torch.eye(w.shape[0], device=w.device))
