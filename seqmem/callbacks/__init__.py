"""Gradient-flow diagnostics as Lightning callbacks, one file each; all write to TensorBoard. They attach to any
LightningModule (its recurrent layers found by module path, :mod:`seqmem.views`), seqmem's SequenceModel included.

trainer:
  callbacks:
    - class_path: seqmem.callbacks.GradientNorms
    - class_path: seqmem.callbacks.TimestepGradients
      init_args: {every_n_steps: 200}
"""

from seqmem.callbacks.base import Diagnostic, PeriodicDiagnostic, RecurrentDiagnostic
from seqmem.callbacks.clipping import ClippingEvents
from seqmem.callbacks.grad_norms import GradientNorms, gradient_norms, parameter_tags
from seqmem.callbacks.grad_time import TimestepGradients, hidden_grad_norms, timestep_grad_norms
from seqmem.callbacks.jacobian import JacobianSpectrum, jacobian_spectrum, model_spectra, predicted_horizon
from seqmem.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from seqmem.callbacks.predictions import PredictionWriter
from seqmem.callbacks.probe import CurveProbe, ProbeDiagnostic, gradient_horizon, probe_mode
from seqmem.callbacks.sensitivity import InputSensitivity, input_sensitivity, sensitivity_norms
from seqmem.callbacks.solved import StepsToSolve
from seqmem.callbacks.spectral import RecurrentSpectrum, orthogonality_error, spectral_summary
from seqmem.views import probe_loss

__all__ = [
    "ClippingEvents",
    "CurveProbe",
    "Diagnostic",
    "GradientNorms",
    "InputSensitivity",
    "JacobianSpectrum",
    "NonFiniteError",
    "NonFiniteGuard",
    "PeriodicDiagnostic",
    "PredictionWriter",
    "ProbeDiagnostic",
    "RecurrentDiagnostic",
    "RecurrentSpectrum",
    "StepsToSolve",
    "TimestepGradients",
    "gradient_horizon",
    "gradient_norms",
    "hidden_grad_norms",
    "input_sensitivity",
    "jacobian_spectrum",
    "model_spectra",
    "orthogonality_error",
    "parameter_tags",
    "predicted_horizon",
    "probe_loss",
    "probe_mode",
    "sensitivity_norms",
    "spectral_summary",
    "timestep_grad_norms",
]
