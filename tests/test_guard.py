"""The non-finite guard from the very first update: no finite gradient has been seen, so nothing is reported
as the last good one, and the count of updates in a row starts from zero (checked on every step: logging every
step)."""

from functools import partial

import lightning as L
import pytest
import torch

from seqmem.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from seqmem.errors import ConfigError
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData


class PoisonEveryGradient(L.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        pl_module.head.weight.grad[0, 0] = float("nan")


@pytest.mark.parametrize("max_consecutive", [1, 2])
def test_a_run_that_is_never_finite_stops_after_max_consecutive_updates(tmp_path, max_consecutive):
    L.seed_everything(0, verbose=False)
    data = AddingData(seq_len=5, batch_size=4, train_batches=10, val_batches=1)
    model = SequenceModel(data.spec, cell="gru", hidden_size=4, optimizer=partial(torch.optim.SGD, lr=0.1))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    guard = NonFiniteGuard(max_consecutive=max_consecutive)
    trainer = L.Trainer(
        max_steps=10,
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[PoisonEveryGradient(), guard],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=1,
        accelerator="cpu",
    )
    with pytest.raises(NonFiniteError) as stopped:
        trainer.fit(model, data)
    message = str(stopped.value)
    last = max_consecutive - 1
    assert f"stopped at step {last}: the {max_consecutive} updates of steps 0-{last} had a non-finite" in message
    assert "last finite gradient norm none: no finite gradient)" in message
    assert stopped.value.step == last
    assert (guard.skipped, guard.consecutive) == (max_consecutive, max_consecutive)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # every update was skipped


def test_max_consecutive_must_be_positive():
    with pytest.raises(ConfigError) as err:
        NonFiniteGuard(max_consecutive=0)
    assert str(err.value) == "NonFiniteGuard max_consecutive must be >= 1, got 0"
