r"""
The scalar law: ‖dL/dh_{T−k}‖ = w^k ‖dL/dh_T‖
==============================================

Back-propagating from a loss at the last step T to the state k steps earlier multiplies the gradient by the
transposed step Jacobian k times: :math:`dL/dh_{T-k} = dL/dh_T \cdot J^k`. In a *linear* RNN,
:math:`h_t = W_h h_{t-1} + W_{in} x_t`, the Jacobian is W_h itself; with :math:`W_h = wQ` and Q orthogonal, Q only
rotates, so the norm shrinks by exactly w per step: :math:`\|dL/dh_{T-k}\| = w^k \|dL/dh_T\|`. For w = 0.9 the
gradient at lag 10 is 0.35 of the final one, at lag 50 0.005, at lag 100 2.7e-5.

seqmem has no linear cell, so this script writes one against the cell protocol (a subclass of
:class:`seqmem.models.RecurrentNet`: ``layer_weights``, ``step``, ``layer_parameters``) and measures its
‖dL/dh_t‖ with :func:`seqmem.diagnose.timestep_gradients` — the same computation as the
:class:`~seqmem.callbacks.TimestepGradients` callback. The measured curve and w^k coincide; the script asserts it.
"""

# %%
# A linear cell of one's own
# --------------------------
# ``step`` is the whole recurrence: no nonlinearity, so the step Jacobian is W_h at every step.
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqmem.diagnose import timestep_gradients
from seqmem.models import RecurrentNet

torch.set_num_threads(1)
torch.manual_seed(0)
w, T, H = 0.9, 121, 32  # decay per step, steps (lags 0..120), hidden units


class LinearRNN(RecurrentNet):
    """h_t = W_h h_{t−1} + W_in x_t + b, one layer, W_h = w·Q with Q a random orthogonal matrix."""

    def __init__(self, input_size, hidden_size, num_layers=1, dropout=0.0, w=0.9):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        self.w_in = nn.Parameter(torch.randn(hidden_size, input_size) / input_size**0.5)  # (H, I)
        q = nn.init.orthogonal_(torch.empty(hidden_size, hidden_size, dtype=torch.float64))  # orthogonal in float64
        self.w_h = nn.Parameter(w * q)  # (H, H)
        self.b = nn.Parameter(torch.zeros(hidden_size))  # (H,)

    def layer_weights(self, layer):
        return self.w_in, self.w_h, self.b, None

    def step(self, weights, x_proj, state):
        return (x_proj + state[0] @ weights[1].T,)  # (B, H): no φ, the Jacobian is W_h

    def layer_parameters(self, layer):
        return {"W_in": self.w_in, "W_h": self.w_h, "b": self.b}


class Regressor(nn.Module):
    """The linear RNN read out at its last step only, so the loss reaches h_{T−k} through W_h alone."""

    def __init__(self):
        super().__init__()
        self.rnn = LinearRNN(2, H, w=w)
        self.head = nn.Linear(H, 1)

    def forward(self, x):  # x (B, T, 2)
        out, _ = self.rnn(x)  # (B, T, H)
        return self.head(out[:, -1]).squeeze(-1)  # (B,)


# %%
# Measure ‖dL/dh_t‖
# -----------------
# ``timestep_gradients`` runs the model's recurrences step by step and takes one ``autograd.grad`` with respect
# to every h_t; it returns one (T,) curve per layer, keyed by module path. Float64 makes the comparison exact
# to round-off.
model = Regressor().double()
batch = {"x": torch.randn(16, T, 2, dtype=torch.float64), "y": torch.randn(16, dtype=torch.float64)}


def loss_fn(model, batch):
    return F.mse_loss(model(batch["x"]), batch["y"])


norms = timestep_gradients(model, batch, loss_fn)["rnn/layer0"]  # (T,) ‖dL/dh_t‖, t = 1..T
lags = np.arange(T)  # k = 0 .. T−1
measured = (norms.flip(0) / norms[-1]).numpy()  # (T,) ‖dL/dh_{T−k}‖ / ‖dL/dh_T‖
law = w**lags  # (T,)
for k in (10, 50, 100):
    print(f"lag {k:3d}: w^k = {law[k]:.3g}   measured ratio = {measured[k]:.3g}")
np.testing.assert_allclose(measured, law, rtol=1e-9)  # a broken diagnostic stops the docs build

# %%
# The figure
# ----------
# On a log scale w^k is a straight line of slope log10(0.9) ≈ −0.046 decades per step: the measured ratios
# fall on it at every lag.
fig, ax = plt.subplots(figsize=(6.4, 4))
ax.semilogy(lags, measured, color="C0", lw=2, label=r"measured $\|dL/dh_{T-k}\| / \|dL/dh_T\|$")
ax.semilogy(lags[::10], law[::10], "x", color="black", ms=7, label=r"$w^k$, $w = 0.9$")
for k in (10, 50, 100):
    ax.plot(k, law[k], "o", color="C3", ms=8, mfc="none")
    ax.annotate(f"k = {k}: {law[k]:.2g}", (k, law[k]), textcoords="offset points", xytext=(8, 6))
ax.set_xlabel("lag k (steps back from the loss)")
ax.set_ylabel("gradient norm relative to step T")
ax.set_title(r"Linear RNN, $W_h = 0.9\,Q$: the gradient shrinks as $0.9^k$")
ax.legend()
fig.tight_layout()
plt.show()
