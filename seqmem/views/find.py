"""Finding a model's recurrent modules by their module path, and the line that says none was found."""

import re

from torch import nn

from seqmem.models import RecurrentNet
from seqmem.views.recurrence import Recurrence, SeqmemNet
from seqmem.views.torch_cell import TorchCell
from seqmem.views.torch_rnn import TorchRNN

SUPPORTED = (
    "nn.RNN, nn.GRU, nn.LSTM (batch_first or not, stacked, bidirectional, proj_size, PackedSequence inputs), "
    "nn.RNNCell, nn.GRUCell, nn.LSTMCell (called step by step), and seqmem cells (subclasses of "
    "seqmem.models.RecurrentNet)"
)


def tag_prefix(path: str) -> str:
    """A module path as a tag prefix: ``encoder.rnn`` -> ``encoder/rnn/``; the model itself -> ``""``."""
    return f"{path.replace('.', '/')}/" if path else ""


def find_recurrences(model: nn.Module) -> dict[str, Recurrence]:
    """Every recurrent module of ``model`` as a :class:`Recurrence`, keyed by its tag prefix, in module order.

    A seqmem cell is one recurrence: the torch module it may run on inside (its fused kernel) is its own.
    """
    found: dict[str, Recurrence] = {}
    cells: list[str] = []  # paths of the seqmem cells found so far: their insides are theirs
    for path, module in model.named_modules():
        if any(path.startswith(f"{cell}.") or cell == "" for cell in cells):
            continue
        if isinstance(module, RecurrentNet):
            found[tag_prefix(path)] = SeqmemNet(module)
            cells.append(path)
        elif isinstance(module, nn.RNNBase):
            found[tag_prefix(path)] = TorchRNN(module, path)
        elif isinstance(module, nn.RNNCellBase):
            found[tag_prefix(path)] = TorchCell(module, path)
    return found


def no_recurrence(model: nn.Module, who: str) -> str:
    """The one line for a model in which :func:`find_recurrences` found nothing: what was there, what is supported."""
    lookalikes = [
        f"{path} ({type(module).__name__})"
        for path, module in model.named_modules()
        if path and re.search(r"rnn|lstm|gru|recurren", type(module).__name__, re.IGNORECASE)
    ]
    found = f"its {', '.join(lookalikes[:5])} cannot be stepped" if lookalikes else "it holds none"
    return f"{who} needs a recurrent layer in {type(model).__name__}, and {found}; supported: {SUPPORTED}"
