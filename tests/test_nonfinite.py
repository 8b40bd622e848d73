"""Non-finite guard: an exploding run is skipped, counted, stopped with one message, checkpoint intact."""

import copy
from functools import partial
from pathlib import Path
from typing import Optional

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmem.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData


class GradNorms(L.Callback):
    """Records the total gradient norm of every update (placed before the guard, so it sees all)."""

    def __init__(self):
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item())


def trainer_for(root: Path, max_steps: int, callbacks: list, logger: Optional[TensorBoardLogger] = None) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        default_root_dir=root,
        logger=logger or False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
        log_every_n_steps=1,
    )


@pytest.mark.parametrize("tbptt_steps", [None, 10])
def test_exploding_vanilla_rnn_is_skipped_counted_and_stopped(tmp_path, tbptt_steps):
    """W_h scaled 20x, no clipping, SGD at lr 1e3: the weights blow up within a few updates."""
    L.seed_everything(0, verbose=False)
    data = AddingData(seq_len=30, batch_size=16, train_batches=100, val_batches=1)
    model = SequenceModel(
        data.spec, cell="vanilla", hidden_size=16, tbptt_steps=tbptt_steps, optimizer=partial(torch.optim.SGD, lr=1e3)
    )
    with torch.no_grad():
        model.net.rnn.weight_hh_l0.mul_(20.0)
    norms, guard = GradNorms(), NonFiniteGuard(max_consecutive=3)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    with pytest.raises(NonFiniteError) as stopped:
        trainer_for(tmp_path, 100, [norms, guard, checkpoints], logger).fit(model, data)

    finite = [n == n and n != float("inf") for n in norms.norms]
    first_bad = finite.index(False)
    assert finite[first_bad:] == [False] * 3  # three in a row, then the stop
    last_good = first_bad - 1
    message = str(stopped.value)
    assert f"stopped at step {first_bad + 2}" in message
    assert f"last finite gradient norm {norms.norms[last_good]:.4g} at step {last_good}" in message
    assert guard.skipped == 3

    # Skipped updates left the weights as the last finite update made them; the checkpoint holds them.
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(saved["state_dict"][name], value), name

    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path)).Reload()
    skipped = events.Scalars("nonfinite/skipped")
    assert [(e.step, e.value) for e in skipped if e.value > 0] == [
        (first_bad, 1.0),
        (first_bad + 1, 2.0),
        (first_bad + 2, 3.0),
    ]


def test_one_nonfinite_update_is_skipped_without_touching_adam_and_training_goes_on(tmp_path):
    """A NaN injected into one gradient: that update leaves weights and Adam's moments and step count
    exactly as they were (Adam skips parameters whose grad is None); the next updates proceed."""
    L.seed_everything(0, verbose=False)
    data = AddingData(seq_len=10, batch_size=8, train_batches=10, val_batches=1)
    model = SequenceModel(data.spec, cell="lstm", hidden_size=8, optimizer=partial(torch.optim.Adam, lr=1e-2))
    snapshots = {}

    class Poison(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 2:
                pl_module.head.weight.grad[0, 0] = float("nan")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            optimizer = trainer.optimizers[0]
            snapshots[trainer.global_step] = (
                copy.deepcopy(pl_module.state_dict()),
                copy.deepcopy(optimizer.state_dict()),
            )

    guard = NonFiniteGuard(max_consecutive=2)
    trainer_for(tmp_path, 5, [Poison(), guard]).fit(model, data)
    (weights_before, adam_before), (weights_after, adam_after) = snapshots[2], snapshots[3]
    for name in weights_before:
        assert torch.equal(weights_before[name], weights_after[name]), name
    for index, state in adam_before["state"].items():
        for key, value in state.items():
            assert torch.equal(adam_after["state"][index][key], value), (index, key)
    assert not torch.equal(snapshots[4][0]["head.weight"], weights_after["head.weight"])  # training went on
    assert (guard.skipped, guard.consecutive) == (1, 0)
