"""Spectrum of the step Jacobians J_t = ∂s_t/∂s_{t−1} along the trajectory — what actually carries the gradient.

``spectral/*`` reports W_h; the theory's quantity is the product J_T ⋯ J_{k+1}, whose factors include φ′
and the gates: J_t = diag(φ′(g_t)) W_h for an Elman cell, and for the LSTM the Jacobian of the joint
state s = (h, c), dimension D = 2H, whose c-block carries diag(f_t). Per layer, with the layer's input
(the lower layer's output) held fixed:

* finite-time Lyapunov exponents λ_1 ≥ … ≥ λ_k by QR re-orthonormalisation (Benettin): push a seeded
  orthonormal frame Q_0 (D × k) through the step Jacobians, J_t Q_{t−1} = Q_t R_t, and average
  ``ln|R_t[i, i]|`` over t. λ_i is the average log growth per step of the i-th direction, so the product
  of Jacobians shrinks at ≈ e^{λ_1 k} over k steps in its most-preserved direction;
* σ_max(J_t) at every step by power iteration on J_tᵀ J_t: how much one step can stretch a vector.

Only Jacobian-vector products (``torch.func.jvp``, vmapped over the k columns) and vector-Jacobian
products are formed, never a D × D matrix, and nothing is differentiated with respect to a parameter:
the training gradients in ``.grad`` are untouched.
"""

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from seqmem.errors import RaggedBatchError
from seqmem.models import RecurrentNet
from seqmem.models.steps import LayerTrajectory
from seqmem.views import ModuleView


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

    Q_0 = :func:`initial_frame`; for t = 1..T: J_t Q_{t−1} = Q_t R_t (reduced QR); λ_i = (1/T) Σ_t ``ln|R_t[i, i]|``.
    A zero ``|R_t[i, i]|`` (a direction the step annihilates) is floored at the dtype's smallest normal number.

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

    Raises:
        RaggedBatchError: a recurrence stepped a ragged batch (see the message).
    """
    with torch.no_grad():
        _, runs = view.runs(batch, need_loss=False)
    for prefix in view.ragged:
        raise RaggedBatchError(
            f"the Lyapunov exponents of {prefix.rstrip('/') or 'the model'} are not measured on a ragged batch "
            "(a PackedSequence of sequences of different lengths): finite-time exponents over different lengths "
            "are averages over different horizons, not one spectrum; probe a batch of equal lengths"
        )
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
