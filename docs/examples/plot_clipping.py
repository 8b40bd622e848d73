"""
Clipping an exploding RNN
=========================

A tanh RNN whose recurrent matrix has spectral radius 1.5 amplifies what flows back through it: near the origin
its step Jacobian is W_h itself, whose powers grow like 1.5^k, so on the adding task at T = 20 the first gradients
are already large, and plain SGD steps of that size push W_h further out — the norm feeds on itself until the
weights are non-finite. Norm clipping rescales any gradient longer than the threshold back to it; the direction
is kept, the step length bounded, and training stays finite.

Two runs of :class:`~seqmem.module.SequenceModel` (``cell="vanilla", spectral_radius=1.5``) under a small
``L.Trainer``, SGD at lr 0.03, identical but for ``gradient_clip_val=1.0``. The callbacks
:class:`~seqmem.callbacks.GradientNorms` and :class:`~seqmem.callbacks.ClippingEvents` log the gradient norm
*before* clipping at every step to a TensorBoard log in a temporary folder, read back here.
"""

# %%
# Two runs, with and without clipping
# -----------------------------------
import functools
import logging
import tempfile
import warnings

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmem.callbacks import ClippingEvents, GradientNorms
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData

torch.set_num_threads(1)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no banner lines in the output below
warnings.filterwarnings("ignore", message=r".*LeafSpec")  # a deprecation inside Lightning, not ours
STEPS = 300


def run(clip):
    """Train one arm; return its logged scalars {tag: (steps, values)}."""
    torch.manual_seed(0)  # the same init and the same batches for both arms
    data = AddingData(seq_len=20, batch_size=64, train_batches=STEPS)
    model = SequenceModel(
        data.spec,
        cell="vanilla",
        hidden_size=64,
        spectral_radius=1.5,  # W_h rescaled at init: the exploding regime
        gradient_clip_val=clip,  # None: no clipping
        optimizer=functools.partial(torch.optim.SGD, lr=0.03),
    )
    log_dir = tempfile.mkdtemp()
    trainer = L.Trainer(
        max_steps=STEPS,
        logger=TensorBoardLogger(log_dir, name="", version=""),
        callbacks=[GradientNorms(), ClippingEvents()],
        log_every_n_steps=1,  # the per-step diagnostics write on every step
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    events = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: (np.array([e.step for e in events.Scalars(tag)]), np.array([e.value for e in events.Scalars(tag)]))
        for tag in events.Tags()["scalars"]
    }


plain, clipped = run(None), run(1.0)

# %%
# What the logs say
# -----------------
# ``grad_norm/total`` is the pre-clip norm (GradientNorms measures before any clipping); ``clip/*`` tags exist only
# in the clipped run.
steps, norm = plain["grad_norm/total"]
first_bad = steps[~np.isfinite(norm)].min() if not np.isfinite(norm).all() else None
print(
    f"without clipping: largest finite pre-clip norm {norm[np.isfinite(norm)].max():.3g}, "
    f"non-finite from step {first_bad}"
)
print(
    f"with clipping at 1.0: largest pre-clip norm {clipped['grad_norm/total'][1].max():.3g}, "
    f"clipped on {clipped['clip/clipped_fraction'][1][-1]:.0%} of {STEPS} steps, "
    f"mean loss over the last 100 steps {clipped['train/loss'][1][-100:].mean():.3f} (predicting 1 scores 0.167)"
)
assert first_bad is not None and np.isfinite(clipped["train/loss"][1]).all()

# %%
# The figure
# ----------
# The unclipped curves stop where the values become inf or NaN. Clipping keeps training finite; it does not by
# itself make the network learn the task — after 300 steps the clipped run's loss is still near the 0.167 of
# always predicting 1.
fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
for arm, label, color in ((plain, "no clipping", "C3"), (clipped, "norm clipping at 1.0", "C0")):
    top.semilogy(*arm["grad_norm/total"], color=color, label=label)
    bottom.semilogy(*arm["train/loss"], color=color, label=label)
top.axhline(1.0, color="gray", ls=":", lw=1)
if first_bad is not None:
    for ax in (top, bottom):
        ax.axvline(first_bad, color="C3", ls="--", lw=0.8)
    top.annotate(f"non-finite from step {first_bad}", (first_bad, 1e10), xytext=(6, 0), textcoords="offset points")
bottom.axhline(1 / 6, color="gray", ls=":", lw=1, label="predict 1: 0.167")
top.set_ylabel("pre-clip gradient norm")
top.set_title(r"Vanilla RNN, spectral radius 1.5, adding T = 20, SGD lr 0.03")
bottom.set_ylabel("training loss (MSE)")
bottom.set_xlabel("optimizer step")
top.legend()
bottom.legend()
fig.tight_layout()
plt.show()
