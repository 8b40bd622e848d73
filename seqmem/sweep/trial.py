"""One trial of a sweep, as Ray Tune runs it in a worker: a real ``seqmem fit`` in its own run folder.

The run folder ``<out>/<run name>/`` holds the trial's TensorBoard events, checkpoints, ``config.yaml``,
``train.log`` (everything the run printed), ``trial.json`` (what the outcome depends on) and, once the
trial has finished, ``result.json``. Starting the trial again:

- ``result.json`` there: the result is reported at once, nothing is trained (recorded tags are read
  again, so a changed ``record`` applies without retraining);
- no ``result.json`` but a ``checkpoints/last.ckpt`` (stopped at Ctrl-C, or an error after the first
  validation): training resumes from it (``--ckpt_path``);
- otherwise the folder is cleared and the trial starts over.

A run folder whose ``trial.json`` differs (another budget, criterion, option) is never reused: the
trial stops with an error that says so. A folder an attempt left incomplete is the trial's own and is
cleared: its ``trial.json`` cannot be read (empty or cut short), or it has none and holds nothing but what a
trial writes before it (empty folders, ``train.log``, temporary files of seqmem's atomic writes). Any other
folder without a ``trial.json`` is someone else's: the trial stops with an error naming a file in it, and
nothing is deleted.
"""

import json
import os
import shutil
import sys
import time
import traceback
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, Optional

from ray import tune

from seqmem.atomic import TEMP_SUFFIX, write_text
from seqmem.errors import WriteError, error_line
from seqmem.sweep.config import Record, Sweep
from seqmem.sweep.events import read_scalars

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


class TrialError(RuntimeError):
    """A trial could not finish; the message is one line (the full traceback is in its train.log)."""


def run_trial(config: dict[str, Any], sweep: Sweep, out: str, cwd: str, threads: int, gpus: float) -> None:
    """Ray Tune's trainable: run (or resume, or reuse) one trial and report its result.

    Args:
        config: the trial's point of the grid, {axis key: label}, as Ray's grid search resolved it.
        sweep: the sweep the trial belongs to.
        out: the sweep folder; the run folder is ``<out>/<run name>``.
        cwd: the directory the sweep was started from: relative paths in options resolve against it,
            as they would for ``seqmem fit`` (Ray starts trials in a folder of its own).
        threads: torch threads of this trial, fixed so that results do not depend on how many trials
            share the machine.
        gpus: the GPU share of this trial; > 0 trains on the one GPU Ray assigned.
    """
    point = {axis.key: config[axis.key] for axis in sweep.axes}
    run_dir = Path(out) / sweep.trial_name(point)
    finished = claim(run_dir, json.loads(json.dumps(sweep.definition(point))))  # as trial.json reads back
    if finished is not None:
        tune.report({**finished, "record": read_records(run_dir, sweep.record), "skipped": True})
        return
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = last if last.is_file() else None
    if resume is not None:
        # LightningCLI refuses to overwrite the config.yaml of the first attempt; it writes it again.
        (run_dir / "config.yaml").unlink(missing_ok=True)
    if os.path.isdir(cwd):  # on another node of a cluster it may not exist: then paths must be absolute
        os.chdir(cwd)
    with output_to(run_dir / "train.log"):
        result = train(fit_args(sweep, point, Path(out), gpus, resume), threads)
    result.update(name=run_dir.name, record=read_records(run_dir, sweep.record))
    write_text(run_dir / "result.json", json.dumps(result, indent=1))  # whole or not at all: it marks the trial done
    tune.report({**result, "skipped": False})


