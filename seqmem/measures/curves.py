"""Curves over time summarised by their decay with the lag: the final value, ratios at chosen lags, the horizon.

The per-timestep gradients and the input sensitivity are both such curves, (T,) norms whose last entry is lag 0.
"""

from collections.abc import Sequence

import torch
from torch import Tensor


def gradient_horizon(norms: Tensor, threshold: float = 1e-3) -> Tensor:
    """Largest lag k with norms[T−1−k] / norms[T−1] ≥ threshold (0 where the final norm is 0).

    Args:
        norms: (..., T) norms along time, the last entry at lag 0.
        threshold: smallest ratio to the final norm that still counts as reaching back.

    Returns:
        (...) long tensor of lags, computed on the device (no host sync).
    """
    final = norms[..., -1:]  # (..., 1)
    lags = torch.arange(norms.shape[-1] - 1, -1, -1, device=norms.device)  # (T,) lag of each position
    reaches = (norms >= threshold * final) & (final > 0)  # (..., T)
    return torch.where(reaches, lags, 0).amax(dim=-1)  # (...)


def curve_summary(norms: Tensor, lags: Sequence[int], threshold: float) -> dict[str, Tensor]:
    """``final`` (lag 0), ``ratio_lag<k>`` (the ratio to lag 0 at each lag k < T) and ``horizon`` of a curve.

    Args:
        norms: (T,) a curve along time, the last entry at lag 0.
        lags: lags at which the ratio is given; those ≥ T do not exist and are left out.
        threshold: the horizon's threshold (:func:`gradient_horizon`).

    Example:
        >>> summary = curve_summary(torch.tensor([0.125, 0.25, 0.5, 1.0]), lags=(1, 2, 10), threshold=0.2)
        >>> {key: value.item() for key, value in summary.items()}
        {'final': 1.0, 'ratio_lag1': 0.5, 'ratio_lag2': 0.25, 'horizon': 2}
    """
    T = norms.shape[0]
    values = {"final": norms[-1]}
    for k in lags:
        if k < T:
            values[f"ratio_lag{k}"] = norms[T - 1 - k] / norms[-1]
    values["horizon"] = gradient_horizon(norms, threshold)
    return values
