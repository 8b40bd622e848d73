"""The state a stateful task (lm) carries across batches: per stage, detached, restarted with every epoch and
every evaluation, and through checkpoints — against a plain loop that carries the state by hand."""

import copy
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from seqmem.carried_state import CarriedState
from seqmem.module import SequenceModel
from seqmem.tasks import LMData


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory: pytest.TempPathFactory) -> LMData:
    """100 random characters, 30 % held out: 2 streams of 8 training windows and 3 validation windows of 4 steps."""
    root = tmp_path_factory.mktemp("lm")
    generator = torch.Generator().manual_seed(0)
    (root / "text.txt").write_text("".join(chr(97 + int(i)) for i in torch.randint(0, 6, (100,), generator=generator)))
    data = LMData(path=str(root / "text.txt"), seq_len=4, batch_size=2, val_fraction=0.3, cache_dir=str(root / "cache"))
    assert (len(data.train_dataloader()), len(data.val_dataloader())) == (8, 3)
    return data


def lm_model(data: LMData, **options) -> SequenceModel:
    # Forget bias 3: the cell keeps its state for tens of steps, so where a stream starts shows in every loss.
    L.seed_everything(0, verbose=False)
    return SequenceModel(data.spec, cell="lstm", hidden_size=8, embedding_size=4, forget_bias=3.0, **options)


def quiet_trainer(**options) -> L.Trainer:
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **options,
    )


def stream_loss(model: SequenceModel, loader, state=None) -> tuple[float, object]:
    """Mean loss over the windows of ``loader``, the state carried by hand from ``state`` (zeros when None)."""
    model.eval()
    losses = []
    with torch.no_grad():
        for batch in loader:
            pred, state = model(batch["x"], state)  # (B, T, V)
            losses.append(F.cross_entropy(pred.reshape(-1, pred.shape[-1]), batch["y"].reshape(-1)).item())
    return sum(losses) / len(losses), state


def assert_states_close(got, want, **tolerance) -> None:
    got, want = (s if isinstance(s, tuple) else (s,) for s in (got, want))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tolerance)


def states_differ(a, b, at_least: float) -> bool:
    a, b = (s if isinstance(s, tuple) else (s,) for s in (a, b))
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True)) > at_least


def test_repeated_evaluation_of_a_stateful_task_starts_its_streams_from_zeros_every_time(lm_data):
    model = lm_model(lm_data)
    expected, final = stream_loss(model, lm_data.val_dataloader())
    # Guard: starting the streams from where the last evaluation left them gives a visibly different loss.
    leaked, _ = stream_loss(model, lm_data.val_dataloader(), final)
    assert abs(leaked - expected) > 1e-4 * expected

    trainer = quiet_trainer()
    losses = []
    for _ in range(3):
        (logged,) = trainer.validate(model, lm_data, verbose=False)
        losses.append(logged["val/loss"])
        assert model.carried.get("val") is None, "no evaluation state survives the epoch"
    (fresh,) = quiet_trainer().validate(copy.deepcopy(model), lm_data, verbose=False)
    assert losses == pytest.approx([expected] * 3, rel=1e-6)
    assert fresh["val/loss"] == pytest.approx(expected, rel=1e-6)

    # The test stage keeps its own state, restarted the same way (lm's test split is its held-out part here).
    tests = [quiet_trainer().test(model, lm_data, verbose=False)[0]["test/loss"] for _ in range(2)]
    expected_test, _ = stream_loss(model, lm_data.test_dataloader())
    assert tests == pytest.approx([expected_test] * 2, rel=1e-6)
    assert model.carried.get("test") is None


class RecordValidation(L.Callback):
    """val/loss of every validation run, the sanity check included."""

    def __init__(self):
        self.losses: list[float] = []

    def on_validation_end(self, trainer, pl_module):
        self.losses.append(trainer.callback_metrics["val/loss"].item())


def test_training_state_flows_on_restarts_each_epoch_and_never_mixes_with_validation(lm_data):
    """Learning rate 0: the weights stay put, so the state carried at the end of training must equal one
    uncut forward over one epoch of the training streams from zeros, whatever validation ran in between."""
    model = lm_model(lm_data, optimizer=partial(torch.optim.SGD, lr=0.0))
    record = RecordValidation()
    trainer = quiet_trainer(max_epochs=2, val_check_interval=3, num_sanity_val_steps=2, callbacks=[record])
    trainer.fit(model, lm_data)
    assert trainer.global_step == 16  # two epochs of 8 windows

    model.eval()
    streams = lm_data.streams("train")  # (B, M)
    epoch = streams[:, : 8 * 4]  # the 8 windows of one epoch, uncut
    with torch.no_grad():
        _, one_epoch = model(epoch)  # from zeros
        _, continued = model(epoch, one_epoch)  # the second epoch, had the first one's state carried on
        _, skipped_first = model(epoch[:, 4:])  # restarted at the second window instead of the first
    assert states_differ(continued, one_epoch, 1e-3) and states_differ(skipped_first, one_epoch, 1e-3)
    assert_states_close(model.carried.get("train"), one_epoch, rtol=1e-5, atol=1e-6)
    for part in model.carried.get("train"):
        assert part.grad_fn is None and not part.requires_grad  # carried detached: the gradient stops there

    # Validation mid-epoch (after windows 3 and 6 of each epoch) and the sanity check start from zeros.
    expected, _ = stream_loss(model, lm_data.val_dataloader())
    sanity, _ = stream_loss(model, list(lm_data.val_dataloader())[:2])
    assert len(record.losses) == 1 + 2 * 2
    assert record.losses[0] == pytest.approx(sanity, rel=1e-6)
    assert record.losses[1:] == pytest.approx([expected] * 4, rel=1e-6)
    assert model.carried.get("val") is None