def claim(run_dir: Path, definition: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Make ``run_dir`` this trial's: its result if it has finished, else None, the folder ready to train in.

    Raises:
        TrialError: the folder is not a sweep run, or a run of another definition.
    """
    previous = read_json(run_dir / "trial.json")
    if previous is None and run_dir.exists() and not (run_dir / "trial.json").exists():
        foreign = foreign_file(run_dir)
        if foreign is not None:
            raise TrialError(
                f"{run_dir} exists but is not a sweep run (no trial.json, and it holds {str(foreign)!r}): "
                "move it, or sweep into another --out"
            )
    if previous is not None and previous != definition:
        changed = ", ".join(key for key in definition if previous.get(key) != definition[key])
        raise TrialError(
            f"{run_dir} holds a run with another {changed}: delete that folder, or sweep into another --out"
        )
    finished = None if previous is None else read_json(run_dir / "result.json")
    if finished is not None:
        return finished
    if run_dir.exists() and (previous is None or not (run_dir / "checkpoints" / "last.ckpt").is_file()):
        # An attempt that left no checkpoint: its events would only overlap the new ones. Or one whose
        # trial.json never got written whole: its checkpoint may be of another definition, so it is not resumed.
        try:
            shutil.rmtree(run_dir)
        except OSError as error:
            raise WriteError.of(error, error.filename or run_dir) from error
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError.of(error, run_dir) from error
    write_text(run_dir / "trial.json", json.dumps(definition, indent=1))
    return None


def fit_args(sweep: Sweep, point: dict[str, Any], out: Path, gpus: float, resume: Optional[Path]) -> list[str]:
    """The ``seqmem fit`` arguments of one trial."""
    args = ["fit", "--config", str(sweep.base), *option_args(sweep.trial_options(point))]
    solved = {"stop_when_solved": sweep.stop_when_solved}
    if sweep.solved is not None:
        solved.update(metric=sweep.solved.metric, threshold=sweep.solved.threshold, mode=sweep.solved.mode)
    args += [
        "--trainer.max_steps",
        str(sweep.budget),
        "--trainer.max_epochs",
        "-1",
        "--trainer.enable_progress_bar",
        "false",
        # version "": the events go straight into <out>/<run name>, the name TensorBoard shows.
        "--trainer.logger.class_path",
        TENSORBOARD,
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.logger.init_args.name",
        sweep.trial_name(point),
        "--trainer.logger.init_args.version",
        "",
        "--trainer.callbacks+",
        json.dumps({"class_path": "seqmem.callbacks.StepsToSolve", "init_args": solved}),
        "--trainer.callbacks+",
        json.dumps({"class_path": "seqmem.sweep.report.ReportToTune"}),
    ]
    if gpus > 0:
        args += ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]  # Ray exposes only this trial's GPU
    if resume is not None:
        args += ["--ckpt_path", str(resume)]
    return args


def option_args(options: dict[str, Any]) -> list[str]:
    """``{"model.cell": "gru", "data.seq_len": 30}`` as ``seqmem fit`` arguments, in order."""
    args = []
    for key, value in options.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]  # JSON is YAML to jsonargparse
    return args


def train(args: list[str], threads: int) -> dict[str, Any]:
    """Run ``seqmem fit`` in this process; the outcome as a dict, or a one-line :class:`TrialError`."""
    import torch

    from seqmem.callbacks import NonFiniteError, StepsToSolve
    from seqmem.lightning_cli import run_cli

    torch.set_num_threads(threads)
    start = time.perf_counter()
    argv, sys.argv = sys.argv, sys.argv[:1]  # the Ray worker's own arguments would make LightningCLI warn
    try:
        cli = run_cli(args)
    except NonFiniteError as stopped:
        # The guard stopped a run whose updates kept going NaN/inf: an outcome of the configuration (an
        # exploding recurrence without clipping, say), reported as such rather than as a failed trial.
        print(f"seqmem: {stopped}")  # into train.log
        return {
            "status": "diverged",
            "steps_to_solve": None,
            "steps": stopped.step,
            "criterion": None,
            "metric": None,
            "final": None,
            "seconds": time.perf_counter() - start,
        }
    except Exception as error:
        with suppress(OSError):  # train.log may sit on the disk that just filled up: the error line must survive
            traceback.print_exc()  # into train.log
        raise TrialError(one_line(error)) from None  # the cause may not unpickle in the driver
    finally:
        sys.argv = argv
    if cli.trainer.interrupted:  # never record an interrupted run as finished
        raise TrialError(f"training was interrupted at step {cli.trainer.global_step}")
    solved = next(c for c in cli.trainer.callbacks if isinstance(c, StepsToSolve))
    metric = solved.metric or "val/loss"  # no criterion: report the loss
    final = cli.trainer.callback_metrics.get(metric)
    if solved.metric is None:
        status = "no criterion"
    else:
        status = "solved" if solved.solved_step is not None else "not solved"
    return {
        "status": status,
        "steps_to_solve": solved.solved_step,
        "steps": cli.trainer.global_step,
        "criterion": solved.criterion(),
        "metric": metric,
        "final": None if final is None else float(final),
        "seconds": time.perf_counter() - start,
    }


def one_line(error: BaseException) -> str:
    """The message ``seqmem fit`` would print for ``error``, on one line."""
    from argparse import ArgumentError

    line = error_line(error)  # bad input, or a file the trial could not write
    if line is not None:
        return line
    text = " ".join(str(error).split())
    return text if isinstance(error, ArgumentError) else f"{type(error).__name__}: {text}"


def error_message(error: BaseException) -> str:
    """One line for a trial's error as the driver receives it (Ray wraps the trial's own exception)."""
    cause = getattr(error, "cause", None) or error  # RayTaskError keeps the raised exception as .cause
    if isinstance(cause, TrialError):
        return str(cause)
    return one_line(cause)


def read_records(run_dir: Path, records: tuple[Record, ...]) -> dict[str, Optional[float]]:
    """The value of every recorded tag in the run's TensorBoard events (None where never logged)."""
    scalars = read_scalars(run_dir, [record.tag for record in records])
    values: dict[str, Optional[float]] = {}
    for record in records:
        logged = scalars[record.tag]  # [(step, value)] by step
        if isinstance(record.at, int):
            logged = [point for point in logged if point[0] <= record.at]
        values[record.name] = (logged[0] if record.at == "first" else logged[-1])[1] if logged else None
    return values


def read_json(path: Path) -> Optional[dict]:
    """The object in ``path``; None where there is none, or the file is empty or cut short (a full disk).

    Raises:
        OSError: the file is there but cannot be read (no permission): never taken for a missing one.
    """
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_bytes())
    except ValueError:  # a JSONDecodeError, or bytes that are not text
        return None
    return value if isinstance(value, dict) else None


#: What a trial writes in its run folder before its trial.json is whole (an attempt the disk or a kill cut
#: short may leave these behind): its log, and the temporary files of seqmem's atomic writes.
TRIAL_LEFTOVERS = ("train.log", f".*{TEMP_SUFFIX}")


def foreign_file(run_dir: Path) -> Optional[Path]:
    """A file in ``run_dir`` (searched through its folders) that no trial writes before its trial.json, or None:
    then the folder is an attempt cut short, the trial's own to clear."""
    for path in sorted(run_dir.rglob("*")):
        if path.is_symlink() or (not path.is_dir() and not any(path.match(name) for name in TRIAL_LEFTOVERS)):
            return path
    return None


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Append this process's stdout and stderr to ``path`` for the duration.

    File descriptors 1 and 2 are redirected, not ``sys.stdout``: Lightning's logging handlers keep the
    stream they were built with, and C code writes to the descriptors directly.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        log = open(path, "a")
    except OSError as error:
        raise WriteError.of(error, path) from error
    with log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            with suppress(OSError):  # a full disk: the log loses its tail, the trial keeps its own error
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
