"""Gradient-flow diagnostics as Lightning callbacks, one file each. They attach to any LightningModule (its
recurrent layers found by module path, :mod:`seqmem.views`), seqmem's SequenceModel included, measure with
:mod:`seqmem.measures` and write to the run's loggers::

    trainer:
      callbacks:
        - class_path: seqmem.callbacks.GradientNorms
        - class_path: seqmem.callbacks.TimestepGradients
          init_args: {every_n_steps: 200}

:data:`DIAGNOSTICS` is the one list of seqmem's diagnostics: what :class:`seqmem.diagnose.Diagnostics` runs in a
loop written by hand and what this module exports derive from it. A new diagnostic is its own file and one entry
there (the manual's "Write your own diagnostic").
"""

from seqmem.callbacks.base import Diagnostic, Measurement
from seqmem.callbacks.clipping import ClippingEvents
from seqmem.callbacks.grad_norms import GradientNorms, parameter_tags
from seqmem.callbacks.grad_time import TimestepGradients
from seqmem.callbacks.jacobian import JacobianSpectrum
from seqmem.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from seqmem.callbacks.predictions import PredictionWriter
from seqmem.callbacks.probe import ProbeBatch
from seqmem.callbacks.sensitivity import InputSensitivity
from seqmem.callbacks.solved import StepsToSolve
from seqmem.callbacks.spectral import RecurrentSpectrum
from seqmem.views import probe_loss

#: seqmem's diagnostics, in the order the shipped defaults list them (the order of their charts).
DIAGNOSTICS: tuple[type[Diagnostic], ...] = (
    GradientNorms,
    ClippingEvents,
    RecurrentSpectrum,
    TimestepGradients,
    InputSensitivity,
    JacobianSpectrum,
)

__all__ = [
    "DIAGNOSTICS",
    "Diagnostic",
    "Measurement",
    "NonFiniteError",
    "NonFiniteGuard",
    "PredictionWriter",
    "ProbeBatch",
    "StepsToSolve",
    "parameter_tags",
    "probe_loss",
    *(diagnostic.__name__ for diagnostic in DIAGNOSTICS),
]
