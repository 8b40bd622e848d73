"""The step-by-step path's building blocks: the update of each family as a pure function, and one layer's run.

A step function maps ``(weights, x_proj, state) -> new state``: ``weights`` are one layer's tensors in torch's
layout (W_in, W_h, b_in, b_h, ...), ``x_proj`` (B, gates·H) is W_in x_t + b_in for one step, and ``state`` a
tuple of (B, ·) tensors, (h,) or (h, c). seqmem's cells (``RecurrentNet.step``) and the adapters that step
torch's own ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` and their cells (``seqmem.views``) call the same functions, so
a user's ``nn.LSTM`` and seqmem's LSTM are differentiated through one implementation.
"""

from collections.abc import Callable
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.errors import ConfigError

#: (weights, x_proj (B, gates·H), state) -> new state, each a tuple of (B, ·) tensors.
StepFn = Callable[[tuple[Tensor, ...], Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]


def elman_step(
    weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...], nonlinearity: str = "tanh"
) -> tuple[Tensor, ...]:
    """h_t = φ(W_in x_t + b_in + W_h h_{t−1} + b_h), φ = tanh or relu (nn.RNN's ``nonlinearity``)."""
    pre = x_proj + F.linear(state[0], weights[1], weights[3])  # (B, H)
    return (torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre),)


def gru_step(weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """torch's GRU update, gates (r, z, n): h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}, n = tanh(x_n + r ⊙ (W_hn h + b_hn))."""
    _, w_h, _, b_h = weights[:4]
    h = state[0]  # (B, H)
    sizes = (2 * h.shape[-1], h.shape[-1])
    gx_rz, gx_n = x_proj.split(sizes, dim=1)  # (B, 2H), (B, H)
    gh_rz, gh_n = F.linear(h, w_h, b_h).split(sizes, dim=1)  # b_h stays inside r ⊙ (...) as in torch
    # Fused forms (r and z in one sigmoid, addcmul, lerp) keep the step path's op count low.
    r, z = torch.sigmoid(gx_rz + gh_rz).chunk(2, dim=1)  # each (B, H)
    n = torch.tanh(torch.addcmul(gx_n, r, gh_n))  # (B, H)
    return (torch.lerp(n, h, z),)  # (1 - z) ⊙ n + z ⊙ h


def lstm_step(weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """torch's LSTM update, gates (i, f, g, o): c_t = f ⊙ c_{t−1} + i ⊙ g, h_t = o ⊙ tanh(c_t).

    A fifth weight, W_hr (P, H), is nn.LSTM's ``proj_size`` projection: h_t = W_hr (o ⊙ tanh(c_t)), (B, P).
    """
    w_h, b_h = weights[1], weights[3]
    h, c = state  # (B, P or H), (B, H)
    i, f, g, o = (x_proj + F.linear(h, w_h, b_h)).chunk(4, dim=1)  # each (B, H)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)  # (B, H)
    if len(weights) > 4:
        h = F.linear(h, weights[4])  # (B, P)
    return h, c


class LayerTrajectory(NamedTuple):
    """One layer's step-by-step run over a batch: everything its step Jacobians and its h_t depend on.

    Attributes:
        step: the layer's step function (:data:`StepFn`).
        weights: the layer's step weights.
        x_proj: (B, T, gates·H) projected inputs W_in x_t + b_in, in the order the layer consumed them (a
            reverse direction's run from its first step, the sequence's last position).
        states: s_0 … s_T, each a tuple of (B, ·) tensors (h, or h and c): the state each step started from,
            then the final one.
        lengths: (B,) each sequence's own number of steps in a ragged batch (a ``PackedSequence``): past it a
            sequence's state stays as it ended, so s_T is every sequence's own final state; None: every sequence
            runs all T steps.
    """

    step: StepFn
    weights: tuple[Tensor, ...]
    x_proj: Tensor
    states: list[tuple[Tensor, ...]]
    lengths: Optional[Tensor] = None

    @property
    def hiddens(self) -> list[Tensor]:
        """h_1 … h_T, each (B, H): the tensors the rest of the graph consumed."""
        return [s[0] for s in self.states[1:]]

    def detached(self) -> "LayerTrajectory":
        """The same run cut from autograd (what a Jacobian probe differentiates anew)."""
        return LayerTrajectory(
            self.step,
            tuple(None if w is None else w.detach() for w in self.weights),
            self.x_proj.detach(),
            [tuple(part.detach() for part in s) for s in self.states],
            self.lengths,
        )


def run_steps(
    step: StepFn,
    weights: tuple[Tensor, ...],
    x_proj: Tensor,
    state: tuple[Tensor, ...],
    lengths: Optional[Tensor] = None,
) -> LayerTrajectory:
    """Run one layer step by step from ``state`` over ``x_proj`` (B, T, gates·H); with ``lengths`` (B,), a sequence
    whose steps are over keeps its state (the steps past its end are computed and discarded)."""
    states = [state]
    # unbind, not x_proj[:, t]: the backward of T selects would write T full-size zero gradients
    # (O(T²) memory traffic); unbind's backward is one stack.
    for t, x_t in enumerate(x_proj.unbind(1)):  # (B, gates*H)
        new = step(weights, x_t, states[-1])
        if lengths is not None:
            running = (t < lengths)[:, None]  # (B, 1)
            new = tuple(torch.where(running, part, old) for part, old in zip(new, states[-1], strict=True))
        states.append(new)
    return LayerTrajectory(step, weights, x_proj, states, lengths)


def join_calls(calls: list[LayerTrajectory]) -> LayerTrajectory:
    """Successive runs of one layer (a cell called once per step, a module called on chunks) as one trajectory.

    Each step keeps the state it actually started from, so the Jacobian of step t is evaluated where the
    layer stood, whatever the caller did to the state between calls.
    """
    if len(calls) == 1:
        return calls[0]
    if any(call.lengths is not None for call in calls):
        raise ConfigError(
            "the per-timestep diagnostics measure a PackedSequence in one call of its layer, and this layer was "
            f"called {len(calls)} times on the probe batch: pack each probe batch into one call"
        )
    x_proj = torch.cat([call.x_proj for call in calls], dim=1)  # (B, ΣT, gates*H)
    states = [s for call in calls for s in call.states[:-1]] + [calls[-1].states[-1]]
    return LayerTrajectory(calls[0].step, calls[0].weights, x_proj, states)
