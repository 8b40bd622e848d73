"""Non-finite guard: an exploding run is skipped, counted, stopped with one message and a checkpoint of the
last good weights; a skipped update leaves weights and optimizer state exactly as they were, whichever way
the optimizer is skipped (fused found_inf, masked update, host decision on a first update)."""

import copy
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmem.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from seqmem.errors import ConfigError
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData


class GradNorms(L.Callback):
    """Records the total gradient norm of every update (placed before the guard, so it sees all)."""

    def __init__(self):
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item())


def trainer_for(
    root: Path,
    max_steps: int,
    callbacks: list,
    logger: Optional[TensorBoardLogger] = None,
    log_every_n_steps: int = 1,
    **options,
) -> L.Trainer:
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
        log_every_n_steps=log_every_n_steps,
        **options,
    )


def exploding_model(tbptt_steps: Optional[int] = None) -> tuple[SequenceModel, AddingData]:
    """W_h scaled 20x, no clipping, SGD at lr 1e3: the weights blow up within a few updates."""
    L.seed_everything(0, verbose=False)
    data = AddingData(seq_len=30, batch_size=16, train_batches=100, val_batches=1)
    model = SequenceModel(
        data.spec, cell="vanilla", hidden_size=16, tbptt_steps=tbptt_steps, optimizer=partial(torch.optim.SGD, lr=1e3)
    )
    with torch.no_grad():
        model.net.rnn.weight_hh_l0.mul_(20.0)
    return model, data


def assert_checkpoint_holds(path: Path, model: torch.nn.Module) -> None:
    """The checkpoint at ``path`` holds exactly the model's (finite) weights."""
    saved = torch.load(path, weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(saved["state_dict"][name], value), name


@pytest.mark.parametrize("tbptt_steps", [None, 10])
def test_exploding_vanilla_rnn_is_skipped_counted_and_stopped(tmp_path, tbptt_steps):
    model, data = exploding_model(tbptt_steps)
    norms, guard = GradNorms(), NonFiniteGuard(max_consecutive=3)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    with pytest.raises(NonFiniteError) as stopped:
        trainer_for(tmp_path, 100, [norms, guard, checkpoints], logger).fit(model, data)

    finite = [n == n and n != float("inf") for n in norms.norms]
    first_bad = finite.index(False)
    assert finite[first_bad:] == [False] * 3  # three in a row, then the stop (every step is a logging step)
    last_good = first_bad - 1
    message = str(stopped.value)
    assert "\n" not in message
    assert f"stopped at step {first_bad + 2}: the 3 updates of steps {first_bad}-{first_bad + 2} " in message
    assert f"last finite gradient norm {norms.norms[last_good]:.4g} at step {last_good}" in message
    assert f"the last good weights are saved in {tmp_path / 'ckpt' / 'last.ckpt'}." in message
    assert guard.skipped == 3

    # Skipped updates left the weights as the last finite update made them; the named checkpoint holds them
    # (an earlier last.ckpt existed: ModelCheckpoint saved one after every finite update).
    assert_checkpoint_holds(tmp_path / "ckpt" / "last.ckpt", model)

    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path)).Reload()
    skipped = events.Scalars("nonfinite/skipped")
    assert [(e.step, e.value) for e in skipped if e.value > 0] == [
        (first_bad, 1.0),
        (first_bad + 1, 2.0),
        (first_bad + 2, 3.0),
    ]


def test_a_stop_without_any_checkpoint_writes_one_and_names_it(tmp_path):
    """No ModelCheckpoint, no logger: the stop still leaves the last good weights in <root>/checkpoints/last.ckpt."""
    model, data = exploding_model()
    trainer = trainer_for(tmp_path, 100, [NonFiniteGuard(max_consecutive=2)], enable_checkpointing=False)
    with pytest.raises(NonFiniteError, match="the last good weights are saved in (.*)\\. Lower") as stopped:
        trainer.fit(model, data)
    path = tmp_path / "checkpoints" / "last.ckpt"
    assert f"saved in {path}." in str(stopped.value)
    assert_checkpoint_holds(path, model)
    # Lightning resumes from it (weights, optimizer, loops, the guard's counts) at the step where the run stopped.
    resumed, guard = SequenceModel(data.spec, cell="vanilla", hidden_size=16), NonFiniteGuard(max_consecutive=2)
    again = trainer_for(tmp_path / "again", trainer.global_step, [guard], enable_checkpointing=False)
    again.fit(resumed, data, ckpt_path=path)
    assert again.global_step == trainer.global_step
    assert (guard.skipped, guard.consecutive) == (2, 2) and guard.last_finite_norm.isfinite()
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_without_logging_the_stop_is_decided_every_max_consecutive_steps(tmp_path):
    """log_every_n_steps 0: the counters are read on steps K-1, 2K-1, ...: the run stops on the first of those
    with at least K non-finite updates in a row, so at most 2K-1 updates are skipped."""
    model, data = exploding_model()
    norms, guard = GradNorms(), NonFiniteGuard(max_consecutive=4)
    with pytest.raises(NonFiniteError, match=r"training stopped at step (\d+)") as stopped:
        trainer_for(tmp_path, 100, [norms, guard], log_every_n_steps=0, enable_checkpointing=False).fit(model, data)
    first_bad = [n == n and n != float("inf") for n in norms.norms].index(False)
    stop = len(norms.norms) - 1
    assert (stop + 1) % 4 == 0 and 4 <= stop - first_bad + 1 < 8
    assert f"the {stop - first_bad + 1} updates of steps {first_bad}-{stop}" in str(stopped.value)
    assert guard.skipped == stop - first_bad + 1


