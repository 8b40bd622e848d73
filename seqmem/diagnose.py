"""Every diagnostic without Lightning: for a training loop written by hand, the same numbers and the same tags.

The functions take the model (any nn.Module holding torch's recurrent layers or seqmem cells, found by module
path), a batch, and the loss function ``loss_fn(model, batch) -> scalar`` the loop trains with; they return
plain dicts keyed as the callbacks' tags are (``<module path>/layer<l>``). :class:`Diagnostics` writes them under
exactly the callbacks' tags, images included, to a TensorBoard ``SummaryWriter`` or to any Lightning logger::

    from torch.utils.tensorboard import SummaryWriter
    from seqmem.diagnose import Diagnostics

    diagnostics = Diagnostics(model, loss_fn, SummaryWriter("runs/lm"))
    for step, batch in enumerate(loader):
        optimizer.zero_grad()
        loss_fn(model, batch).backward()
        diagnostics.gradients(step)                  # grad_norm/*: before clipping
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if step % 200 == 0:
            diagnostics.probe(batch, step)           # spectral/*, grad_time/*, sensitivity/*, lyapunov/*
        optimizer.step()

Every function leaves the model's gradients, attributes, mode and random streams as it found them.
"""

from collections.abc import Sequence
from typing import Any, Optional, Union

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from seqmem.callbacks import DIAGNOSTICS, Diagnostic
from seqmem.callbacks.base import merged_layout
from seqmem.loggers import log_layout
from seqmem.measures import (
    gradient_norms,
    hidden_grad_norms,
    model_spectra,
    probe_mode,
    sensitivity_norms,
    spectral_summary,
)
from seqmem.views import LossFn, ModuleView, view_of

#: Where :class:`Diagnostics` writes: a TensorBoard ``SummaryWriter``, a Lightning logger, or several.
Destination = Union[SummaryWriter, Logger, Sequence[Logger]]


def _view(model: nn.Module, loss_fn: Optional[LossFn], who: str) -> ModuleView:
    view = view_of(model, loss_fn)
    view.require_recurrent(who)
    if loss_fn is not None:
        view.require_probe_loss(who)
    return view


def _per_layer(view: ModuleView, curves: dict[str, Tensor]) -> dict[str, Tensor]:
    """{prefix: (L, ·)} -> {prefix + layer name: (·)}."""
    return {
        f"{prefix}{name}": row
        for prefix, rows in curves.items()
        for name, row in zip(view.recurrences[prefix].layer_names(), rows, strict=True)
    }


def timestep_gradients(model: nn.Module, batch: Any, loss_fn: LossFn) -> dict[str, Tensor]:
    """‖dL/dh_t‖ of every recurrent layer at every step: ``{"<path>/layer<l>": (T,)}``, the full gradient through
    the recurrence (what ``grad_time/*`` summarises), in each layer's own step order.

    Example:
        A ReLU RNN in its active regime with W_h = 0.5·I passes back exactly 0.5^k of the gradient to lag k, and
        its Lyapunov exponents are ln 0.5:

        >>> import torch
        >>> from torch import nn
        >>> model = nn.ModuleDict({"rnn": nn.RNN(1, 4, nonlinearity="relu", batch_first=True)})
        >>> with torch.no_grad():
        ...     for weight in model["rnn"].parameters():
        ...         _ = weight.zero_()
        ...     _ = model["rnn"].weight_hh_l0.copy_(0.5 * torch.eye(4))
        ...     _ = model["rnn"].weight_ih_l0.fill_(1.0)
        >>> loss_fn = lambda model, x: model["rnn"](x)[0][:, -1].sum()  # the loss at the last step
        >>> x = torch.ones(2, 6, 1)  # (B, T, I)
        >>> norms = timestep_gradients(model, x, loss_fn)["rnn/layer0"]  # (T,)
        >>> (norms / norms[-1]).tolist()
        [0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0]
        >>> exponents, _ = lyapunov_spectrum(model, x, loss_fn, k=2)["rnn/layer0"]
        >>> torch.allclose(exponents, torch.tensor(0.5).log().expand(2))
        True
    """
    view = _view(model, loss_fn, "timestep_gradients")
    with probe_mode(model):
        return _per_layer(view, {k: v.detach() for k, v in hidden_grad_norms(view, batch).items()})


def sensitivity_curves(
    model: nn.Module, batch: Any, loss_fn: LossFn, projections: int = 2, seed: int = 0
) -> dict[str, Tensor]:
    """Estimated ‖∂h_T/∂x_ℓ‖_F of each recurrence's final state against input position ℓ:
    ``{"<path>/": (T,), "<path>/reverse/": (T,)}`` (the reverse direction of a bidirectional one)."""
    view = _view(model, loss_fn, "sensitivity_curves")
    with probe_mode(model):
        curves = sensitivity_norms(view, batch, projections, seed)
    return {
        f"{prefix}{direction}": row.detach()
        for prefix, rows in curves.items()
        for direction, row in zip(("", "reverse/")[: len(rows)], rows, strict=True)
    }


