"""Shared fixtures: offline data, a scratch working directory, the real CLI run in-process, and the device
every tensor-level test runs on."""

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

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


#: What the shipped lm.yaml loads from the Hub when data.path is not set.
HUB_CORPUS = "karpathy/tiny_shakespeare"


def cache_hub_copy(cache_dir: Path, name: str, splits: dict[str, str]) -> Path:
    """``cache_dir`` holding the Hub dataset ``name`` as ``datasets`` keeps one it has downloaded, so that an offline
    ``load_dataset(name, cache_dir=cache_dir)`` reads it: each split one row of a "text" column, as
    karpathy/tiny_shakespeare is published (parquet files, one configuration, "default").

    Built by ``datasets``' own parquet builder, then moved where the cache of a Hub dataset lives
    (``<namespace>___<name>/default/0.0.0/<revision>/``, files ``<name>-<split>.arrow``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    source = cache_dir / "source"
    source.mkdir(parents=True)
    for split, text in splits.items():
        pq.write_table(pa.table({"text": [text]}), source / f"{split}.parquet")
    namespace, dataset = name.split("/")
    files = {split: str(source / f"{split}.parquet") for split in splits}
    builder = Parquet(cache_dir=str(cache_dir / "build"), dataset_name=dataset, config_name="default", data_files=files)
    builder.download_and_prepare()
    cached = cache_dir / f"{namespace}___{dataset}" / "default" / "0.0.0" / ("0" * 40)
    cached.parent.mkdir(parents=True)
    shutil.move(builder.cache_dir, cached)
    shutil.rmtree(cache_dir / "build")
    shutil.rmtree(source)
    return cache_dir


#: A small corpus for the Hub copy: three pangrams, one per split (every character of the held-out splits is in train).
HUB_SPLITS = {
    "train": "the quick brown fox jumps over the lazy dog\n" * 150,
    "validation": "pack my box with five dozen liquor jugs\n" * 40,
    "test": "sphinx of black quartz judge my vow\n" * 40,
}


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``data.cache_dir`` holding a copy of the Hub corpus of lm.yaml (:data:`HUB_CORPUS`, its text
    :data:`HUB_SPLITS`): the Hub loading path runs offline, everywhere."""
    return cache_hub_copy(tmp_path_factory.mktemp("hub_cache"), HUB_CORPUS, HUB_SPLITS)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (root only, where mounts are allowed); skips with the reason elsewhere."""
    disk = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({' '.join(done.stderr.split()) or 'mount failed'})")
    yield disk
    for _ in range(20):  # a writer thread may still hold a file for a moment
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode == 0:
            break
        time.sleep(0.5)


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system of ``disk`` but ``leave`` bytes; the filler file, whose removal frees the space."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler


def fit_args(root: Path, *args: str) -> list[str]:
    """Arguments of a quiet ``seqmem fit`` whose logs and checkpoints go under ``root``."""
    return ["fit", "--trainer.default_root_dir", str(root), *QUIET, *args]
