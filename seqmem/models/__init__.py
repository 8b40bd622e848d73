"""Recurrent families, one file each, and the one table mapping ``model.cell`` names to classes."""

import inspect
from typing import Any, Literal

from seqmem.errors import require, require_choice
from seqmem.models.base import RecurrentNet
from seqmem.models.elman import IRNN, VanillaRNN
from seqmem.models.gru import GRU
from seqmem.models.lstm import LSTM
from seqmem.models.orthogonal import Activation, OrthogonalInit, OrthogonalMap, OrthogonalRNN
from seqmem.models.state import State, detach_state, state_from_parts, state_parts

MODELS: dict[str, type[RecurrentNet]] = {
    "vanilla": VanillaRNN,
    "orthogonal": OrthogonalRNN,
    "irnn": IRNN,
    "gru": GRU,
    "lstm": LSTM,
}

# The allowed ``model.cell`` values, read off the table so that a new row is a new choice in --help.
Cell = Literal[tuple(MODELS)]  # type: ignore[valid-type]


def build_model(
    cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, **options: Any
) -> RecurrentNet:
    """Instantiate ``MODELS[cell]``; ``options`` set to None are left at the cell's default.

    An option that the chosen cell does not take (``forget_bias`` with ``gru``) is a config error
    rather than silently ignored.

    Raises:
        ConfigError: an unknown cell, or an option the cell does not take.
    """
    require_choice(cell, Cell, "model.cell")
    cls = MODELS[cell]
    given = {name: value for name, value in options.items() if value is not None}
    for name in given:
        users = sorted(c for c, k in MODELS.items() if name in inspect.signature(k.__init__).parameters)
        require(cell in users, f"model.{name} applies only to cell {' / '.join(users)}, not {cell!r}")
    return cls(input_size, hidden_size, num_layers, dropout, **given)


__all__ = [
    "GRU",
    "IRNN",
    "LSTM",
    "MODELS",
    "Activation",
    "Cell",
    "OrthogonalInit",
    "OrthogonalMap",
    "OrthogonalRNN",
    "RecurrentNet",
    "State",
    "VanillaRNN",
    "build_model",
    "detach_state",
    "state_from_parts",
    "state_parts",
]
