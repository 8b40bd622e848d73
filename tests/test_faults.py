"""Faults lose nothing: a full disk or any OS error while a run writes is one line naming the file and the cause
(exit status 2, no traceback), and the last good checkpoint survives a full disk or a kill mid-write."""

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import QUIET, REPO_ROOT, fit_args
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.cli import LightningArgumentParser

from seqmem import atomic
from seqmem.checkpoint_io import AtomicCheckpointIO, AtomicModelCheckpoint
from seqmem.cli import main, run_cli
from seqmem.errors import WriteError, error_line

ENOSPC = "No space left on device [ENOSPC]"
ADDING = (
    "--config adding --model.hidden_size 8 --data.seq_len 6 --data.batch_size 4 --data.train_batches 20 "
    "--data.val_batches 1 --trainer.val_check_interval 2 --checkpoint.every_n_train_steps 2"
).split()


def full_disk_from(step: int, marker: str | None = None) -> list[str]:
    """The option that fills the disk from ``step`` on (tests/faults.py)."""
    callback = {"class_path": "faults.FullDisk", "init_args": {"after": step, "marker": marker}}
    return ["--trainer.callbacks+", json.dumps(callback)]


def error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    """What a run printed on stderr, but Lightning's own warnings and notices."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("seqmem: error:")]


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def temps(folder: Path) -> list[Path]:
    return list(folder.glob(f".*{atomic.TEMP_SUFFIX}"))


# ---- the atomic write ------------------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_names_the_path_and_the_cause(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"good")
    with pytest.raises(WriteError) as error:
        with atomic.replaced(path) as file:
            torch.save({"w": torch.zeros(1000)}, file)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(error.value) == f"cannot write {str(path)!r}: {ENOSPC}"
    assert (error.value.errno, error.value.filename) == (errno.ENOSPC, str(path))
    assert path.read_bytes() == b"good" and temps(tmp_path) == []


def test_an_os_error_behind_torch_save_is_a_write_error(tmp_path):
    # torch.save reports a failed write of its file object as a RuntimeError over the OSError.
    from faults import half_then_full

    path = tmp_path / "model.pt"
    with pytest.raises(WriteError, match="model.pt': No space left on device"), atomic.replaced(path) as file:
        half_then_full({"w": torch.zeros(10)}, file)
    assert not path.exists() and temps(tmp_path) == []


def test_the_temporary_file_of_a_killed_write_goes_with_the_next_write(tmp_path):
    path = tmp_path / "last.ckpt"
    stale = atomic.temp_path(path)
    stale.write_bytes(b"half a checkpoint")
    assert not list(tmp_path.glob("last*.ckpt"))  # never taken for a checkpoint (--ckpt_path last globs last*.ckpt)
    atomic.write_text(path, "new")
    assert path.read_text() == "new" and temps(tmp_path) == []


@pytest.mark.skipif(atomic.fcntl is None, reason="no file locks (fcntl) here: stale temporaries stay in other folders")
def test_stale_temporary_files_under_a_root_go_and_a_live_writers_stays(tmp_path):
    checkpoints = tmp_path / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    stale = [atomic.temp_path(checkpoints / "last.ckpt"), atomic.temp_path(checkpoints / "epoch=0-step=4.ckpt")]
    stale.append(atomic.temp_path(tmp_path / "version_0" / "predictions.pt"))
    others = [checkpoints / ".notes.tmp", checkpoints / "x.ckpt.1a2b3c4d.tmp", tmp_path / "last.ckpt"]
    too_deep = atomic.temp_path(checkpoints / "a" / "b" / "last.ckpt")  # not a folder Lightning or seqmem makes
    too_deep.parent.mkdir(parents=True)
    for path in [*stale, *others, too_deep]:
        path.write_bytes(b"half a file")
    (tmp_path / "version_1").mkdir()
    with atomic.replaced(tmp_path / "version_1" / "last.ckpt") as live:  # another run's write, under way
        removed = atomic.remove_stale_temps(tmp_path)
        live.write(b"still being written")
    assert sorted(removed) == sorted(stale)
    assert not any(path.exists() for path in stale) and all(path.exists() for path in [*others, too_deep])
    assert (tmp_path / "version_1" / "last.ckpt").read_bytes() == b"still being written"
    assert temps(tmp_path / "version_1") == []


@pytest.mark.skipif(atomic.fcntl is None, reason="no file locks (fcntl) here")
def test_a_write_whose_temporary_file_is_removed_before_it_is_locked_takes_another(tmp_path, monkeypatch):
    real_flock, removed = atomic.fcntl.flock, []

    def removed_first(fd, operation):
        if operation == atomic.fcntl.LOCK_EX and not removed:  # the writer's lock, the first time: a
            removed.extend(atomic.remove_stale_temps(tmp_path))  # remove_stale_temps came in between
        real_flock(fd, operation)

    monkeypatch.setattr(atomic.fcntl, "flock", removed_first)
    atomic.write_text(tmp_path / "trials.csv", "new")
    assert len(removed) == 1 and (tmp_path / "trials.csv").read_text() == "new" and temps(tmp_path) == []


def test_errors_other_than_os_errors_propagate_and_leave_the_old_file(tmp_path):
    path = tmp_path / "trials.csv"
    path.write_text("old")
    with pytest.raises(KeyError), atomic.replaced(path, "w") as file:
        file.write("new")
        raise KeyError("a bug")
    assert path.read_text() == "old" and temps(tmp_path) == []


def test_a_write_error_survives_pickling_and_reads_as_one_line():
    # Ray sends a trial's exception to the driver pickled.
    error = WriteError(errno.ENOSPC, "No space left on device", "/runs/x.ckpt", note="the last good one is y")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.errno, copy.filename, copy.note) == (errno.ENOSPC, "/runs/x.ckpt", "the last good one is y")
    assert error_line(copy) == f"cannot write '/runs/x.ckpt': {ENOSPC}; the last good one is y"


# A failure raised again while its report is made can chain two exceptions to each other: each walk of the chain
# must end. Run in a child process, so that an endless walk fails the test at its timeout instead of hanging it.
CYCLE = """
import errno
from seqmem.errors import WriteError, config_error, error_line, os_error_behind, write_error
write = WriteError(errno.ENOSPC, "No space left on device", "/runs/last.ckpt")
cause = OSError(errno.ENOSPC, "No space left on device")
write.__cause__, cause.__context__ = cause, write  # raise WriteError from OSError, then the OSError again
print(config_error(cause), error_line(cause), write_error(cause) is write, os_error_behind(write) is not None)
loop = RuntimeError("a bug")
loop.__context__ = ValueError("behind it")
loop.__context__.__context__ = loop
print(config_error(loop), error_line(loop))
"""


def test_an_exception_chain_that_loops_back_on_itself_is_walked_once():
    done = subprocess.run([sys.executable, "-c", CYCLE], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"None cannot write '/runs/last.ckpt': {ENOSPC} True True", "None None"]


def test_a_link_replaces_the_old_one_in_one_rename_or_is_a_copy_where_links_are_refused(tmp_path, monkeypatch):
    (tmp_path / "a.ckpt").write_bytes(b"a")
    (tmp_path / "b.ckpt").write_bytes(b"b")
    last = tmp_path / "last.ckpt"
    atomic.link(tmp_path / "a.ckpt", last)
    atomic.link(tmp_path / "b.ckpt", last)  # over the old link: os.replace, never a moment without last.ckpt
    assert last.is_symlink() and os.readlink(last) == "b.ckpt" and last.read_bytes() == b"b"

    def refused(*args):
        raise OSError(errno.EPERM, "links not allowed")

    monkeypatch.setattr(os, "symlink", refused)
    atomic.link(tmp_path / "a.ckpt", last)
    assert not last.is_symlink() and last.read_bytes() == b"a" and temps(tmp_path) == []


# ---- who writes through it -------------------------------------------------------------------------------------


def test_every_seqmem_run_and_a_python_trainer_that_asks_save_checkpoints_atomically(workdir):
    cli = run_cli(fit_args(workdir, *ADDING)[1:], run=False)  # [1:]: no "fit"
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert type(cli.trainer.checkpoint_callback) is AtomicModelCheckpoint
    # A CheckpointIO of the command's own is kept (Lightning refuses two).
    mine = {"class_path": "lightning.fabric.plugins.TorchCheckpointIO"}
    cli = run_cli(fit_args(workdir, *ADDING, "--trainer.plugins", json.dumps(mine))[1:], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO
    trainer = L.Trainer(plugins=[AtomicCheckpointIO()], callbacks=[AtomicModelCheckpoint(save_last=True)])
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO


def test_save_last_link_points_at_the_newest_checkpoint(workdir):
    run_cli(fit_args(workdir, *ADDING, "--trainer.max_steps", "4", "--checkpoint.save_last", "link"))
    folder = workdir / "lightning_logs" / "version_0" / "checkpoints"
    last = folder / "last.ckpt"
    assert last.is_symlink() and os.readlink(last) == "epoch=0-step=4.ckpt" and checkpoint_step(last) == 4
    assert temps(folder) == []


@pytest.mark.skipif(atomic.fcntl is None, reason="no file locks (fcntl) here: stale temporaries stay in other folders")
def test_the_next_run_removes_stale_temporary_checkpoints_of_older_runs_in_its_tree(workdir):
    run_cli(fit_args(workdir, *ADDING, "--trainer.max_steps", "2"))
    old = workdir / "lightning_logs" / "version_0" / "checkpoints"
    killed = [atomic.temp_path(old / "last.ckpt"), atomic.temp_path(old / "epoch=0-step=4.ckpt")]  # kills mid-write
    for path in killed:
        path.write_bytes(b"half a checkpoint")
    run_cli(fit_args(workdir, *ADDING, "--trainer.max_steps", "2"))  # version_1
    assert temps(old) == [] and checkpoint_step(old / "last.ckpt") == 2


# ---- a full disk mid-run ---------------------------------------------------------------------------------------


def test_a_full_disk_mid_checkpoint_is_one_line_and_the_last_good_checkpoint_loads(workdir, capsys):
    # save_top_k 0: only last.ckpt is written, so the failing save at step 6 overwrites the good one of step 4.
    args = [*ADDING, "--checkpoint.save_top_k", "0", "--trainer.max_steps", "8"]
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(workdir, *args, *full_disk_from(5)))
    assert exit_info.value.code == 2
    last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    (line,) = error_lines(capsys)
    assert line == (
        f"seqmem: error: cannot write {str(last)!r}: {ENOSPC}; the last good checkpoint {str(last)!r} (step 4) "
        "is intact: resume with --ckpt_path last"
    )
    assert checkpoint_step(last) == 4 and temps(last.parent) == []
    validate = ["validate", "--trainer.default_root_dir", str(workdir / "eval"), *QUIET, *args]
    main([*validate, "--ckpt_path", str(last)])  # loads in seqmem validate
    assert error_lines(capsys) == []
    # The disk has room again: the same run resumes from step 4 and finishes.
    resumed = run_cli(fit_args(workdir, *args, "--ckpt_path", "last"))
    assert resumed.trainer.ckpt_path == str(last) and resumed.trainer.global_step == 8


def test_the_guards_stop_checkpoint_on_a_full_disk_is_one_line(workdir, capsys):
    # W_h at spectral radius 20, SGD at lr 1e3: the guard stops at step 10 and saves last.ckpt, on a full disk.
    diverging = (
        "--model.cell vanilla --model.spectral_radius 20 --model.optimizer SGD --model.optimizer.lr 1000 "
        "--trainer.gradient_clip_val null "
        "--checkpoint.save_top_k 0 --checkpoint.every_n_train_steps 1000 --trainer.max_steps 60"
    ).split()
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(workdir, *ADDING, *diverging, *full_disk_from(1)))
    assert exit_info.value.code == 2  # a file it could not write, not the divergence (status 1)
    (line,) = error_lines(capsys)
    last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert line == f"seqmem: error: cannot write {str(last)!r}: {ENOSPC}"  # no earlier checkpoint to point at
    assert not last.exists() and temps(last.parent) == []


def test_tensorboard_events_that_cannot_be_written_are_one_line_without_a_traceback(workdir, capsys, monkeypatch):
    # TensorBoard writes in a thread of its own; its error surfaces later, with no file name, from the next call.
    from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem

    def full(self, filename, file_content, binary_mode=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(LocalFileSystem, "append", full)
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(workdir, *ADDING, "--trainer.max_steps", "4"))
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys)  # and no "Exception in thread" traceback
    run = workdir / "lightning_logs" / "version_0"
    assert line == f"seqmem: error: cannot write the TensorBoard events in {str(run)!r}: {ENOSPC}"


def test_a_read_only_events_file_is_named_as_a_plain_path(workdir, capsys, monkeypatch):
    # TensorBoard opens its events file by a bytes name: the OS error carries it as bytes.
    from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem

    def read_only(self, filename, file_content, binary_mode=False):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), filename)

    monkeypatch.setattr(LocalFileSystem, "append", read_only)
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(workdir, *ADDING, "--trainer.max_steps", "4"))
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys)
    events = f"{workdir / 'lightning_logs' / 'version_0'}{os.sep}events.out.tfevents."
    assert line.startswith(f"seqmem: error: cannot write '{events}")
    assert line.endswith(": Read-only file system [EROFS]")
    assert str(WriteError(errno.EROFS, "Read-only file system", b"/runs/x")) == (
        "cannot write '/runs/x': Read-only file system [EROFS]"
    )


def test_a_config_yaml_that_cannot_be_written_is_one_line(workdir, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(LightningArgumentParser, "save", full)
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(workdir, *ADDING, "--trainer.max_steps", "2"))
    assert exit_info.value.code == 2
    config = workdir / "lightning_logs" / "version_0" / "config.yaml"
    assert error_lines(capsys) == [f"seqmem: error: cannot write {str(config)!r}: Disk quota exceeded [EDQUOT]"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (a device whose writes fail with ENOSPC)")
def test_an_hparams_yaml_that_cannot_be_written_is_one_line_naming_it_and_no_empty_file(workdir, capsys, monkeypatch):
    # Lightning's loggers write hparams.yaml through fsspec: the file is made, then its bytes meet a full disk.
    from fsspec.implementations.local import LocalFileOpener

    real_open = LocalFileOpener._open

    def full_at_hparams(self):
        real_open(self)
        if Path(self.path).name == "hparams.yaml" and "w" in self.mode:
            self.f.close()
            self.f = open("/dev/full", self.mode)  # closed by the opener

    monkeypatch.setattr(LocalFileOpener, "_open", full_at_hparams)
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(workdir, *ADDING, "--trainer.max_steps", "2"))
    assert exit_info.value.code == 2
    hparams = workdir / "lightning_logs" / "version_0" / "hparams.yaml"
    assert error_lines(capsys) == [f"seqmem: error: cannot write {str(hparams)!r}: {ENOSPC}"]
    assert not hparams.exists()  # Lightning writes it only where there is none: an empty one would stay empty


def test_predictions_that_cannot_be_written_are_one_line_and_no_partial_file(workdir, capsys, monkeypatch):
    from faults import half_then_full

    run_cli(fit_args(workdir, *ADDING, "--trainer.max_steps", "2"))
    last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--trainer.default_root_dir", str(workdir), *QUIET, *ADDING, "--ckpt_path", str(last)])
    assert exit_info.value.code == 2
    predictions = workdir / "lightning_logs" / "version_1" / "predictions.pt"
    assert error_lines(capsys) == [f"seqmem: error: cannot write {str(predictions)!r}: {ENOSPC}"]
    assert not predictions.exists() and temps(predictions.parent) == []


def test_a_full_disk_under_ddp_is_one_line_from_rank_0_and_the_other_rank_is_quiet(workdir):
    # Rank 0 fails at step 4's last.ckpt and exits; rank 1, waiting for it at the save's barrier, loses its peer.
    ddp = "--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp --trainer.max_steps 8".split()
    args = fit_args(workdir, *ADDING, "--checkpoint.save_top_k", "0", *ddp, *full_disk_from(3))
    command = [sys.executable, "-m", "seqmem.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300)
    assert done.returncode == 2, done.stderr[-4000:]
    assert "Traceback" not in done.stderr and "Connection closed" not in done.stderr, done.stderr[-4000:]
    last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert [line for line in done.stderr.splitlines() if line.startswith("seqmem: error:")] == [
        f"seqmem: error: cannot write {str(last)!r}: {ENOSPC}; the last good checkpoint {str(last)!r} (step 2) "
        "is intact: resume with --ckpt_path last"
    ]
    assert checkpoint_step(last) == 2 and temps(last.parent) == []


# ---- a kill mid-write ------------------------------------------------------------------------------------------

# The child resumes the run and, at its first checkpoint, writes half of it, says so, and waits to be killed.
CHILD = """
import sys, time, torch
from faults import REAL_SAVE
def half_then_wait(obj, f, *args, **kwargs):
    import io
    buffer = io.BytesIO()
    REAL_SAVE(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    target = open(f, "wb") if isinstance(f, str) or hasattr(f, "__fspath__") else f
    target.write(data[: len(data) // 2])
    target.flush()
    print("half written", flush=True)
    time.sleep(600)
torch.save = half_then_wait
from seqmem.cli import main
main(sys.argv[1:])
"""


def test_a_kill_mid_checkpoint_leaves_the_last_good_one(workdir, capsys):
    args = [*ADDING, "--checkpoint.save_top_k", "0"]  # only last.ckpt: the killed write overwrites the good one
    run_cli(fit_args(workdir, *args, "--trainer.max_steps", "2"))
    run = workdir / "lightning_logs" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    # Resumed into the same run folder, as a sweep resumes a trial (which removes config.yaml first, too).
    resume = [*fit_args(workdir, *args, "--trainer.max_steps", "4"), "--ckpt_path", str(last)]
    resume += ["--trainer.logger.class_path", "lightning.pytorch.loggers.TensorBoardLogger"]
    resume += ["--trainer.logger.init_args.save_dir", str(workdir), "--trainer.logger.init_args.version", "0"]
    (run / "config.yaml").unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *resume], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    try:
        assert child.stdout.readline().strip() == "half written"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert checkpoint_step(last) == 2  # the kill came mid-write of step 4's
    main(["validate", "--trainer.default_root_dir", str(workdir / "eval"), *QUIET, *args, "--ckpt_path", str(last)])
    assert error_lines(capsys) == []
    # The next run resumes from it; the temporary file of the killed write goes when it starts.
    assert len(temps(last.parent)) == 1
    (run / "config.yaml").unlink()
    assert run_cli(resume).trainer.global_step == 4
    assert checkpoint_step(last) == 4 and temps(last.parent) == []


# ---- SIGTERM ---------------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of a ``seqmem`` child process that imports seqmem and tests/faults.py from this checkout."""
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def terminate(child: subprocess.Popen) -> tuple[float, str]:
    """SIGTERM ``child``; the seconds it took to exit and what it printed on stderr (it must exit within 30 s)."""
    start = time.monotonic()
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    return time.monotonic() - start, err


# The child's run never ends, in a loop of Python code that reads no flag (as a walk of a looping chain did).
STUCK = """
import sys
import seqmem.cli
def stuck(args):
    print("running", flush=True)
    while True:
        pass
seqmem.cli.run_cli = stuck
seqmem.cli.main(sys.argv[1:])
"""


def test_sigterm_stops_a_stuck_seqmem_at_once_with_one_line():
    command = [sys.executable, "-c", STUCK, "fit", "--config", "adding"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), text=True)
    try:
        assert child.stdout.readline().strip() == "running"
        seconds, err = terminate(child)
    finally:
        child.kill()
    assert child.returncode == 143 and seconds < 10, (child.returncode, seconds, err[-2000:])
    assert err.splitlines() == ["seqmem: error: stopped by SIGTERM"], err[-2000:]


def test_sigterm_stops_a_running_fit_in_seconds_with_one_line_and_a_good_checkpoint(workdir):
    args = fit_args(workdir, *ADDING, "--checkpoint.save_top_k", "0", "--trainer.max_steps", "100000")
    command = [sys.executable, "-m", "seqmem.cli", *args]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(), text=True)
    last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.exists(), "no checkpoint within 120 s"
        seconds, err = terminate(child)
    finally:
        child.kill()
    assert child.returncode == 143 and seconds < 15, (child.returncode, seconds, err[-2000:])
    assert "Traceback" not in err, err[-4000:]
    (line,) = [line for line in err.splitlines() if line.startswith("seqmem: error:")]
    assert line.startswith(f"seqmem: error: stopped by SIGTERM; the last good checkpoint {str(last)!r} (step ")
    assert line.endswith(") is intact: resume with --ckpt_path last")
    assert checkpoint_step(last) > 0 and temps(last.parent) == []


@pytest.mark.slow
def test_sigterm_stops_a_ddp_fit_with_one_line_for_all_its_ranks(workdir):
    # Lightning passes the SIGTERM of rank 0 on to the other ranks: each stops; only rank 0 says so.
    ddp = "--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp --trainer.max_steps 100000".split()
    command = [sys.executable, "-m", "seqmem.cli", *fit_args(workdir, *ADDING, "--checkpoint.save_top_k", "0", *ddp)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(), text=True)
    last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 180
        while not last.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.exists(), "no checkpoint within 180 s"
        seconds, err = terminate(child)
    finally:
        child.kill()
    assert child.returncode == 143 and seconds < 30, (child.returncode, seconds, err[-2000:])
    assert "Traceback" not in err, err[-4000:]
    (line,) = [line for line in err.splitlines() if line.startswith("seqmem: error:")]
    assert line.startswith("seqmem: error: stopped by SIGTERM; the last good checkpoint")


# ---- a real file system that fills up --------------------------------------------------------------------------


def test_a_full_file_system_is_one_line_and_the_last_good_checkpoint_survives(small_disk, workdir, capsys):
    # Hidden 128: a checkpoint is about 0.8 MB. The first run fits; the filler leaves too little for the next.
    big = [*ADDING, "--model.hidden_size", "128", "--checkpoint.save_top_k", "0"]
    run_cli(fit_args(small_disk, *big, "--trainer.max_steps", "2"))
    last = small_disk / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * max(free - 200_000, 0))
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(small_disk, *big, "--trainer.max_steps", "4", "--ckpt_path", "last"))
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys)
    assert line.startswith("seqmem: error: cannot write ") and f": {ENOSPC}; " in line, line
    assert line.endswith(f"the last good checkpoint {str(last)!r} (step 2) is intact: resume with --ckpt_path last")
    assert checkpoint_step(last) == 2
    filler.unlink()  # room again: the same command continues from step 2
    resumed = run_cli(fit_args(small_disk, *big, "--trainer.max_steps", "4", "--ckpt_path", "last"))
    assert resumed.trainer.ckpt_path == str(last) and resumed.trainer.global_step == 4
