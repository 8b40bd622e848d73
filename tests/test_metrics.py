"""Evaluation metrics against plain computations on known predictions, and what SequenceModel logs."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from seqmem.metrics import BucketAccuracy, TaskMetrics
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData, AgreementData, CopyData, TaskSpec


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_bucket_accuracy_counts_by_bucket_not_by_target(device):
    # Targets and buckets disagree on purpose: counting by target (or by prediction) gives other numbers.
    preds = torch.tensor([1, 0, 1, 1, 0, 0], device=device)
    target = torch.tensor([1, 1, 1, 0, 0, 0], device=device)
    bucket = torch.tensor([0, 0, 2, 2, 2, 0], device=device)
    metric = BucketAccuracy(4).to(device)
    metric.update(preds[:3], target[:3], bucket[:3])
    metric.update(preds[3:], target[3:], bucket[3:])  # accumulates across batches
    acc = metric.compute()
    expected = [
        (preds[bucket == b] == target[bucket == b]).float().mean().item() if (bucket == b).any() else math.nan
        for b in range(4)
    ]
    assert acc[0].item() == pytest.approx(expected[0]) == pytest.approx(2 / 3)
    assert acc[2].item() == pytest.approx(expected[2]) == pytest.approx(2 / 3)
    assert acc[1].isnan() and acc[3].isnan()  # no sample: no accuracy, not 0
    metric.reset()
    assert metric.total.sum() == 0


def test_bucket_accuracy_declares_the_torchmetrics_contract():
    assert BucketAccuracy.higher_is_better is True
    assert BucketAccuracy.is_differentiable is False
    assert BucketAccuracy.full_state_update is False


def test_copy_accuracy_scores_only_the_recalled_steps(device):
    spec = CopyData(seq_len=5, num_copy=3).spec  # sequences of 5 + 2*3 = 11 steps, the last 3 recalled
    B, T, C = 4, 11, spec.output_size
    pred = torch.randn(B, T, C, generator=gen()).to(device)  # (B, T, C)
    y = pred.argmax(-1).clone()  # (B, T) every step right...
    y[:, :-3] = (y[:, :-3] + 1) % C  # ...then every non-recalled step wrong
    y[0, -1] = (y[0, -1] + 1) % C  # and one recalled step wrong: 11 of 12 recalled right
    metrics = TaskMetrics(spec).to(device)
    metrics.update(pred, {"x": torch.zeros(B, T, device=device), "y": y})
    values = metrics.compute()
    assert values["acc"].item() == pytest.approx(11 / 12)
    assert values["loss"].item() == pytest.approx(F.cross_entropy(pred.reshape(-1, C), y.reshape(-1)).item(), rel=1e-6)
    assert values["baseline"].item() == pytest.approx(3 * math.log(8) / 11)
    assert not any(k.startswith(("ppl", "bpc", "acc_")) for k in values)


def test_agreement_metrics_give_per_distance_buckets_and_leave_empty_ones_out(device):
    data = AgreementData(min_len=12, max_len=12, distance=None)
    spec = data.spec
    assert spec.bucket_names == ("d1", "d2-3", "d4-7", "d8-15")
    batch = {key: value.to(device) for key, value in data.make_batch(gen(1)).items()}
    batch["bucket"] = torch.where(batch["bucket"] == 0, 1, batch["bucket"])  # empty bucket d1
    pred = torch.randn(len(batch["y"]), 2, generator=gen(2)).to(device)  # (B, 2) logits
    metrics = TaskMetrics(spec).to(device)
    metrics.update(pred, batch)
    values = metrics.compute()
    right = pred.argmax(-1) == batch["y"]  # (B,)
    assert values["acc"].item() == pytest.approx(right.float().mean().item())
    assert "acc_d1" not in values
    for index, name in enumerate(spec.bucket_names[1:], start=1):
        rows = batch["bucket"] == index
        assert values[f"acc_{name}"].item() == pytest.approx(right[rows].float().mean().item()), name


def test_language_model_metrics_are_ppl_and_bpc_of_the_mean_loss(device):
    spec = TaskSpec(
        name="lm",
        input_size=5,
        output_size=5,
        loss="ce",
        readout="all",
        baseline=1.5,
        input_tokens=True,
        perplexity=True,
        char_level=True,
        stateful=True,
    )
    metrics = TaskMetrics(spec).to(device)
    losses = []
    for seed in (0, 1):  # two batches: the metrics are of the mean loss over batches
        pred = torch.randn(2, 7, 5, generator=gen(seed)).to(device)  # (B, T, V)
        y = torch.randint(0, 5, (2, 7), generator=gen(seed + 10)).to(device)  # (B, T)
        metrics.update(pred, {"x": y, "y": y})
        losses.append(F.cross_entropy(pred.reshape(-1, 5), y.reshape(-1)).item())
    values = metrics.compute()
    mean = sum(losses) / 2
    assert values["loss"].item() == pytest.approx(mean, rel=1e-6)
    assert values["ppl"].item() == pytest.approx(math.exp(mean), rel=1e-6)
    assert values["bpc"].item() == pytest.approx(mean / math.log(2), rel=1e-6)
    assert values["baseline"].item() == pytest.approx(1.5)
    word_level = TaskMetrics(TaskSpec(**{**spec.__dict__, "char_level": False})).to(device)
    word_level.update(pred, {"x": y, "y": y})
    assert "ppl" in word_level.compute() and "bpc" not in word_level.compute()


@pytest.mark.parametrize("stage", ["val", "test"])
def test_evaluation_logs_the_metrics_with_the_stage_prefix(stage):
    L.seed_everything(0, verbose=False)
    data = AgreementData(min_len=8, max_len=8, distance=None, batch_size=16, train_batches=1, val_batches=2)
    model = SequenceModel(data.spec, cell="gru", hidden_size=8, embedding_size=4)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    evaluate = trainer.validate if stage == "val" else trainer.test
    (logged,) = evaluate(model, data, verbose=False)
    reference = TaskMetrics(data.spec)
    model.eval()
    with torch.no_grad():
        for batch in getattr(data, f"{stage}_dataloader")():  # val and test read disjoint streams
            reference.update(model(batch["x"])[0], batch)
    expected = {f"{stage}/{name}": value.item() for name, value in reference.compute().items()}
    assert set(logged) == set(expected)
    for tag, value in expected.items():
        assert logged[tag] == pytest.approx(value, rel=1e-6), tag


def test_bucket_accuracy_states_add_up_across_ranks():
    # Under DDP each rank counts its own samples and compute() reduces the states: two halves merged must
    # equal one metric over everything (a mean of the per-rank counts would halve them, a ratio of sums not).
    preds = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1])
    target = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])
    bucket = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1])
    whole, first, second = BucketAccuracy(2), BucketAccuracy(2), BucketAccuracy(2)
    whole.update(preds, target, bucket)
    first.update(preds[:3], target[:3], bucket[:3])
    second.update(preds[3:], target[3:], bucket[3:])
    first.merge_state(second)
    torch.testing.assert_close(first.correct, whole.correct)
    torch.testing.assert_close(first.total, whole.total)
    torch.testing.assert_close(first.compute(), whole.compute())
    assert whole.total.tolist() == [3, 5]


def test_reset_forgets_every_batch_added_before():
    data = AgreementData(min_len=12, max_len=12, distance=None, batch_size=64)
    spec = data.spec
    metrics = TaskMetrics(spec)
    first, second = data.make_batch(gen(1)), data.make_batch(gen(2))
    second["bucket"] = torch.where(second["bucket"] == 0, 1, second["bucket"])  # d1 empty in the second batch
    metrics.update(torch.randn(64, 2, generator=gen(3)), first)
    metrics.compute()
    metrics.reset()
    pred = torch.randn(64, 2, generator=gen(4))  # (B, 2)
    metrics.update(pred, second)
    values = metrics.compute()
    fresh = TaskMetrics(spec)
    fresh.update(pred, second)
    expected = fresh.compute()
    assert set(values) == set(expected) and "acc_d1" not in values
    for name, value in expected.items():
        assert values[name].item() == pytest.approx(value.item()), name
    right = (pred.argmax(-1) == second["y"]).float()
    assert values["acc"].item() == pytest.approx(right.mean().item())
    assert values["loss"].item() == pytest.approx(F.cross_entropy(pred, second["y"]).item(), rel=1e-6)


def test_regression_reports_the_mean_squared_error_and_its_baseline_only():
    spec = AddingData(seq_len=6).spec
    metrics = TaskMetrics(spec)
    preds = [torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5])]
    targets = [torch.tensor([1.5, 1.0]), torch.tensor([0.5, 1.5])]  # squared errors (0.25, 1) and (0, 1)
    for pred, y in zip(preds, targets, strict=True):
        metrics.update(pred, {"x": torch.zeros(2, 6, 2), "y": y})
    values = metrics.compute()
    assert set(values) == {"loss", "baseline"}
    assert values["loss"].item() == pytest.approx((0.625 + 0.5) / 2)  # the mean of the two batch means
    assert values["baseline"].item() == pytest.approx(1 / 6)
