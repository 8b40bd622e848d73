"""
Your own LSTM: callbacks under a Trainer, or a plain loop
=========================================================

seqmem's diagnostics attach to any model that holds torch's recurrent layers: here a plain LightningModule with
an ``nn.LSTM`` that knows nothing of seqmem, trained for 40 steps on the adding task (T = 30). The same numbers
come two ways:

* under ``L.Trainer``, from the callbacks :class:`~seqmem.callbacks.GradientNorms` (the pre-clip gradient norm
  at every step) and :class:`~seqmem.callbacks.TimestepGradients` (‖dL/dh_{T−k}‖ / ‖dL/dh_T‖ at chosen lags, every
  10 steps), written to TensorBoard and read back;
* from a hand-written training loop, with :func:`seqmem.diagnose.parameter_gradient_norms` and
  :func:`seqmem.diagnose.timestep_gradients` (which returns the whole curve over t).

Same initial weights, same batches, same optimizer: the two agree to float round-off, and the script asserts it.
"""

# %%
# The model, as one would write it
# --------------------------------
import copy
import logging
import tempfile
import warnings

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from seqmem.callbacks import GradientNorms, TimestepGradients
from seqmem.diagnose import parameter_gradient_norms, timestep_gradients
from seqmem.tasks import AddingData

torch.set_num_threads(1)
torch.manual_seed(0)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no banner lines in the output below
warnings.filterwarnings("ignore", message=r".*LeafSpec")  # a deprecation inside Lightning, not ours
STEPS, EVERY, LAGS = 40, 10, (1, 5, 10, 20, 29)


class Adder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(2, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def loss(self, batch):
        out, _ = self.lstm(batch["x"])  # (B, T, 32)
        return F.mse_loss(self.head(out[:, -1]).squeeze(-1), batch["y"])  # read out at the last step

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


data = AddingData(seq_len=30, batch_size=32, train_batches=STEPS)  # batch i: x (32, 30, 2), y (32,)
model = Adder()
twin = copy.deepcopy(model)  # the same initial weights, for the plain loop

# %%
# Under the Trainer, with seqmem's callbacks
# ------------------------------------------
# TimestepGradients keeps the first training batch as its probe and differentiates the model's training_step loss.
log_dir = tempfile.mkdtemp()
trainer = L.Trainer(
    max_steps=STEPS,
    logger=TensorBoardLogger(log_dir, name="", version=""),
    callbacks=[GradientNorms(), TimestepGradients(every_n_steps=EVERY, lags=LAGS)],
    log_every_n_steps=1,
    enable_progress_bar=False,
    enable_checkpointing=False,
    enable_model_summary=False,
)
trainer.fit(model, data.train_dataloader())  # training batches only: no validation loop
events = EventAccumulator(log_dir, size_guidance={"scalars": 0})
events.Reload()
logged_norm = np.array([e.value for e in events.Scalars("grad_norm/total")])  # (STEPS,)
logged_ratio = {k: np.array([e.value for e in events.Scalars(f"grad_time/lstm/layer0/ratio_lag{k}")]) for k in LAGS}

# %%
# The plain loop, with seqmem.diagnose
# ------------------------------------
# The diagnostics run after backward and before the optimizer step, where the callbacks run.
optimizer = twin.configure_optimizers()
loop_norm, loop_curves, probe = [], {}, None
for step, batch in enumerate(data.train_dataloader()):
    probe = probe if probe is not None else batch  # the same probe batch as the callback's
    optimizer.zero_grad()
    twin.loss(batch).backward()
    loop_norm.append(parameter_gradient_norms(twin)["grad_norm/total"].item())
    if step % EVERY == 0:
        norms = timestep_gradients(twin, probe, lambda m, b: m.loss(b))["lstm/layer0"]  # (T,)
        loop_curves[step] = (norms.flip(0) / norms[-1]).numpy()  # (T,) at lag k = 0..T−1
    optimizer.step()

for i, (step, curve) in enumerate(loop_curves.items()):
    callback = ", ".join(f"{logged_ratio[k][i]:.3g}" for k in LAGS)
    print(
        f"step {step:2d}, ratio at lags {LAGS}: callback {callback}; loop {', '.join(f'{curve[k]:.3g}' for k in LAGS)}"
    )
np.testing.assert_allclose(logged_norm, loop_norm, rtol=1e-4)
for k in LAGS:
    np.testing.assert_allclose(logged_ratio[k], [loop_curves[s][k] for s in loop_curves], rtol=1e-4)
print(f"grad_norm/total agrees at all {STEPS} steps (first {loop_norm[0]:.4f}, last {loop_norm[-1]:.4f})")

# %%
# The figure
# ----------
# Left: the pre-clip gradient norm at every step, from both. Right: the loop's whole ratio curve at each probe
# step, and the callback's logged lags on it.
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
left.semilogy(logged_norm, color="C0", lw=2, label="GradientNorms under L.Trainer")
left.semilogy(loop_norm, "x", color="black", ms=5, label="parameter_gradient_norms in a loop")
left.set_xlabel("optimizer step")
left.set_ylabel("grad_norm/total (before the step)")
left.set_title("Gradient norm: callback and plain loop")
left.legend(fontsize="small")
for i, (step, curve) in enumerate(loop_curves.items()):
    right.semilogy(curve, color=f"C{i}", label=f"step {step}: timestep_gradients (loop)")
    right.plot(LAGS, [logged_ratio[k][i] for k in LAGS], "o", color=f"C{i}", mfc="none", ms=8)
right.plot([], [], "o", color="gray", mfc="none", label="TimestepGradients ratio_lag<k> (Trainer)")
right.set_xlabel("lag k (steps back from the loss)")
right.set_ylabel(r"$\|dL/dh_{T-k}\| / \|dL/dh_T\|$")
right.set_title("nn.LSTM, adding T = 30: gradient through time")
right.legend(fontsize="small")
fig.tight_layout()
plt.show()
