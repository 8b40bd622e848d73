r"""
Saturation: large pre-activations shorten the gradient horizon
==============================================================

The step Jacobian of a tanh RNN is :math:`J_t = \mathrm{diag}(\tanh'(a_t))\, W_h`, with
:math:`a_t = W_h h_{t-1} + W_{in} x_t + b` the pre-activation. Even when W_h preserves norms (W_h = λQ with
λ = 1 and Q orthogonal), every step multiplies the gradient by :math:`\tanh'(a_t) = 1 - \tanh^2(a_t) \le 1`, which
is close to 1 only while :math:`|a_t|` is small: 0.79 at :math:`|a| = 0.5`, 0.42 at 1, 0.07 at 2. Larger inputs
push the pre-activations out, the units saturate, and the gradient fades in fewer steps.

Here a tanh ``nn.RNN`` with W_h = Q, W_in = I and no bias reads Gaussian inputs of growing scale; its
‖dL/dh_t‖ comes from :func:`seqmem.diagnose.timestep_gradients` and its gradient horizon (the largest lag whose
ratio ‖dL/dh_{T−k}‖/‖dL/dh_T‖ is still ≥ 10⁻³) from :func:`seqmem.callbacks.gradient_horizon`.
"""

# %%
# The model: W_h = Q orthogonal, so only tanh' can shrink the gradient
# ----------------------------------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqmem.diagnose import timestep_gradients
from seqmem.measures import gradient_horizon

torch.set_num_threads(1)
torch.manual_seed(0)
H, T, B = 64, 200, 32  # hidden units, steps, sequences
scales = (0.01, 0.1, 0.3, 1.0, 3.0)  # std of the inputs x_t

model = nn.ModuleDict({"rnn": nn.RNN(H, H, batch_first=True), "head": nn.Linear(H, 1)})
with torch.no_grad():
    model["rnn"].weight_hh_l0.copy_(nn.init.orthogonal_(torch.empty(H, H)))  # (H, H) every singular value 1
    model["rnn"].weight_ih_l0.copy_(torch.eye(H))  # (H, H) the input scale is the pre-activation's
    model["rnn"].bias_ih_l0.zero_()
    model["rnn"].bias_hh_l0.zero_()


def loss_fn(model, batch):
    """Read out at the last step only: every earlier h_t is reached through the recurrence alone."""
    out, _ = model["rnn"](batch["x"])  # (B, T, H)
    return F.mse_loss(model["head"](out[:, -1]).squeeze(-1), batch["y"])


# %%
# Measure, for each input scale
# -----------------------------
# The pre-activations are recomputed from the outputs: a_t = x_t + W_h h_{t−1} (no bias), in one matmul.
ratios, mean_abs_a, horizons = {}, {}, {}
for s in scales:
    x = s * torch.randn(B, T, H)  # (B, T, H)
    norms = timestep_gradients(model, {"x": x, "y": torch.zeros(B)}, loss_fn)["rnn/layer0"]  # (T,)
    ratios[s] = (norms.flip(0) / norms[-1]).numpy()  # (T,) ratio at lag k = 0..T−1
    horizons[s] = int(gradient_horizon(norms, threshold=1e-3))
    with torch.no_grad():
        out, _ = model["rnn"](x)  # (B, T, H)
        h_prev = torch.cat([torch.zeros(B, 1, H), out[:, :-1]], dim=1)  # (B, T, H) h_{t−1}
        a = x + h_prev @ model["rnn"].weight_hh_l0.T  # (B, T, H) pre-activations
    mean_abs_a[s] = a.abs().mean().item()
    print(
        f"input std {s:5.2f}: mean |a| = {mean_abs_a[s]:.3f}, mean tanh'(a) = {(1 - out**2).mean():.3f}, "
        f"ratio at lag 50 = {ratios[s][50]:.2e}, horizon = {horizons[s]} steps"
    )
assert (np.diff([horizons[s] for s in scales]) < 0).all(), "the horizon shrinks as the inputs grow"

# %%
# The figure
# ----------
# Left: tanh' against :math:`|a|`, with each input scale's mean :math:`|a|`. Right: the gradient's decay with the
# lag, one line per scale; the dot is the horizon, where the ratio crosses 10⁻³ (a horizon of 199 = T − 1: it never
# does within the sequence).
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
grid = np.linspace(0, 4, 200)
left.plot(grid, 1 - np.tanh(grid) ** 2, color="black", label=r"$\tanh'(a) = 1 - \tanh^2(a)$")
for i, s in enumerate(scales):
    left.axvline(mean_abs_a[s], color=f"C{i}", ls="--", label=f"mean |a|, input std {s}")
    right.semilogy(ratios[s], color=f"C{i}", label=f"input std {s}: horizon {horizons[s]}")
    right.plot(horizons[s], ratios[s][horizons[s]], "o", color=f"C{i}")
left.set_xlabel("|a| (pre-activation)")
left.set_ylabel(r"$\tanh'(a)$")
left.set_title("tanh' shrinks as pre-activations grow")
left.legend(fontsize="small")
right.axhline(1e-3, color="gray", lw=0.8, ls=":")
right.set_ylim(1e-12, 2)
right.set_xlabel("lag k (steps back from the loss)")
right.set_ylabel(r"$\|dL/dh_{T-k}\| / \|dL/dh_T\|$")
right.set_title(r"tanh RNN, $W_h = Q$: gradient horizon (ratio $\geq 10^{-3}$)")
right.legend(fontsize="small")
fig.tight_layout()
plt.show()
