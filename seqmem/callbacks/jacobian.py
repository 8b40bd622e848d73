"""Spectrum of the step Jacobians J_t = ∂s_t/∂s_{t−1} along the trajectory — what actually carries the gradient.

``spectral/*`` reports W_h; the theory's quantity is the product J_T ⋯ J_{k+1}, whose factors include φ′
and the gates: J_t = diag(φ′(g_t)) W_h for an Elman cell, and for the LSTM the Jacobian of the joint
state s = (h, c), dimension D = 2H, whose c-block carries diag(f_t). Per layer, with the layer's input
(the lower layer's output) held fixed:

* finite-time Lyapunov exponents λ_1 ≥ … ≥ λ_k by QR re-orthonormalisation (Benettin): push a seeded
  orthonormal frame Q_0 (D × k) through the step Jacobians, J_t Q_{t−1} = Q_t R_t, and average
  ln|R_t[i, i]| over t. λ_i is the average log growth per step of the i-th direction, so the product
  of Jacobians shrinks at ≈ e^{λ_1 k} over k steps in its most-preserved direction;
* σ_max(J_t) at every step by power iteration on J_tᵀ J_t: how much one step can stretch a vector.

Only Jacobian-vector products (``torch.func.jvp``, vmapped over the k columns) and vector-Jacobian
products are formed, never a D × D matrix, and nothing is differentiated with respect to a parameter:
the training gradients in ``.grad`` are untouched.
"""

import math
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor
from torch.func import jvp, vjp, vmap
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from seqmem.callbacks.base import Layout, chart, escaped, write_scalars
from seqmem.callbacks.probe import ProbeDiagnostic
from seqmem.errors import require
from seqmem.models import RecurrentNet
from seqmem.models.steps import LayerTrajectory
from seqmem.views import LossFn, ModuleView


def layer_trajectories(net: RecurrentNet, x: Tensor) -> list[LayerTrajectory]:
    """Run a seqmem cell's step-by-step path once, without autograd, keeping every layer's full state at every step.

    The same run as ``RecurrentNet.forward_steps`` (both are ``RecurrentNet.layer_runs``) but keeping the whole
    state (the LSTM's c too), from a zero initial state, cut from autograd.

    Args:
        net: the recurrent network (in eval mode: no dropout between layers, the network a probe measures).
        x: (B, T, input_size) inputs (already embedded for token tasks).

    Returns:
        One :class:`~seqmem.models.steps.LayerTrajectory` per layer, bottom first.
    """
    with torch.no_grad():
        return [run.detached() for run in net.layer_runs(x)[2]]


def state_dims(trajectory: LayerTrajectory) -> tuple[int, ...]:
    """The sizes of the parts of the layer's state: (H,), (H, H) for the LSTM's (h, c), (P, H) with proj_size."""
    return tuple(part.shape[-1] for part in trajectory.states[0])


def joint_step(trajectory: LayerTrajectory, weights: tuple[Tensor, ...], x_proj: Tensor, state: Tensor) -> Tensor:
    """The layer's step on the flattened joint state: (N, D) -> (N, D), D = Σ state_dims, (h, c) for the LSTM."""
    parts = state.split(state_dims(trajectory), dim=-1)  # (N, H) [, (N, H)]
    return torch.cat(trajectory.step(weights, x_proj, parts), dim=-1)  # (N, D)


def tangent_map(trajectory: LayerTrajectory, x_proj: Tensor, state: Tensor) -> Callable[[Tensor], Tensor]:
    """v ↦ J v, J = ∂s_t/∂s_{t−1} of every row at ``state`` (N, D), with ``x_proj`` and the layer's weights held
    fixed.

    The fixed inputs enter as primals with explicit zero tangents: closed over as constants, forward AD would
    give them ZeroTensor tangents, whose arithmetic takes a slow Python path in torch 2.13 (≈0.7 ms per op
    on CPU, most of the probe's time at small H); real zeros cost one cheap op each.
    """
    fixed = [x_proj, *trajectory.weights]
    given = [i for i, f in enumerate(fixed) if f is not None]  # a cell may have no tensor in a weight's place
    zeros = tuple(torch.zeros_like(fixed[i]) for i in given)

    def step(s: Tensor, *tensors: Tensor) -> Tensor:
        inputs = list(fixed)
        for i, tensor in zip(given, tensors, strict=True):
            inputs[i] = tensor
        return joint_step(trajectory, tuple(inputs[1:]), inputs[0], s)  # (N, D)

    primals = tuple(fixed[i] for i in given)
    return lambda v: jvp(step, (state, *primals), (v, *zeros))[1]  # (N, D)


