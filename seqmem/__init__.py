"""seqmem: trainable recurrent sequence models that make vanishing and exploding gradients measurable.

The names most programs need are importable from the package itself::

    from seqmem import SequenceModel, AddingData, TimestepGradients

- models: :class:`~seqmem.module.SequenceModel` (the LightningModule), :data:`~seqmem.models.MODELS`
  (``model.cell`` name -> class), :class:`~seqmem.models.RecurrentNet` (the cell protocol) and the cells
  :class:`~seqmem.models.VanillaRNN`, :class:`~seqmem.models.OrthogonalRNN`, :class:`~seqmem.models.IRNN`,
  :class:`~seqmem.models.GRU`, :class:`~seqmem.models.LSTM`, :class:`~seqmem.models.LRU`;
- tasks: :class:`~seqmem.tasks.AddingData`, :class:`~seqmem.tasks.CopyData`,
  :class:`~seqmem.tasks.AgreementData`, :class:`~seqmem.tasks.LMData`, their pure generators
  :func:`~seqmem.tasks.adding_problem`, :func:`~seqmem.tasks.copy_memory`, :func:`~seqmem.tasks.agreement_batch`,
  and :class:`~seqmem.tasks.TaskSpec`;
- diagnostics (Lightning callbacks): :class:`~seqmem.callbacks.GradientNorms`,
  :class:`~seqmem.callbacks.ClippingEvents`, :class:`~seqmem.callbacks.RecurrentSpectrum`,
  :class:`~seqmem.callbacks.TimestepGradients`, :class:`~seqmem.callbacks.InputSensitivity`,
  :class:`~seqmem.callbacks.JacobianSpectrum`, :class:`~seqmem.callbacks.NonFiniteGuard`,
  :class:`~seqmem.callbacks.StepsToSolve`, and their base class :class:`~seqmem.callbacks.Diagnostic` for one of
  your own; what they measure, as pure functions, is in :mod:`seqmem.measures`;
- the same diagnostics for a plain loop: :class:`~seqmem.diagnose.Diagnostics`,
  :func:`~seqmem.diagnose.timestep_gradients`, :func:`~seqmem.diagnose.sensitivity_curves`,
  :func:`~seqmem.diagnose.lyapunov_spectrum`, :func:`~seqmem.diagnose.spectral_radii`;
- checkpoints written whole or not at all: :class:`~seqmem.checkpoint_io.AtomicCheckpointIO`,
  :class:`~seqmem.checkpoint_io.AtomicModelCheckpoint`.

Each is documented where it lives. They are imported on first use, so ``import seqmem`` stays cheap and the
``seqmem`` command pays only for what it runs.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it. One table: a new public name is one row.
_EXPORTS = {
    "SequenceModel": "seqmem.module",
    "MODELS": "seqmem.models",
    "RecurrentNet": "seqmem.models",
    "VanillaRNN": "seqmem.models",
    "OrthogonalRNN": "seqmem.models",
    "IRNN": "seqmem.models",
    "GRU": "seqmem.models",
    "LSTM": "seqmem.models",
    "LRU": "seqmem.models",
    "TaskSpec": "seqmem.tasks",
    "AddingData": "seqmem.tasks",
    "CopyData": "seqmem.tasks",
    "AgreementData": "seqmem.tasks",
    "LMData": "seqmem.tasks",
    "adding_problem": "seqmem.tasks",
    "copy_memory": "seqmem.tasks",
    "agreement_batch": "seqmem.tasks",
    "GradientNorms": "seqmem.callbacks",
    "ClippingEvents": "seqmem.callbacks",
    "RecurrentSpectrum": "seqmem.callbacks",
    "TimestepGradients": "seqmem.callbacks",
    "InputSensitivity": "seqmem.callbacks",
    "JacobianSpectrum": "seqmem.callbacks",
    "NonFiniteGuard": "seqmem.callbacks",
    "StepsToSolve": "seqmem.callbacks",
    "Diagnostic": "seqmem.callbacks",
    "Diagnostics": "seqmem.diagnose",
    "timestep_gradients": "seqmem.diagnose",
    "sensitivity_curves": "seqmem.diagnose",
    "lyapunov_spectrum": "seqmem.diagnose",
    "spectral_radii": "seqmem.diagnose",
    "AtomicCheckpointIO": "seqmem.checkpoint_io",
    "AtomicModelCheckpoint": "seqmem.checkpoint_io",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is asked for (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'seqmem' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