OPTIMIZERS = {
    "adam": partial(torch.optim.Adam, lr=1e-2),
    "adam-fused": partial(torch.optim.Adam, lr=1e-2, fused=True),
    "adamw-fused": partial(torch.optim.AdamW, lr=1e-2, fused=True),
    "rmsprop-centered-momentum": partial(torch.optim.RMSprop, lr=1e-2, momentum=0.9, centered=True),
    "sgd-momentum": partial(torch.optim.SGD, lr=1e-2, momentum=0.9, dampening=0.1),
    "sgd-momentum-fused": partial(torch.optim.SGD, lr=1e-2, momentum=0.9, fused=True),
}


def snapshots_around_a_poisoned_update(
    tmp_path: Path, optimizer: Callable, poisoned_step: int, steps: int = 5, decide_on: str = "auto"
) -> tuple[dict[int, tuple[dict, dict]], NonFiniteGuard]:
    """Weights and optimizer state after every update of an LSTM fit whose gradient at ``poisoned_step`` holds
    a NaN (snapshot -1: before training)."""
    L.seed_everything(0, verbose=False)
    data = AddingData(seq_len=10, batch_size=8, train_batches=10, val_batches=1)
    model = SequenceModel(data.spec, cell="lstm", hidden_size=8, optimizer=optimizer)
    snapshots = {-1: (copy.deepcopy(model.state_dict()), {"state": {}})}

    class Poison(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == poisoned_step:
                pl_module.head.weight.grad[0, 0] = float("nan")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            optimizer = trainer.optimizers[0]
            snapshots[trainer.global_step - 1] = (
                copy.deepcopy(pl_module.state_dict()),
                copy.deepcopy(optimizer.state_dict()),
            )

    guard = NonFiniteGuard(max_consecutive=2, decide_on=decide_on)
    trainer_for(tmp_path, steps, [Poison(), guard], enable_checkpointing=False).fit(model, data)
    return snapshots, guard


def assert_same_state(before: tuple[dict, dict], after: tuple[dict, dict]) -> None:
    (weights_before, optimizer_before), (weights_after, optimizer_after) = before, after
    for name in weights_before:
        assert torch.equal(weights_before[name], weights_after[name]), name
    assert optimizer_before["state"].keys() == optimizer_after["state"].keys()
    for index, state in optimizer_before["state"].items():
        assert state.keys() == optimizer_after["state"][index].keys()
        for key, value in state.items():
            assert torch.equal(optimizer_after["state"][index][key], value), (index, key)


@pytest.mark.parametrize("decide_on", ["device", "host"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_skipped_update_leaves_weights_and_optimizer_state_untouched(tmp_path, name, decide_on):
    """A NaN in one gradient (step 2): that update leaves the weights and every optimizer state tensor (moments,
    momentum buffers, step counts) bit for bit as they were; the next updates proceed. Decided on the device
    (found_inf or the masked update, a GPU's way) and on the host (a CPU's)."""
    snapshots, guard = snapshots_around_a_poisoned_update(
        tmp_path, OPTIMIZERS[name], poisoned_step=2, decide_on=decide_on
    )
    assert_same_state(snapshots[1], snapshots[2])
    assert not torch.equal(snapshots[3][0]["head.weight"], snapshots[2][0]["head.weight"])  # training went on
    assert not torch.equal(snapshots[1][0]["head.weight"], snapshots[0][0]["head.weight"])  # and had before
    assert (guard.skipped, guard.consecutive) == (1, 0)


@pytest.mark.parametrize("name", ["adam", "sgd-momentum-fused"])
def test_a_skipped_first_update_creates_no_optimizer_state(tmp_path, name):
    """The very first update has no optimizer state to put back: the guard decides on the host and the
    optimizer state stays empty, so the first finite update starts the moments (or momentum) afresh."""
    snapshots, guard = snapshots_around_a_poisoned_update(tmp_path, OPTIMIZERS[name], poisoned_step=0)
    assert_same_state(snapshots[-1], snapshots[0])
    assert snapshots[0][1]["state"] == {}
    assert snapshots[1][1]["state"] and guard.skipped == 1


def test_auto_decides_on_the_host_on_a_cpu_and_on_the_device_elsewhere(tmp_path, monkeypatch):
    """ "auto" reads the flag where a read is free (the CPU) and keeps no copies there; on an accelerator it keeps
    the decision on the device. The same fit trains bit for bit alike whichever way the skip is decided."""
    guard = NonFiniteGuard()
    assert guard.decides_on_host(torch.device("cpu"))
    assert not guard.decides_on_host(torch.device("cuda", 0)) and not guard.decides_on_host(torch.device("mps"))
    assert NonFiniteGuard(decide_on="host").decides_on_host(torch.device("cuda", 0))
    assert not NonFiniteGuard(decide_on="device").decides_on_host(torch.device("cpu"))
    copies = []  # the masked update's: it copies the parameters and Adam's state before each step
    foreach_copy = torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda dst, src: copies.append(len(dst)) or foreach_copy(dst, src))
    auto, _ = snapshots_around_a_poisoned_update(tmp_path / "auto", OPTIMIZERS["adam"], poisoned_step=2)
    assert copies == []
    device, _ = snapshots_around_a_poisoned_update(
        tmp_path / "device", OPTIMIZERS["adam"], poisoned_step=2, decide_on="device"
    )
    assert len(copies) == 4  # every update after the first (whose skip the host decides)
    for step in auto:
        assert_same_state(auto[step], device[step])


def test_decide_on_takes_only_the_three_choices():
    with pytest.raises(ConfigError, match="NonFiniteGuard decide_on must be one of auto, device, host; got 'gpu'"):
        NonFiniteGuard(decide_on="gpu")
