"""DDP end to end on 2 CPU processes (gloo) through the real CLI: the orthogonal W_h and the LRU's eigenvalue
parameters do not drift between ranks, and the logged validation loss equals a single-process evaluation of the
same checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONFIGS, QUIET, REPO_ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmem.cli import run_cli

# 8 train and 4 val batches: each rank trains on 4 and validates on 2 (DistributedSampler, no padding).
COPY = [
    "--config",
    str(CONFIGS / "copy.yaml"),
    *(
        "--model.hidden_size 12 --data.seq_len 6 --data.batch_size 8 "
        "--data.train_batches 8 --data.val_batches 4 --trainer.val_check_interval 4 --trainer.log_every_n_steps 1"
    ).split(),
    *QUIET,
]


class SaveRankWeights(L.Callback):
    """Each rank writes its own final state_dict (buffers included) to ``dirpath/rank<r>.pt``.

    Args:
        dirpath: folder for the per-rank files.
    """

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save(pl_module.state_dict(), Path(self.dirpath) / f"rank{trainer.global_rank}.pt")


# The parameters a rank could drift on if DDP missed them: the orthogonal parametrisation's base and skew
# matrix; the LRU's ν, θ and γ (real parameters that build a complex recurrence).
OWN = {
    "orthogonal": ["net.recurrent.0.parametrizations.weight.0.base", "net.recurrent.0.parametrizations.weight.original"],
    "lru": ["net.layers.0.nu_log", "net.layers.0.theta_log", "net.layers.0.gamma_log"],
}


@pytest.mark.parametrize("cell", sorted(OWN))
def test_two_process_ddp_keeps_ranks_identical_and_syncs_validation(tmp_path, cell):
    copy = [*COPY, "--model.cell", cell]
    root = tmp_path / "ddp"
    saver = {"class_path": "test_ddp.SaveRankWeights", "init_args": {"dirpath": str(tmp_path)}}
    command = [
        sys.executable,
        "-m",
        "seqmem.cli",
        "fit",
        *copy,
        "--trainer.default_root_dir",
        str(root),
        *"--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp --trainer.max_steps 4".split(),
        f"--trainer.callbacks+={json.dumps(saver)}",
    ]
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    # No rank drift: every parameter and buffer, the cell's own included.
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert set(OWN[cell]) <= set(rank0)
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name

    # The logged val/loss (all-reduced over both ranks' batches) equals one process evaluating all 4.
    version = root / "lightning_logs" / "version_0"
    logged = EventAccumulator(str(version)).Reload().Scalars("val/loss")[-1].value
    ckpt = version / "checkpoints" / "last.ckpt"
    single = run_cli(
        ["validate", *copy, "--trainer.default_root_dir", str(tmp_path / "single"), "--ckpt_path", str(ckpt)]
    )
    assert logged == float(single.trainer.callback_metrics["val/loss"])
    trained = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, value in rank0.items():
        assert torch.equal(trained[name], value), name  # the checkpoint holds the final weights
