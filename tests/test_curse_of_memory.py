"""The curse-of-memory study's measuring function: the gradient of λ's parameters grows as abs(λ) → 1 without the
input normalisation γ, and much less with it."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from seqmem.tasks import AddingData

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "studies" / "curse_of_memory.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("curse_of_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def batch():
    data = AddingData(seq_len=100, batch_size=16, train_batches=1, seed=0)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def norms(study, batch, radius: float, normalized: bool) -> dict[str, float]:
    return study.measure(radius, normalized, seed=0, x=batch["x"], y=batch["y"], hidden=8)


def test_norms_are_finite_and_positive(study, batch):
    for normalized in (False, True):
        values = norms(study, batch, 0.9, normalized)
        assert set(values) == {"nu", "theta", "rest"}
        assert all(math.isfinite(v) and v > 0 for v in values.values())


def test_tags_are_the_gradient_norms_diagnostics(study):
    from seqmem.callbacks.grad_norms import parameter_tags
    from seqmem.module import SequenceModel

    model = SequenceModel(AddingData().spec, cell="lru", hidden_size=4)
    assert {study.NU, study.THETA} <= set(parameter_tags(model))


def test_recurrence_gradient_grows_towards_one_without_gamma_much_less_with(study, batch):
    # Measured (H = 8, T = 100, seeds 0, 1, 2): from r = 0.5 to 0.99 θ's norm grows 190–1,200× without γ and 9–36×
    # with it, ν's 1.5–85× without and 0.07–3.4× with; without γ it grows 20–32× more than with, for both.
    torch.set_num_threads(1)
    growth = {}
    for normalized in (False, True):
        near, far = norms(study, batch, 0.99, normalized), norms(study, batch, 0.5, normalized)
        growth[normalized] = {key: near[key] / far[key] for key in ("nu", "theta")}
    assert growth[False]["theta"] > 50
    assert growth[False]["nu"] > 2
    for key in ("nu", "theta"):
        assert growth[False][key] > 10 * growth[True][key], (key, growth)