def initial_frame(dim: int, k: int, seed: int, like: Tensor) -> Tensor:
    """Q_0: a random orthonormal (dim, k) frame from its own seeded generator, never the global one.

    Drawn in float64 on the CPU, so the same seed gives the same frame on every device and dtype.

    Args:
        dim: D, the dimension of the joint state.
        k: number of columns (≤ dim).
        seed: seed of the frame's generator.
        like: tensor whose dtype and device the frame takes.

    Returns:
        (dim, k) tensor with orthonormal columns.
    """
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(dim, k, generator=generator, dtype=torch.float64)  # (D, k)
    return torch.linalg.qr(gaussian).Q.to(like)  # (D, k)


def push_frame(push: Callable[[Tensor], Tensor], frame: Tensor) -> Tensor:
    """J Q: a :func:`tangent_map` applied to every column of ``frame`` (B, D, k).

    vmap over the k columns: the primal step is computed once, only the tangents are batched.
    """
    return vmap(push, in_dims=2, out_dims=2)(frame)  # (B, D, k)


def lyapunov_exponents(trajectory: LayerTrajectory, k: int, seed: int = 0) -> Tensor:
    """Finite-time Lyapunov exponents of one layer along its trajectory, per sequence (Benettin's QR method).

    Q_0 = :func:`initial_frame`; for t = 1..T: J_t Q_{t−1} = Q_t R_t (reduced QR); λ_i = (1/T) Σ_t ln|R_t[i, i]|.
    A zero |R_t[i, i]| (a direction the step annihilates) is floored at the dtype's smallest normal number.

    Args:
        trajectory: the layer's run (cut from autograd).
        k: number of exponents (capped at the joint state's dimension D).
        seed: seed of Q_0.

    Returns:
        (B, min(k, D)) exponents in the frame's column order, which the QR makes descending as T grows.
    """
    x_proj = trajectory.x_proj  # (B, T, gates*H)
    batch, length = x_proj.shape[:2]
    dim = sum(state_dims(trajectory))
    frame = initial_frame(dim, min(k, dim), seed, x_proj).expand(batch, -1, -1)  # (B, D, k)
    log_growth = x_proj.new_zeros(batch, frame.shape[-1])  # (B, k)
    tiny = torch.finfo(x_proj.dtype).tiny
    for t in range(length):
        state = torch.cat(trajectory.states[t], dim=-1)  # (B, D) s_{t−1}
        pushed = push_frame(tangent_map(trajectory, x_proj[:, t], state), frame)  # (B, D, k) J_t Q_{t−1}
        frame, r = torch.linalg.qr(pushed)  # (B, D, k), (B, k, k)
        log_growth += r.diagonal(dim1=-2, dim2=-1).abs().clamp_min(tiny).log()  # (B, k)
    return log_growth / length  # (B, k)


def _unit(v: Tensor) -> Tensor:
    """Rows of v (N, D) scaled to unit norm; a zero row stays zero."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)  # (N, D)


def jacobian_sigma_max(trajectory: LayerTrajectory, iterations: int, seed: int = 0) -> Tensor:
    """σ_max(J_t) of one layer at every step and sequence, by power iteration on J_tᵀ J_t.

    The step acts row by row, so the T steps stacked along the batch form one map whose Jacobian is
    block-diagonal with blocks J_t: every (t, sequence) is iterated at once, with no loop over time.
    Each iteration is one jvp and one vjp; the estimate ‖J_t v‖ never exceeds σ_max(J_t).

    Args:
        trajectory: the layer's run (cut from autograd).
        iterations: power iterations (each v ← J_tᵀ J_t v / ‖·‖).
        seed: seed of the random start vectors (own generator).

    Returns:
        (T, B) estimates of σ_max(J_t).
    """
    x_proj = trajectory.x_proj  # (B, T, gates*H)
    batch, length = x_proj.shape[:2]
    inputs = x_proj.transpose(0, 1).reshape(length * batch, -1)  # (T*B, gates*H), time-major
    states = torch.stack([torch.cat(s, dim=-1) for s in trajectory.states[:-1]])  # (T, B, D) s_0..s_{T−1}
    states = states.view(length * batch, -1)  # (T*B, D)
    push = tangent_map(trajectory, inputs, states)  # v ↦ J_t v of every row
    _, pull = vjp(lambda s: joint_step(trajectory, trajectory.weights, inputs, s), states)  # u ↦ J_tᵀ u, every row
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(states.shape, generator=generator, dtype=torch.float64).to(states)  # (T*B, D)
    for _ in range(iterations):
        (v,) = pull(push(_unit(v)))  # (T*B, D) J_tᵀ J_t v
    sigma = push(_unit(v)).norm(dim=-1)  # (T*B,) ‖J_t v‖
    return sigma.view(length, batch)  # (T, B)


def trajectory_spectrum(
    trajectories: list[LayerTrajectory], k: int = 8, power_iterations: int = 10, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Lyapunov exponents and σ_max(J_t) of every layer of one recurrence (the probe's measurement).

    Args:
        trajectories: the layers' runs, cut from autograd, bottom first.
        k: exponents per layer (capped at the joint state's dimension D).
        power_iterations: power iterations of the σ_max estimate.
        seed: seed of Q_0 and of the power-iteration start.

    Returns:
        exponents (L, min(k, D)), averaged over the batch, and σ_max (L, T, B).
    """
    exponents, sigmas = [], []
    for trajectory in trajectories:
        exponents.append(lyapunov_exponents(trajectory, k, seed).mean(dim=0))  # (k,)
        sigmas.append(jacobian_sigma_max(trajectory, power_iterations, seed))  # (T, B)
    return torch.stack(exponents), torch.stack(sigmas)  # (L, k), (L, T, B)


