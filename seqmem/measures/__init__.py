"""Pure measures of gradient flow: functions from a model's view and a batch, or from parameters and their
gradients, to tensors. No Lightning, no logger, no figure: the callbacks (:mod:`seqmem.callbacks`) decide when to
measure and where to write, :mod:`seqmem.plots` draws, :mod:`seqmem.diagnose` serves a loop written by hand.

- gradients of the parameters: :func:`gradient_norms` (per parameter and in total), :func:`total_norm`,
  :func:`params_with_grad`; clipping: :func:`entries_over`, :func:`post_clip_norm`;
- gradients through time: :func:`hidden_grad_norms` (‖dL/dh_t‖ of every layer and step),
  :func:`timestep_grad_norms` (a SequenceModel's), summarised by :func:`curve_summary` and :func:`gradient_horizon`;
- input sensitivity: :func:`sensitivity_norms` (‖∂h_T/∂x_ℓ‖ of every recurrence), :func:`input_sensitivity`;
- the recurrent matrices: :func:`spectral_summary` (radius, extreme singular values), :func:`orthogonality_error`;
- the step Jacobians along the trajectory: :func:`model_spectra`, :func:`jacobian_spectrum` (Lyapunov exponents
  and σ_max(J_t)), :func:`predicted_horizon`, with their parts :func:`layer_trajectories`,
  :func:`lyapunov_exponents`, :func:`jacobian_sigma_max`, :func:`initial_frame`;
- :func:`probe_mode`, the state a model is measured in.

The measures over a batch reduce over its rows in one place each (the batch mean of a norm, the RMS over samples),
and there the per-sequence lengths of a ragged batch (a ``PackedSequence``) enter: :func:`from_end` lines the
sequences up by lag from each one's own end, :func:`from_end_norms` and :func:`from_end_rms` reduce over the
sequences that reach each lag. The Lyapunov exponents are not measured on a ragged batch
(:class:`~seqmem.errors.RaggedBatchError`).
"""

from seqmem.measures.clipping import entries_over, post_clip_norm
from seqmem.measures.curves import curve_summary, from_end, gradient_horizon
from seqmem.measures.lyapunov import (
    initial_frame,
    jacobian_sigma_max,
    jacobian_spectrum,
    layer_trajectories,
    lyapunov_exponents,
    model_spectra,
    predicted_horizon,
    trajectory_spectrum,
)
from seqmem.measures.mode import probe_mode
from seqmem.measures.norms import gradient_norms, norm_dtype, params_with_grad, total_norm
from seqmem.measures.sensitivity import from_end_rms, input_sensitivity, sensitivity_norms
from seqmem.measures.spectral import orthogonality_error, spectral_summary
from seqmem.measures.timesteps import from_end_norms, hidden_grad_norms, timestep_grad_norms

__all__ = [
    "curve_summary",
    "entries_over",
    "from_end",
    "from_end_norms",
    "from_end_rms",
    "gradient_horizon",
    "gradient_norms",
    "hidden_grad_norms",
    "initial_frame",
    "input_sensitivity",
    "jacobian_sigma_max",
    "jacobian_spectrum",
    "layer_trajectories",
    "lyapunov_exponents",
    "model_spectra",
    "norm_dtype",
    "orthogonality_error",
    "params_with_grad",
    "post_clip_norm",
    "predicted_horizon",
    "probe_mode",
    "sensitivity_norms",
    "spectral_summary",
    "timestep_grad_norms",
    "total_norm",
    "trajectory_spectrum",
]
