"""Recurrent families, one file each, and the one table mapping ``model.cell`` names to classes."""

import inspect
from typing import Any

from seqmem.errors import require
from seqmem.models.base import RecurrentNet, State
from seqmem.models.elman import IRNN, VanillaRNN
from seqmem.models.gru import GRU
from seqmem.models.lstm import LSTM
from seqmem.models.orthogonal import OrthogonalRNN

MODELS: dict[str, type[RecurrentNet]] = {
    "vanilla": VanillaRNN,
    "orthogonal": OrthogonalRNN,
    "irnn": IRNN,
    "gru": GRU,
    "lstm": LSTM,
}


def build_model(
    cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, **options: Any
) -> RecurrentNet:
    """Instantiate ``MODELS[cell]``; ``options`` set to None are left at the cell's default.

    An option that the chosen cell does not take (``forget_bias`` with ``gru``) is a config error
    rather than silently ignored.
    """
    require(cell in MODELS, f"model.cell must be one of {sorted(MODELS)}, got {cell!r}")
    cls = MODELS[cell]
    accepted = inspect.signature(cls.__init__).parameters
    given = {name: value for name, value in options.items() if value is not None}
    for name in given:
        users = sorted(c for c, k in MODELS.items() if name in inspect.signature(k.__init__).parameters)
        require(name in accepted, f"model.{name} applies only to cell {' / '.join(users)}, not {cell!r}")
    return cls(input_size, hidden_size, num_layers, dropout, **given)


__all__ = ["MODELS", "build_model", "RecurrentNet", "State", "VanillaRNN", "OrthogonalRNN", "IRNN", "GRU", "LSTM"]
