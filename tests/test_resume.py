"""Exact resume: a run stopped at step N and resumed with `--ckpt_path last` equals an uninterrupted run,
and its checkpoints load in a fresh process (`seqmem validate --ckpt_path`, load_from_checkpoint)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, REPO_ROOT, fit_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmem.cli import run_cli
from seqmem.module import SequenceModel
from seqmem.tasks import CopyData

COPY = [
    "--config",
    str(CONFIGS / "copy.yaml"),
    *(
        "--model.hidden_size 12 --data.seq_len 6 --data.batch_size 8 --data.train_batches 6 --data.val_batches 2 "
        "--trainer.val_check_interval 3 --trainer.log_every_n_steps 2"
    ).split(),
]


def lm_args(text: Path, cache: Path) -> list[str]:
    """lm with 2 dropout layers and truncated BPTT: the carried state and the random state matter."""
    return [
        "--config",
        str(CONFIGS / "lm.yaml"),
        "--data.path",
        str(text),
        "--data.cache_dir",
        str(cache),
        *(
            "--data.seq_len 10 --data.batch_size 3 --model.hidden_size 12 --model.embedding_size 8 "
            "--model.tbptt_steps 4 --trainer.val_check_interval 3 --trainer.limit_val_batches 2 "
            "--trainer.gradient_clip_val null --model.gradient_clip_val 0.25 --trainer.log_every_n_steps 2 "
            "--trainer.max_epochs -1"
        ).split(),
    ]


def fit(root: Path, args: list[str], max_steps: int, every: int, extra: tuple[str, ...] = ()):
    """`seqmem fit` in-process, checkpointing every ``every`` steps; returns the model and trainer."""
    cli = run_cli(
        fit_args(
            root, *args, "--trainer.max_steps", str(max_steps), "--checkpoint.every_n_train_steps", str(every), *extra
        )
    )
    return cli.model, cli.trainer


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def lm_text(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    generator = torch.Generator().manual_seed(0)
    path.write_text("".join(chr(97 + int(i)) for i in torch.randint(0, 6, (3000,), generator=generator)))
    return path


@pytest.mark.parametrize("cell", ["orthogonal", "gru"])
def test_resume_mid_epoch_equals_an_uninterrupted_run_synthetic(workdir, cell):
    """Stopped at step 4 of a 6-batch epoch: the resumed run must continue the data stream at batch 4
    (then wrap into the next epoch), with the same optimizer state and orthogonal base."""
    args = [*COPY, "--model.cell", cell]
    whole, whole_trainer = fit(workdir / "whole", args, max_steps=8, every=2)
    fit(workdir / "parts", args, max_steps=4, every=2)
    resumed, trainer = fit(workdir / "parts", args, max_steps=8, every=2, extra=("--ckpt_path", "last"))
    assert trainer.global_step == 8 and trainer.current_epoch == whole_trainer.current_epoch
    assert_same_weights(resumed, whole)
    if cell == "orthogonal":
        assert "net.recurrent.0.parametrizations.weight.0.base" in resumed.state_dict()


def test_resume_equals_an_uninterrupted_run_lm_with_carried_state(workdir):
    """lm under truncated BPTT (3 chunk updates per window) with dropout: the carried state, the
    stream position and the random state all come back from the checkpoint."""
    args = lm_args(lm_text(workdir), workdir / "cache")
    whole, _ = fit(workdir / "whole", args, max_steps=12, every=3)
    fit(workdir / "parts", args, max_steps=6, every=3)
    checkpoint = torch.load(
        workdir / "parts" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert ("cuda_rng_state" in checkpoint) == torch.cuda.is_available()  # written where there are GPUs
    h, c = checkpoint["carried_train_state"]  # the config's 2-layer LSTM carries (h, c)
    assert h.shape == c.shape == (1, 2, 3, 12)  # (world size, layers, B, H)
    resumed, trainer = fit(workdir / "parts", args, max_steps=12, every=3, extra=("--ckpt_path", "last"))
    assert trainer.global_step == 12
    assert_same_weights(resumed, whole)
    for got, want in zip(resumed.carried.get("train"), whole.carried.get("train"), strict=True):
        assert torch.equal(got, want)


def test_checkpoint_loads_in_a_fresh_process(workdir):
    model, _ = fit(workdir / "run", [*COPY, "--model.cell", "orthogonal"], max_steps=3, every=3)
    ckpt = workdir / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    x = torch.randint(0, model.task.input_size, (2, 26))  # (B, T) copy inputs
    torch.save(x, workdir / "x.pt")
    expected_val = run_cli(
        ["validate", *COPY, "--trainer.default_root_dir", str(workdir / "val"), "--ckpt_path", str(ckpt)]
    )
    script = f"""
import json, torch
from seqmem.cli import run_cli
from seqmem.module import SequenceModel
from seqmem.tasks import CopyData
from seqmem.module import SequenceModel
cli = run_cli(["validate", *{[*COPY, "--trainer.enable_progress_bar", "false"]!r},
               "--trainer.default_root_dir", {str(workdir / "fresh")!r}, "--ckpt_path", {str(ckpt)!r}])
