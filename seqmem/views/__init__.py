"""What every diagnostic reads from a model, in one place: the model's view.

:func:`view_of` gives the view of any module: a model that provides its own (``diagnostic_view(loss_fn)``, as
seqmem's :class:`~seqmem.module.SequenceModel` does) returns it; any other LightningModule or nn.Module gets a
:class:`ModuleView`, which finds its recurrent layers (:data:`~seqmem.views.find.SUPPORTED`) by module path.

- ``recurrence.py``: the :class:`Recurrence` interface and seqmem's cells seen through it;
- ``torch_rnn.py``, ``torch_cell.py``: torch's ``nn.RNN/GRU/LSTM`` and their cells, stepped by seqmem;
- ``find.py``: finding them in a model;
- ``module_view.py``: :class:`ModuleView` (parameters by tag, clipping, the probes' runs and loss);
- ``sequence_view.py``: :class:`SequenceModelView`.
"""

from typing import Optional

from torch import nn

from seqmem.views.find import SUPPORTED, find_recurrences
from seqmem.views.module_view import LossFn, ModuleView, batch_to, untouched
from seqmem.views.recurrence import Recurrence, SeqmemNet
from seqmem.views.sequence_view import ProbeLoss, SequenceModelView, probe_loss
from seqmem.views.torch_cell import TorchCell
from seqmem.views.torch_rnn import TorchRNN


def view_of(module: nn.Module, loss_fn: Optional[LossFn] = None) -> ModuleView:
    """The diagnostics' view of ``module``: its own ``diagnostic_view(loss_fn)`` if it has one, else a
    :class:`ModuleView`.

    Args:
        module: the model.
        loss_fn: the probes' loss, (module, batch) -> scalar; None: the model's own (see :class:`ModuleView`).
    """
    own = getattr(module, "diagnostic_view", None)
    return own(loss_fn) if callable(own) else ModuleView(module, loss_fn)


__all__ = [
    "SUPPORTED",
    "LossFn",
    "ModuleView",
    "ProbeLoss",
    "Recurrence",
    "SeqmemNet",
    "SequenceModelView",
    "TorchCell",
    "TorchRNN",
    "batch_to",
    "find_recurrences",
    "probe_loss",
    "untouched",
    "view_of",
]