# ---- CarriedState on its own -------------------------------------------------------------------------------


def lstm_state(seed: int, layers: int = 2, batch: int = 3, hidden: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(layers, batch, hidden, generator=g) for _ in range(2))  # (L, B, H) each


def test_carried_state_is_kept_per_stage_detached_and_reset_alone():
    carried = CarriedState(enabled=True)
    assert carried.get("train") is None  # nothing carried yet: zeros
    h = torch.randn(2, 3, 4, requires_grad=True)
    carried.carry("train", h * 2)  # a state with autograd history
    carried.carry("val", (h + 1, h - 1))
    kept = carried.get("train")
    assert kept.grad_fn is None and not kept.requires_grad
    torch.testing.assert_close(kept, (h * 2).detach(), rtol=0, atol=0)
    val_h, val_c = carried.get("val")
    assert val_h.grad_fn is None and val_c.grad_fn is None
    torch.testing.assert_close(val_c, (h - 1).detach(), rtol=0, atol=0)
    carried.reset("val")
    assert carried.get("val") is None and carried.get("train") is kept  # one stage restarts, the other flows on
    carried.reset("test")  # resetting a stage that carries nothing is fine


def test_a_stateless_task_carries_nothing():
    carried = CarriedState(enabled=False)
    carried.carry("train", torch.ones(1, 2, 3))
    assert carried.get("train") is None and carried.states == {}


def gathering_module(world_size: int) -> SimpleNamespace:
    """What gather_train reads from a LightningModule: all_gather (rank r's copy is r * 100 + the state)."""

    def all_gather(tensor: torch.Tensor) -> torch.Tensor:
        if world_size == 1:
            return tensor.clone()  # Lightning adds no rank dimension for a single process
        return torch.stack([tensor + 100 * rank for rank in range(world_size)])  # (W, ...)

    return SimpleNamespace(all_gather=all_gather, trainer=SimpleNamespace(world_size=world_size))


@pytest.mark.parametrize("world_size", [1, 2])
def test_gather_train_gives_one_row_per_rank_and_restore_takes_this_ranks_row_back(world_size):
    carried = CarriedState(enabled=True)
    assert carried.gather_train(gathering_module(world_size)) is None  # nothing to save yet
    state = lstm_state(0)
    carried.carry("train", state)
    carried.carry("val", lstm_state(1))  # evaluation states never go into checkpoints
    saved = carried.gather_train(gathering_module(world_size))
    assert isinstance(saved, list) and len(saved) == 2
    assert all(part.shape == (world_size, 2, 3, 4) and part.device.type == "cpu" for part in saved)
    for rank in range(world_size):
        restored = CarriedState(enabled=True)
        restored.restore_train(saved, rank=rank, world_size=world_size, device=torch.device("cpu"))
        assert_states_close(restored.get("train"), tuple(p + 100 * rank for p in state), rtol=0, atol=0)
        assert restored.get("val") is None


def test_a_single_tensor_state_round_trips_as_a_tensor():
    carried = CarriedState(enabled=True)
    h = torch.randn(1, 3, 4)  # (L, B, H): vanilla, orthogonal, irnn, gru
    carried.carry("train", h)
    (saved,) = carried.gather_train(gathering_module(1))
    restored = CarriedState(enabled=True)
    restored.restore_train([saved], rank=0, world_size=1, device=torch.device("cpu"))
    assert isinstance(restored.get("train"), torch.Tensor)
    torch.testing.assert_close(restored.get("train"), h, rtol=0, atol=0)


def test_the_restored_state_lands_on_the_modules_device():
    carried = CarriedState(enabled=True)
    carried.carry("train", lstm_state(0))
    saved = carried.gather_train(gathering_module(1))
    restored = CarriedState(enabled=True)
    restored.restore_train(saved, rank=0, world_size=1, device=torch.device("meta"))  # any device but the CPU
    assert all(part.device.type == "meta" for part in restored.get("train"))


@pytest.mark.parametrize("saved_by, resumed_on", [(2, 1), (1, 2)])
def test_a_checkpoint_from_another_number_of_ranks_restarts_the_streams(saved_by, resumed_on):
    carried = CarriedState(enabled=True)
    carried.carry("train", lstm_state(0))
    saved = carried.gather_train(gathering_module(saved_by))
    restored = CarriedState(enabled=True)
    restored.restore_train(saved, rank=0, world_size=resumed_on, device=torch.device("cpu"))
    assert restored.get("train") is None  # another split of the streams: its rows would not continue ours


def test_checkpoints_carry_the_training_state_of_a_stateful_task(lm_data, tmp_path: Path):
    model = lm_model(lm_data, optimizer=partial(torch.optim.SGD, lr=0.0))
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, lm_data)
    trainer.save_checkpoint(tmp_path / "three.ckpt")
    checkpoint = torch.load(tmp_path / "three.ckpt", weights_only=True)
    h, c = checkpoint["carried_train_state"]  # (W, L, B, H)
    assert h.shape == c.shape == (1, 1, 2, 8)
    assert_states_close((h[0], c[0]), model.carried.get("train"), rtol=0, atol=0)
