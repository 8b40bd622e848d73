"""SequenceModel: optimizer groups, the step-by-step twin, seeded reproducibility, and that it learns."""

from functools import partial

import lightning as L
import pytest
import torch

from seqmem.errors import ConfigError
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData, CopyData

COPY = CopyData(seq_len=5, batch_size=4).spec


def group_of(optimizer: torch.optim.Optimizer) -> dict[int, list[int]]:
    """Parameter id -> indices of the groups that hold it."""
    groups: dict[int, list[int]] = {}
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            groups.setdefault(id(p), []).append(index)
    return groups


@pytest.mark.parametrize("activation", ["tanh", "modrelu"])
def test_orthogonal_skew_parameters_get_their_own_learning_rate(activation):
    model = SequenceModel(
        COPY,
        cell="orthogonal",
        num_layers=2,
        activation=activation,
        orthogonal_lr_scale=0.25,
        optimizer=partial(torch.optim.RMSprop, lr=0.04),
    )
    optimizer = model.configure_optimizers()
    groups = group_of(optimizer)
    named = dict(model.named_parameters())
    assert all(groups.get(id(p)) is not None and len(groups[id(p)]) == 1 for p in named.values())
    assert len(groups) == len(named)  # nothing outside the model either
    skew = {id(model.net.recurrent[layer].parametrizations.weight.original) for layer in range(2)}
    for name, p in named.items():
        (index,) = groups[id(p)]
        expected_lr = 0.04 * 0.25 if id(p) in skew else 0.04
        assert optimizer.param_groups[index]["lr"] == pytest.approx(expected_lr), name


def test_other_cells_use_one_parameter_group():
    model = SequenceModel(COPY, cell="lstm", optimizer=partial(torch.optim.Adam, lr=0.01))
    optimizer = model.configure_optimizers()
    assert len(optimizer.param_groups) == 1
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("cell", ["vanilla", "orthogonal", "gru", "lstm"])
def test_forward_steps_twin_matches_forward(cell):
    torch.manual_seed(0)
    model = SequenceModel(COPY, cell=cell, hidden_size=8, num_layers=2).eval()
    x = torch.randint(0, COPY.input_size, (3, 9))  # (B, T)
    pred, _ = model(x)  # (B, T, C)
    step_pred, hiddens = model.forward_steps(x)
    torch.testing.assert_close(step_pred, pred, atol=1e-5, rtol=1e-5)
    assert [len(hs) for hs in hiddens] == [9, 9]
    assert all(h.shape == (3, 8) for hs in hiddens for h in hs)


def train_adding(seed: int, max_steps: int, **model_args) -> tuple[SequenceModel, L.Trainer]:
    """Seed, build and fit an adding model with a plain Trainer (no logger, checkpoints or bars)."""
    L.seed_everything(seed, verbose=False)
    data = AddingData(seq_len=20, batch_size=64, train_batches=max_steps, val_batches=4, seed=seed)
    model = SequenceModel(data.spec, **model_args)
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(model, data)
    return model, trainer


@pytest.mark.parametrize("cell", ["orthogonal", "lstm"])
def test_seeded_runs_are_reproducible(cell):
    optimizer = partial(torch.optim.Adam, lr=0.01)
    first, _ = train_adding(3, 5, cell=cell, hidden_size=8, optimizer=optimizer)
    second, _ = train_adding(3, 5, cell=cell, hidden_size=8, optimizer=optimizer)
    other, _ = train_adding(4, 5, cell=cell, hidden_size=8, optimizer=optimizer)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    # A different seed gives different weights: the check above is not vacuous.
    assert any(not torch.equal(a[key], c[key]) for key in a)


def test_lstm_learns_adding_with_t20():
    # Closed-form yardstick: predicting the mean scores Var(U1 + U2) = 1/6; < 0.05 means it remembers.
    model, trainer = train_adding(0, 400, cell="lstm", hidden_size=32, optimizer=partial(torch.optim.Adam, lr=0.01))
    assert trainer.callback_metrics["val/baseline"].item() == pytest.approx(1 / 6)
    assert trainer.callback_metrics["val/loss"].item() < 0.05


def test_a_python_trainer_that_clips_beside_the_model_is_refused_before_training():
    # The check lives in the module's on_fit_start, so a Trainer built in Python is guarded, not only the CLI.
    data = AddingData(seq_len=5, batch_size=4, train_batches=2, val_batches=1)
    model = SequenceModel(data.spec, cell="lstm", hidden_size=4, gradient_clip_val=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(
        max_steps=2,
        gradient_clip_val=0.5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.raises(ConfigError, match="--trainer.gradient_clip_val null"):
        trainer.fit(model, data)
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_monitoring_train_loss_between_logging_steps_keeps_the_latest_logged_value(tmp_path):
    # train/loss reaches Lightning on logging steps only (every 5 here); a ModelCheckpoint saving every 3 steps
    # that monitors it must still run, ranking by the value logged last.
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0, verbose=False)
    data = AddingData(seq_len=5, batch_size=8, train_batches=20, val_batches=1)
    model = SequenceModel(data.spec, cell="lstm", hidden_size=4)
    logged = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if "train/loss" in trainer.callback_metrics:
                logged.append(trainer.callback_metrics["train/loss"].item())

    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="train/loss", every_n_train_steps=3, save_top_k=1)
    trainer = L.Trainer(
        max_steps=20,
        log_every_n_steps=5,
        callbacks=[Record(), checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, data)
    assert len(set(logged)) == 4  # steps 4, 9, 14, 19: one value per logging step, held in between
    assert checkpoint.best_model_score.item() in logged and checkpoint.best_model_path
