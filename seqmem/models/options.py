"""The options each cell brings (``--model.forget_bias``), read off the cell classes themselves.

A cell names the constructor arguments it offers as ``model.<name>`` options in :attr:`RecurrentNet.options`.
Each is typed by the constructor's annotation and documented by the class docstring's ``Args:`` entry, as every
constructor argument is; :func:`gather_options` collects them over the cell table, so that
:class:`~seqmem.module.SequenceModel`, the CLI and the checkpoint checks take them from there and a new cell with
new options needs no edit outside ``seqmem/models``.
"""

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from docstring_parser import parse

#: The constructor arguments every cell takes: SequenceModel's own options, never a cell's.
SIZE_ARGUMENTS = ("input_size", "hidden_size", "num_layers", "dropout")


@dataclass(frozen=True)
class CellOption:
    """One ``model.<name>`` option, as the cells that take it declare it.

    Args:
        name: the constructor argument, which is also the option's name.
        type: the constructor's annotation (``Optional[float]``, a ``Literal`` of the allowed values, ...).
        doc: the cell docstring's description of the argument.
        defaults: the constructor's default, by the name of each cell that takes the option.
    """

    name: str
    type: Any
    doc: str
    defaults: dict[str, Any]

    @property
    def help(self) -> str:
        """The ``--help`` text: the cells that take the option, its description and their defaults."""
        given = {cell: default for cell, default in self.defaults.items() if default is not None}
        values = [f"{value}" for value in given.values()]
        if len(set(values)) > 1:  # cells that default differently: each named
            values = [f"{value} ({cell})" for cell, value in given.items()]
        default = f" When not given: {', '.join(dict.fromkeys(values))}." if values else ""
        return f"{' / '.join(self.defaults)} only — {self.doc}{default}"


@cache
def declared_options(cls: type) -> dict[str, tuple[Any, Any, str]]:
    """The options ``cls`` declares in its ``options`` attribute: name -> (annotation, default, description).

    Raises:
        TypeError: a declared option that is not a typed keyword argument of the constructor with a default, or
            that its docstring's ``Args:`` leaves undocumented; or one of :data:`SIZE_ARGUMENTS`.
    """
    parameters = inspect.signature(cls.__init__).parameters
    # The class's own entries over its parents' (a subclass that keeps its parent's constructor may not repeat them).
    texts = [klass.__doc__ for klass in reversed(cls.__mro__)] + [cls.__init__.__doc__]
    docs = {p.arg_name: p.description for text in texts for p in parse(text or "").params}
    declared = {}
    for name in getattr(cls, "options", ()):
        parameter = parameters.get(name)
        if name in SIZE_ARGUMENTS or parameter is None or parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{cls.__name__}.options names {name!r}: not a constructor argument with a default")
        if parameter.annotation is inspect.Parameter.empty or not docs.get(name):
            raise TypeError(f"{cls.__name__}.options names {name!r}: its type and its docstring entry are needed")
        declared[name] = (parameter.annotation, parameter.default, " ".join(docs[name].split()))
    return declared


def gather_options(models: Mapping[str, type]) -> dict[str, CellOption]:
    """Every option the cells of ``models`` (name -> class) declare, in table order; an option several cells take
    is one entry naming them all.

    Raises:
        TypeError: two cells that declare one option with different types.
    """
    gathered: dict[str, CellOption] = {}
    for cell, cls in models.items():
        for name, (annotation, default, doc) in declared_options(cls).items():
            option = gathered.setdefault(name, CellOption(name, annotation, doc, {}))
            if option.type != annotation:
                raise TypeError(f"model.{name}: {cell} takes {annotation}, another cell {option.type}")
            option.defaults[cell] = default
    return gathered