def jacobian_spectrum(
    net: RecurrentNet, x: Tensor, k: int = 8, power_iterations: int = 10, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """:func:`trajectory_spectrum` of a seqmem cell on inputs ``x`` (B, T, input_size), from a zero state.

    Args:
        net: the recurrent network (in eval mode for a deterministic measurement).
        x: (B, T, input_size) inputs, already embedded for token tasks.
        k: exponents per layer (capped at D).
        power_iterations: power iterations of the σ_max estimate.
        seed: seed of Q_0 and of the power-iteration start.

    Returns:
        exponents (L, min(k, D)), averaged over the batch, and σ_max (L, T, B).
    """
    return trajectory_spectrum(layer_trajectories(net, x), k, power_iterations, seed)


def model_spectra(view: ModuleView, batch: Any, k: int = 8, power_iterations: int = 10, seed: int = 0) -> dict:
    """:func:`trajectory_spectrum` of every recurrence of a model, along its run on ``batch``.

    Args:
        view: the model's view.
        batch: a batch as the model's loss takes it (one forward, without autograd; the loss is not used).
        k: exponents per layer (capped at D).
        power_iterations: power iterations of the σ_max estimate.
        seed: seed of Q_0 and of the power-iteration start.

    Returns:
        {tag prefix: (exponents (L, k), σ_max (L, T, B))}; layers and steps in each layer's own order.
    """
    with torch.no_grad():
        _, runs = view.runs(batch, need_loss=False)
    return {
        prefix: trajectory_spectrum([layer.detached() for layer in layers], k, power_iterations, seed)
        for prefix, (layers, _) in runs.items()
    }


def predicted_horizon(lambda_1: Tensor, threshold: float, length: int) -> Tensor:
    """Gradient horizon predicted by λ_1: the largest lag k with e^{λ_1 k} ≥ threshold.

    The same criterion as ``gradient_horizon`` (ratio to lag 0 at least ``threshold``) applied to the
    pure exponential: floor(ln(threshold) / λ_1) for λ_1 < 0, capped at T − 1; T − 1 for λ_1 ≥ 0.

    Args:
        lambda_1: (...) top exponents.
        threshold: the horizon threshold, in (0, 1).
        length: T, the sequence length (lags run 0..T−1).

    Returns:
        (...) long tensor of lags.
    """
    # clamp_max keeps the division finite where λ_1 ≥ 0; those entries take T − 1 below anyway.
    lags = torch.floor(math.log(threshold) / lambda_1.clamp_max(-torch.finfo(lambda_1.dtype).tiny))  # (...)
    return torch.where(lambda_1 < 0, lags.clamp(max=length - 1), length - 1).long()  # (...)


class SpectrumPlot:
    """The image ``lyapunov/spectrum``: every exponent against training step, one panel per layer, one line
    per exponent index, coloured by index.

    The figure is built once and redrawn with the growing history: building one and drawing it afresh
    costs about 0.3 s on a CPU core, twice the probe's own measurement on a small cell, while redrawing
    a kept one costs about 0.1 s. Margins are fixed for the same reason (a layout engine would lay it out
    again on every draw). Built with ``Figure``, not pyplot: it needs no display and selects no backend.

    Args:
        num_layers: L, one panel each.
        k: exponents per layer, one line each.
        length: T of the probe sequences (for the title).
    """

    def __init__(self, num_layers: int, k: int, length: int):
        cmap = colormaps["viridis"]
        norm = BoundaryNorm(torch.arange(k + 1).add(0.5).tolist(), cmap.N)  # one colour per index 1..k
        figure = Figure(figsize=(2.5 + 4.0 * num_layers, 3.6))
        figure.subplots_adjust(left=0.9 / figure.get_figwidth(), right=0.9, bottom=0.15, top=0.8, wspace=0.1)
        self.axes = figure.subplots(1, num_layers, sharey=True, squeeze=False)[0]
        self.lines = []  # lines[layer][i]: exponent i + 1 of the layer
        for layer, ax in enumerate(self.axes):
            self.lines.append([ax.plot([], [], marker="o", markersize=3, color=cmap(norm(i + 1)))[0] for i in range(k)])
            ax.axhline(0.0, color="grey", linestyle=":", linewidth=1, label="λ = 0: neither grows nor shrinks")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            ax.set_title(f"layer {layer}")
            ax.set_xlabel("training step")
            ax.legend(loc="lower right", fontsize="small")
        self.axes[0].set_ylabel("λ_i: mean ln growth per step")
        ticks = range(1, k + 1, max(1, k // 8))
        bar = figure.colorbar(
            ScalarMappable(norm, cmap),
            ax=list(self.axes),
            label="exponent index i (1 = largest)",
            ticks=ticks,
            pad=0.02,
        )
        bar.ax.invert_yaxis()  # λ_1, the largest, on top as in the panels
        figure.suptitle(
            f"Finite-time Lyapunov exponents of the step Jacobians J_t (probe batch, T = {length})", fontsize="medium"
        )
        self.canvas = FigureCanvasAgg(figure)

    def render(self, steps: list[int], exponents: Tensor) -> np.ndarray:
        """The plot of every probe so far as an (H, W, 3) uint8 RGB image.

        Args:
            steps: training steps of the probes, (P,).
            exponents: (P, L, k) exponents of every probe, on the CPU.
        """
        pad = max(1.0, 0.05 * (max(steps) - min(steps)))  # a lone first probe still gets a sensible x-axis
        for layer, (ax, lines) in enumerate(zip(self.axes, self.lines, strict=True)):
            for i, line in enumerate(lines):
                line.set_data(steps, exponents[:, layer, i].tolist())
            ax.set_xlim(min(steps) - pad, max(steps) + pad)
            ax.relim()
            ax.autoscale_view(scalex=False)
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)


class JacobianSpectrum(ProbeDiagnostic):
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
    def probe_and_log(self, writer: SummaryWriter, view: ModuleView, batch: Any, step: int) -> None:
        spectra = model_spectra(view, batch, self.k, self.power_iterations, self.seed)
        values = {}
        for prefix, (exponents, sigma) in spectra.items():  # (L, k), (L, T, B)
            length = sigma.shape[1]
            names = view.recurrences[prefix].layer_names()
            for name, lam, sig in zip(names, exponents, sigma, strict=True):  # (k,), (T, B)
                layer = f"{prefix}{name}"
                values.update({f"lyapunov/{layer}/lambda_{i + 1}": value for i, value in enumerate(lam)})
                values[f"lyapunov/{layer}/sum"] = lam.sum()
                values[f"lyapunov/{layer}/predicted_horizon"] = predicted_horizon(lam[0], self.threshold, length)
                values[f"jacobian/{layer}/sigma_max_median"] = sig.quantile(0.5, dim=0).mean()
                values[f"jacobian/{layer}/sigma_max_max"] = sig.amax(dim=0).mean()
        write_scalars(writer, values, step)
        for prefix, (exponents, sigma) in spectra.items():
            history = self.history.setdefault(prefix, [])
            history.append((step, exponents.cpu()))
            if prefix not in self.plots:
                self.plots[prefix] = SpectrumPlot(*exponents.shape, sigma.shape[1])
            image = self.plots[prefix].render([s for s, _ in history], torch.stack([e for _, e in history]))
            writer.add_image(f"lyapunov/{prefix}spectrum", image, step, dataformats="HWC")

    @override
    def state_dict(self) -> dict:
        # The history travels in checkpoints, so a resumed run's image still starts at step 0.
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        history = state_dict["history"]
        # Checkpoints written before several recurrences were probed hold the one history as a list.
        self.history = {"": list(history)} if isinstance(history, list) else {k: list(v) for k, v in history.items()}
