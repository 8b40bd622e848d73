"""seqmem: trainable recurrent sequence models that make vanishing and exploding gradients measurable.

The names most programs need are importable from the package itself::

    from seqmem import SequenceModel, AddingData, TimestepGradients

- models: :class:`SequenceModel` (the LightningModule), :data:`MODELS` (``model.cell`` name -> class),
  :class:`RecurrentNet` (the cell protocol) and the cells :class:`VanillaRNN`, :class:`OrthogonalRNN`,
  :class:`IRNN`, :class:`GRU`, :class:`LSTM`;
- tasks: :class:`AddingData`, :class:`CopyData`, :class:`AgreementData`, :class:`LMData`, their pure
  generators :func:`adding_problem`, :func:`copy_memory`, :func:`agreement_batch`, and :class:`TaskSpec`;
- diagnostics (Lightning callbacks): :class:`GradientNorms`, :class:`ClippingEvents`,
  :class:`RecurrentSpectrum`, :class:`TimestepGradients`, :class:`InputSensitivity`,
  :class:`JacobianSpectrum`, :class:`NonFiniteGuard`, :class:`StepsToSolve`;
- the same diagnostics for a plain loop: :class:`Diagnostics`, :func:`timestep_gradients`,
  :func:`sensitivity_curves`, :func:`lyapunov_spectrum`, :func:`spectral_radii`;
- checkpoints written whole or not at all: :class:`AtomicCheckpointIO`, :class:`AtomicModelCheckpoint`.

Each is documented where it lives (``seqmem.models``, ``seqmem.tasks``, ``seqmem.callbacks``,
``seqmem.diagnose``, ``seqmem.checkpoint_io``). They are imported on first use, so ``import seqmem`` stays
cheap and the ``seqmem`` command pays only for what it runs.
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
