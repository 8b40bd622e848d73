"""Spectrum of the step Jacobians on a probe batch every N steps: finite-time Lyapunov exponents and σ_max(J_t) of
every recurrent layer, with the image of the exponents against training step (the measure:
:func:`seqmem.measures.model_spectra`)."""

from typing import Any, Optional

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from seqmem.callbacks.base import Diagnostic, Layout, Measurement, chart, escaped
from seqmem.errors import RaggedBatchError, require
from seqmem.measures import model_spectra, predicted_horizon
from seqmem.plots import SpectrumPlot
from seqmem.views import LossFn, ModuleView


class JacobianSpectrum(Diagnostic):
    """Spectrum of the step Jacobians J_t = ∂s_t/∂s_{t−1} (φ′ and gates included) on the fixed probe batch.

    Every N steps, for every recurrent layer of the model (``layer<l>`` for SequenceModel, ``<module path>/layer<l>``
    for any other model, as in ``grad_time``), the layer's input held fixed (LSTM: the joint state (h, c)):
    ``lyapunov/layer<l>/lambda_1`` … ``lambda_<k>`` (finite-time Lyapunov exponents, mean over the probe
    batch), ``lyapunov/layer<l>/sum`` (their sum: log growth of k-dimensional volumes per step),
    ``lyapunov/layer<l>/predicted_horizon`` (largest lag k with e^{λ_1 k} ≥ ``threshold``, to compare with
    ``grad_time/layer<l>/horizon`` in one chart), ``jacobian/layer<l>/sigma_max_median`` and
    ``sigma_max_max`` (σ_max(J_t) summarised over t, mean over sequences), and the image
    ``lyapunov/spectrum`` per recurrence (every exponent against training step, all probes so far).

    Rank-local like the other probes; training gradients are untouched (only jvp / vjp with respect to
    the state, no ``.backward()``), and the random frames come from their own seeded generators.

    A ragged probe batch (a ``PackedSequence`` of sequences of different lengths) is not measured: the finite-time
    exponents of sequences of different lengths are averages over different horizons, not one spectrum; the
    diagnostic says so once, in one warning line, and writes nothing, while the other diagnostics measure it.

    Args:
        every_n_steps: probe on optimizer steps 0, N, 2N, ...
        probe_batch_size: rows of the first training batch kept as the probe batch (SequenceModel; any other
            model keeps the whole batch).
        k: Lyapunov exponents per layer (capped at the state dimension D: H, or 2H for the LSTM's (h, c)).
        power_iterations: power iterations for each σ_max(J_t) (each one jvp and one vjp over the whole
            trajectory at once). The estimate approaches σ_max from below: at 10 iterations the median
            (t, sequence) is 1–4 % under it for H = 128 cells at initialisation (7 % at worst); at 50, ≤ 0.3 %
            (3 % at worst), for 5× the power-iteration time.
        threshold: horizon threshold, the same as ``TimestepGradients``' (default 1e-3).
        seed: seed of the initial orthonormal frame and of the power-iteration start vectors.
        loss_fn: what the probe runs to reach the recurrent layers, ``(module, batch) -> scalar`` (its value is
            not used), in place of the module's own loss.
    """

    plain_loop = "probe"

    def __init__(
        self,
        every_n_steps: int = 500,
        probe_batch_size: int = 32,
        k: int = 8,
        power_iterations: int = 10,
        threshold: float = 1e-3,
        seed: int = 0,
        loss_fn: Optional[LossFn] = None,
    ):
        super().__init__(every_n_steps, probe_batch_size, loss_fn)
        require(0 < threshold < 1, f"threshold of JacobianSpectrum must be in (0, 1), got {threshold}")
        require(k >= 1, f"k of JacobianSpectrum must be >= 1, got {k}")
        require(power_iterations >= 1, f"power_iterations of JacobianSpectrum must be >= 1, got {power_iterations}")
        require(seed >= 0, f"seed of JacobianSpectrum must be >= 0, got {seed}")
        self.k = k
        self.threshold = threshold
        self.power_iterations = power_iterations
        self.seed = seed
        # Per recurrence (tag prefix): (step, (L, k) exponents on the CPU) of every probe so far, for its image.
        self.history: dict[str, list[tuple[int, Tensor]]] = {}
        self.plots: dict[str, SpectrumPlot] = {}  # built at a recurrence's first probe, when L and T are known
        self.refused = False  # a ragged probe batch was refused, and said so once

    @override
    def check(self, view: ModuleView) -> None:
        view.require_recurrent(type(self).__name__)
        view.require_probe_loss(type(self).__name__)

    @override
    def layout(self, view: ModuleView) -> Layout:
        lyapunov, jacobian = {}, {}
        for prefix, recurrence in view.recurrences.items():
            for name in recurrence.layer_names():
                layer = prefix + name
                lyapunov[f"{layer} exponents"] = chart(rf"lyapunov/{escaped(layer)}/lambda_\d+")
                lyapunov[f"{layer} gradient horizon: predicted from λ_1 vs measured"] = chart(
                    f"lyapunov/{escaped(layer)}/predicted_horizon", f"grad_time/{escaped(layer)}/horizon"
                )
                jacobian[f"{layer} σ_max(J_t): median and max over t"] = chart(
                    f"jacobian/{escaped(layer)}/sigma_max_(median|max)"
                )
        lyapunov["sum of the k exponents"] = chart(r"lyapunov/(.+/)?layer\d+(_reverse)?/sum")
        return {"lyapunov": lyapunov, "jacobian": jacobian}

    @override
    def measure(self, step: int, batch: Any) -> Measurement:
        try:
            spectra = model_spectra(self.view, batch, self.k, self.power_iterations, self.seed)
        except RaggedBatchError as refusal:  # this diagnostic alone is left out; the others measure the batch
            if not self.refused:
                self.refused = True
                rank_zero_warn(f"{type(self).__name__} is left out: {refusal}")
            return Measurement({}, {})
        values = {}
        for prefix, (exponents, sigma) in spectra.items():  # (L, k), (L, T, B)
            length = sigma.shape[1]
            names = self.view.recurrences[prefix].layer_names()
            for name, lam, sig in zip(names, exponents, sigma, strict=True):  # (k,), (T, B)
                layer = f"{prefix}{name}"
                values.update({f"lyapunov/{layer}/lambda_{i + 1}": value for i, value in enumerate(lam)})
                values[f"lyapunov/{layer}/sum"] = lam.sum()
                values[f"lyapunov/{layer}/predicted_horizon"] = predicted_horizon(lam[0], self.threshold, length)
                values[f"jacobian/{layer}/sigma_max_median"] = sig.quantile(0.5, dim=0).mean()
                values[f"jacobian/{layer}/sigma_max_max"] = sig.amax(dim=0).mean()
        images = {}
        for prefix, (exponents, sigma) in spectra.items():
            history = self.history.setdefault(prefix, [])
            history.append((step, exponents.cpu()))
            if prefix not in self.plots:
                self.plots[prefix] = SpectrumPlot(*exponents.shape, sigma.shape[1])
            image = self.plots[prefix].render([s for s, _ in history], torch.stack([e for _, e in history]))
            images[f"lyapunov/{prefix}spectrum"] = image
        return Measurement(values, images)

    @override
    def state_dict(self) -> dict:
        # The history travels in checkpoints, so a resumed run's image still starts at step 0.
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        history = state_dict["history"]
        # Checkpoints written before several recurrences were probed hold the one history as a list.
        self.history = {"": list(history)} if isinstance(history, list) else {k: list(v) for k, v in history.items()}