model = SequenceModel.load_from_checkpoint({str(ckpt)!r}).eval()
pred, _ = model(torch.load({str(workdir / "x.pt")!r}))
print(json.dumps({{"val": {{k: float(v) for k, v in cli.trainer.callback_metrics.items()}}, "pred": pred.tolist()}}))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh["val"]["val/loss"] == pytest.approx(float(expected_val.trainer.callback_metrics["val/loss"]), rel=1e-6)
    torch.testing.assert_close(torch.tensor(fresh["pred"]), model.eval()(x)[0])


# Both probes every 2 steps, so that the resumed half of the run probes too.
PROBES = json.dumps(
    [
        {"class_path": f"seqmem.callbacks.{name}", "init_args": {"every_n_steps": 2, "probe_batch_size": 4}}
        for name in ("TimestepGradients", "InputSensitivity")
    ]
)


def probe_values(root: Path) -> dict[tuple[str, int], float]:
    """Every probe scalar that any run under ``root`` wrote: (tag, step) -> value."""
    values = {}
    for path in sorted(root.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag.startswith(("grad_time/", "sensitivity/")):
                values.update({(tag, event.step): event.value for event in accumulator.Scalars(tag)})
    return values


def test_probes_go_on_with_the_same_batch_after_a_resume(workdir):
    """Resumed at batch 4, the probes must keep the probe batch of the run's first step (batch 0), saved in
    the checkpoint, not take batch 4: the curves of a resumed run equal the uninterrupted run's."""
    args = [*COPY, "--model.cell", "gru", "--trainer.callbacks", PROBES]
    fit(workdir / "whole", args, max_steps=8, every=2)
    fit(workdir / "parts", args, max_steps=4, every=2)
    fit(workdir / "parts", args, max_steps=8, every=2, extra=("--ckpt_path", "last"))
    whole, parts = probe_values(workdir / "whole"), probe_values(workdir / "parts")
    assert {step for _, step in whole} == {0, 2, 4, 6}
    assert parts.keys() == whole.keys()
    for key, value in whole.items():
        assert parts[key] == pytest.approx(value, rel=1e-6), key


class FakeCuda:
    """torch.cuda's random-state functions on a machine with ``devices`` GPUs, recording what is restored."""

    def __init__(self, devices: int):
        self.devices = devices
        self.states = [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(devices)]
        self.restored: list[list[torch.Tensor]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.devices)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.restored.append)


def saved_and_resumed(monkeypatch: pytest.MonkeyPatch, saver: FakeCuda | None, loader: FakeCuda | None) -> dict:
    """on_save_checkpoint on one machine, then on_load_checkpoint and on_train_start on another (None: no CUDA)."""
    model = SequenceModel(CopyData(seq_len=4).spec, cell="gru", hidden_size=4)
    with monkeypatch.context() as patch:
        if saver is not None:
            saver.install(patch)
        checkpoint: dict = {}
        model.on_save_checkpoint(checkpoint)
    expected_cpu = checkpoint["cpu_rng_state"].clone()
    torch.rand(3)  # the CPU generator moves on; resuming must bring it back
    with monkeypatch.context() as patch:
        if loader is not None:
            loader.install(patch)
        resumed = SequenceModel(CopyData(seq_len=4).spec, cell="gru", hidden_size=4)
        resumed.on_load_checkpoint(checkpoint)
        resumed.on_train_start()
    assert torch.equal(torch.get_rng_state(), expected_cpu)
    return checkpoint


def test_the_random_state_of_every_gpu_is_saved_and_restored(monkeypatch):
    saver, loader = FakeCuda(devices=2), FakeCuda(devices=2)
    checkpoint = saved_and_resumed(monkeypatch, saver, loader)
    assert [s.tolist() for s in checkpoint["cuda_rng_state"]] == [s.tolist() for s in saver.states]
    assert len(loader.restored) == 1
    assert [s.tolist() for s in loader.restored[0]] == [s.tolist() for s in saver.states]


def test_checkpoints_without_gpu_random_states_resume_on_a_gpu_machine_and_vice_versa(monkeypatch):
    cpu_written = saved_and_resumed(monkeypatch, None, gpu := FakeCuda(devices=1))
    assert "cuda_rng_state" not in cpu_written and gpu.restored == []
    saved_and_resumed(monkeypatch, FakeCuda(devices=1), None)  # no CUDA here: the GPU states are ignored


def test_gpu_random_states_of_another_gpu_count_are_left_with_a_warning(monkeypatch):
    loader = FakeCuda(devices=1)
    with pytest.warns(UserWarning, match="random state of 2 GPUs, this machine has 1"):
        saved_and_resumed(monkeypatch, FakeCuda(devices=2), loader)
    assert loader.restored == []
