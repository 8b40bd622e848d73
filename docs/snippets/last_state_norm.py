"""A diagnostic of one's own: the norm of each recurrent layer's last hidden state, every N steps.

``seqmem fit --config adding --trainer.callbacks+ last_state_norm.LastStateNorm`` runs it (with this file on the
Python path); so does any ``L.Trainer(callbacks=[LastStateNorm()])``, and, in a loop written by hand,
``Diagnostics(model, loss_fn, writer, probes=[LastStateNorm()])``.
"""

from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from seqmem.callbacks import Diagnostic, Measurement
from seqmem.views import ModuleView


# The measure: a pure function of the model's view and a batch, with no Lightning and no logger in it.
def last_state_norms(view: ModuleView, batch: Any) -> dict[str, Tensor]:
    """‖h_T‖ of every recurrent layer, the norm over the batch and the hidden units: ``{"<path>/layer<l>": ()}``."""
    with torch.no_grad():
        _, runs = view.runs(batch, need_loss=False)  # one forward, every recurrent layer's steps recorded
    return {
        f"{prefix}{name}": layer.hiddens[-1].norm()  # (B, H) -> ()
        for prefix, (layers, _) in runs.items()
        for name, layer in zip(view.recurrences[prefix].layer_names(), layers, strict=True)
    }


# The callback: its schedule and probe batch (the base class's arguments), its checks, its measurement.
class LastStateNorm(Diagnostic):
    """Logs ``last_state/<path>/layer<l>``, ‖h_T‖ of each recurrent layer on a fixed probe batch, every N steps.

    Args:
        every_n_steps: measure on optimizer steps 0, N, 2N, ...
        probe_batch_size: rows of the first training batch kept as the probe batch (SequenceModel; any other
            model keeps the whole batch).
    """

    plain_loop = "probe"  # Diagnostics.probe(batch, step) runs it in a loop written by hand

    def __init__(self, every_n_steps: int = 100, probe_batch_size: int = 32):
        super().__init__(every_n_steps, probe_batch_size)

    @override
    def check(self, view: ModuleView) -> None:
        # Refused in one line at setup: a model without a recurrent layer, or one whose loss a probe cannot run.
        view.require_recurrent(type(self).__name__)
        view.require_probe_loss(type(self).__name__)

    @override
    def measure(self, step: int, batch: Any) -> Measurement:
        norms = last_state_norms(self.view, batch)
        return Measurement({f"last_state/{layer}": norm for layer, norm in norms.items()})