def lyapunov_spectrum(
    model: nn.Module, batch: Any, loss_fn: LossFn, k: int = 8, power_iterations: int = 10, seed: int = 0
) -> dict[str, tuple[Tensor, Tensor]]:
    """The top ``k`` finite-time Lyapunov exponents (k,) and σ_max(J_t) (T, B) of every recurrent layer along its
    run on ``batch``: ``{"<path>/layer<l>": (exponents, sigma_max)}``."""
    view = _view(model, loss_fn, "lyapunov_spectrum")
    with probe_mode(model):
        spectra = model_spectra(view, batch, k, power_iterations, seed)
    return {
        f"{prefix}{name}": (lam, sig)
        for prefix, (exponents, sigmas) in spectra.items()
        for name, lam, sig in zip(view.recurrences[prefix].layer_names(), exponents, sigmas, strict=True)
    }


def spectral_radii(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """Spectral radius and extreme singular values of every recurrent matrix, per gate block:
    ``{"<path>/layer<l>/<gate>": {"radius", "sigma_max", "sigma_min"}}``."""
    view = _view(model, None, "spectral_radii")
    return {
        f"{prefix}{name}": spectral_summary(matrix)
        for prefix, recurrence in view.recurrences.items()
        for name, matrix in recurrence.recurrent_matrices().items()
    }


def parameter_gradient_norms(model: nn.Module) -> dict[str, Tensor]:
    """``grad_norm/*`` of the gradients the parameters hold now (call after backward, before clipping): every
    parameter by role and module path, and ``grad_norm/total``."""
    view = view_of(model)
    return gradient_norms(view.parameter_tags(), view.derived_tags())


class _WriterLogger(TensorBoardLogger):
    """A TensorBoard logger writing through a ``SummaryWriter`` the loop made itself."""

    def __init__(self, writer: SummaryWriter):
        super().__init__(writer.log_dir, name="", version="")
        self.writer = writer

    @property
    @override
    def experiment(self) -> SummaryWriter:
        return self.writer


def loggers_of(destination: Destination) -> list[Logger]:
    """The Lightning loggers a :data:`Destination` stands for: a ``SummaryWriter`` becomes a TensorBoard logger that
    writes through it."""
    if isinstance(destination, SummaryWriter):
        return [_WriterLogger(destination)]
    if isinstance(destination, Logger):
        return [destination]
    return list(destination)


class Diagnostics:
    """Writes the tags of seqmem's callbacks from a hand-written loop (see the module docstring).

    The diagnostics are those of :data:`seqmem.callbacks.DIAGNOSTICS` that a loop can run: :meth:`gradients` runs
    the ones measuring the gradients the parameters hold, :meth:`probe` the ones measuring the model on a batch.

    Args:
        model: the model.
        loss_fn: the loop's loss, ``(model, batch) -> scalar``: what the probes differentiate.
        writer: where to write: a TensorBoard ``SummaryWriter``, a Lightning logger (``CSVLogger``, ``MLFlowLogger``,
            ...) or a list of them.
        probes: the diagnostics :meth:`probe` runs, configured as the callbacks are; default: every diagnostic of
            :data:`~seqmem.callbacks.DIAGNOSTICS` that probes, at its defaults (RecurrentSpectrum, TimestepGradients,
            InputSensitivity, JacobianSpectrum).
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, writer: Destination, probes: Optional[list[Diagnostic]] = None
    ):
        self.view = _view(model, loss_fn, "Diagnostics")
        self.loggers = loggers_of(writer)
        self.norms = [diagnostic() for diagnostic in DIAGNOSTICS if diagnostic.plain_loop == "gradients"]
        self.probes = probes or [diagnostic() for diagnostic in DIAGNOSTICS if diagnostic.plain_loop == "probe"]
        for diagnostic in [*self.norms, *self.probes]:
            diagnostic.attach(self.view)
        log_layout(self.loggers, merged_layout([*self.norms, *self.probes]))

    def gradients(self, step: int) -> None:
        """Write ``grad_norm/*`` of the gradients the parameters hold now: call after backward, before clipping."""
        for diagnostic in self.norms:
            diagnostic.write(self.loggers, step)

    def probe(self, batch: Any, step: int) -> None:
        """Run every probe on ``batch`` and write its tags at ``step``."""
        for diagnostic in self.probes:
            diagnostic.write(self.loggers, step, batch)
