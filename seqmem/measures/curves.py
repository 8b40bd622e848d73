"""Curves over time summarised by their decay with the lag: the final value, ratios at chosen lags, the horizon.

The per-timestep gradients and the input sensitivity are both such curves, (T,) norms whose last entry is lag 0.
In a ragged batch (a ``PackedSequence``) lags are counted from each sequence's own end (:func:`from_end`).
"""

from collections.abc import Sequence

import torch
from torch import Tensor


def from_end(values: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Per-step values of sequences of different lengths lined up by their lag from each sequence's own end.

    Args:
        values: (B, T) a value per sequence and step, in the order the sequence was stepped; the steps past a
            sequence's length are ignored.
        lengths: (B,) each sequence's number of steps (1 ≤ length ≤ T).

    Returns:
        (B, T) values with position T−1−k holding lag k of each sequence (its step lengths[b]−1−k), 0 where the
        sequence is shorter than k + 1; and (T,) how many sequences reach each position.

    Example:
        >>> aligned, reach = from_end(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]), torch.tensor([3, 2]))
        >>> aligned.tolist(), reach.tolist()
        ([[1.0, 2.0, 3.0], [0.0, 4.0, 5.0]], [1, 2, 2])
    """
    length = values.shape[1]
    source = lengths[:, None] - length + torch.arange(length, device=values.device)  # (B, T) step at each position
    reached = source >= 0  # (B, T)
    aligned = values.gather(1, source.clamp_min(0))  # (B, T)
    return torch.where(reached, aligned, 0), reached.sum(dim=0)


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
