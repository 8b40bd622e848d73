"""Shared fixtures: offline data, a scratch working directory, the real CLI run in-process, and the device
every tensor-level test runs on."""

import os
from pathlib import Path

import pytest
import torch

# Read by `datasets` / `huggingface_hub` at import time: set before any test module imports them, so
# no test can reach the network (the lm tests load local files by path).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# mutmut runs the suite from a copy of the project in mutants/: the shared data sits beside the real checkout.
CHECKOUT = REPO_ROOT.parent if REPO_ROOT.name == "mutants" else REPO_ROOT
SHARED_DATA = CHECKOUT.parent / "shared" / "data"
CONFIGS = REPO_ROOT / "seqmem" / "configs"
# The task configs; defaults.yaml holds the shared trainer defaults every command reads first.
TASK_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.stem != "defaults")

# Keeps CLI runs short and quiet; every run still goes through the real parser, Trainer and logger.
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=NO_CUDA)])
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """The CPU always, and CUDA where a GPU is present: the same suite proves both.

    On CUDA, TF32 is off for the test: cuDNN's RNNs and cuBLAS would otherwise round float32 operands to
    10-bit mantissas on Ampere and newer, far outside the 1e-5 tolerances the equivalence tests hold.
    """
    if request.param == "cuda":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    return torch.device(request.param)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch working directory: default lightning_logs/ and relative paths land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline data sets shared by the project (../shared/data next to the repository)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def shakespeare(shared_data: Path) -> Path:
    """Tiny Shakespeare as a local text file; the lm tests skip without it rather than download."""
    path = shared_data / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {path} (shared offline data sets)")
    return path


@pytest.fixture(scope="session")
def lm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `datasets` cache for every lm run of the session: the corpus is converted once, not per test."""
    return tmp_path_factory.mktemp("lm_cache")


def fit_args(root: Path, *args: str) -> list[str]:
    """Arguments of a quiet ``seqmem fit`` whose logs and checkpoints go under ``root``."""
    return ["fit", "--trainer.default_root_dir", str(root), *QUIET, *args]
