"""Recurrent families, one file each, and the one table mapping ``model.cell`` names to classes.

A row of :data:`MODELS` is all a cell needs to be a ``model.cell`` choice everywhere, with the options it declares
(:attr:`RecurrentNet.options`) as ``--model.<name>``: :func:`registered_options` reads them off the table.
"""

import importlib
import inspect
from typing import Any, Literal, Optional

from seqmem.errors import ConfigError, quote, require, shorten
from seqmem.models.base import RecurrentNet
from seqmem.models.elman import IRNN, VanillaRNN
from seqmem.models.gru import GRU
from seqmem.models.lru import LRU
from seqmem.models.lstm import LSTM
from seqmem.models.options import SIZE_ARGUMENTS, CellOption, declared_options, gather_options
from seqmem.models.orthogonal import Activation, OrthogonalInit, OrthogonalMap, OrthogonalRNN
from seqmem.models.state import State, detach_state, state_from_parts, state_parts

#: The one table of seqmem's cells: ``model.cell`` name -> class. A new row is a new choice everywhere (the CLI and its
#: options, sweeps, checkpoints, the equivalence tests).
MODELS: dict[str, type[RecurrentNet]] = {
    "vanilla": VanillaRNN,
    "orthogonal": OrthogonalRNN,
    "irnn": IRNN,
    "gru": GRU,
    "lstm": LSTM,
    "lru": LRU,
}

# The names of seqmem's cells, read off the table so that a new row is a new choice.
Cell = Literal[tuple(MODELS)]  # type: ignore[valid-type]


def registered_options() -> dict[str, CellOption]:
    """The options the cells of :data:`MODELS` declare, by name (``forget_bias``, ``activation``, ...), read off the
    table as it is now: ``--model.<name>`` in the CLI, a hyperparameter of
    :class:`~seqmem.module.SequenceModel` and part of the architecture a checkpoint must match."""
    return gather_options(MODELS)


def resolve_cell(cell: str) -> type[RecurrentNet]:
    """The class of ``model.cell``: a name of :data:`MODELS`, or the import path of a cell of one's own
    (``package.module.Class``, a subclass of :class:`RecurrentNet`, importable: installed or on PYTHONPATH).

    Raises:
        ConfigError: neither a seqmem cell's name nor an importable RecurrentNet subclass.
    """
    if cell in MODELS:
        return MODELS[cell]
    allowed = f"model.cell must be one of {', '.join(MODELS)}, or the import path of a RecurrentNet subclass"
    module_name, _, class_name = cell.rpartition(".")
    require(bool(module_name), f"{allowed} (package.module.Class); got {quote(cell)}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{allowed}; {quote(cell)} cannot be imported ({shorten(str(error))})") from None
    require(
        isinstance(cls, type) and issubclass(cls, RecurrentNet),
        f"{allowed} (seqmem.models.RecurrentNet: the cell protocol); {quote(cell)} is not one",
    )
    return cls


def build_model(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    dropout: float = 0.0,
    cell_options: Optional[dict[str, Any]] = None,
    **options: Any,
) -> RecurrentNet:
    """Instantiate the cell ``cell`` (:func:`resolve_cell`); ``options`` set to None are left at its default.

    An option that the chosen cell does not declare (``forget_bias`` with ``gru``) is a config error
    rather than silently ignored.

    Args:
        cell: a name of :data:`MODELS` or a cell class's import path.
        input_size: features per time step of the input.
        hidden_size: units per layer.
        num_layers: stacked layers.
        dropout: dropout between layers.
        cell_options: further constructor arguments of the cell (``model.cell_options``).
        options: the cells' declared options (:func:`registered_options`), None where not given.

    Raises:
        ConfigError: an unknown cell, or an option the cell does not take.
    """
    cls = resolve_cell(cell)
    given = {name: value for name, value in options.items() if value is not None}
    for name in given:
        users = registered_options()[name].defaults if name in registered_options() else {}
        require(name in declared_options(cls), f"model.{name} applies only to cell {' / '.join(users)}, not {cell!r}")
    takes = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", *SIZE_ARGUMENTS)]
    for name in cell_options or {}:
        require(
            name in takes,
            f"model.cell_options: {cls.__name__} takes no option {name!r} (it takes: {', '.join(takes) or 'none'})",
        )
    return cls(input_size, hidden_size, num_layers, dropout, **given, **(cell_options or {}))


__all__ = [
    "GRU",
    "IRNN",
    "LRU",
    "LSTM",
    "MODELS",
    "Activation",
    "Cell",
    "CellOption",
    "OrthogonalInit",
    "OrthogonalMap",
    "OrthogonalRNN",
    "RecurrentNet",
    "State",
    "VanillaRNN",
    "build_model",
    "registered_options",
    "resolve_cell",
    "detach_state",
    "state_from_parts",
    "state_parts",
]
