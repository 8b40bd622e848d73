"""``seqmem sweep``: run a sweep's trials on Ray Tune, then write its tables and plot.

    seqmem sweep agreement.yaml                          # a shipped sweep (seqmem/configs/sweeps/) or a path
    seqmem sweep my.yaml --out sweeps/mine --threads 2   # 2 torch threads (and 2 reserved CPUs) per trial
    seqmem sweep my.yaml --address auto                  # on a running Ray cluster (`ray start --head`)
    seqmem sweep my.yaml --gpus-per-trial 0.5            # two trials share each GPU
    seqmem sweep charlm-quick --set data.path=input.txt  # an option of every trial, over the config's set
    tensorboard --logdir lightning_logs/sweeps/agreement

The sweep folder (``--out``, default ``lightning_logs/sweeps/<config name>``) holds a copy of the config
(``sweep.yaml``), one run folder per trial (TensorBoard events, checkpoints, ``train.log``,
``result.json``), ``trials.csv``, ``summary.csv``, ``summary.md``, ``summary.png`` (and ``curves.png``
when the config lists ``curves``), and Ray Tune's own
experiment state in ``ray/``. Running the same command again (after Ctrl-C, say) skips finished trials,
resumes interrupted ones from their last checkpoint and retries the ones that ended with an error (a file a
trial could not write, a full disk say, is its error: one line naming the file and the cause; its last good
checkpoint is kept, and the next run resumes from it; a run folder the disk left incomplete is cleared and the
trial tried again); a run folder made with other options, or a folder that is not a sweep run, is never reused.
The tables come from the trials' own outcomes, not from Ray Tune's files in ``ray/``, which a full disk may cut
short.

``--set KEY=VALUE`` (repeatable) sets an option of every trial, as the config's ``set`` does and over it; the
value is read as YAML (``--set data.path=null``, ``--set model.hidden_size=64``). It is part of each trial's
definition, so running again with other ``--set`` options never reuses a run folder; a key the sweep sets
itself or a grid axis sets, or one ``seqmem fit`` does not take, is refused before anything starts.

Without ``--address`` Ray starts on this machine alone (no dashboard, nothing to set up) and stops at
the end. Every trial reserves ``--threads`` CPUs and runs torch on exactly that many threads, so a
trial computes the same whether it shares the machine or not; Ray fits as many trials side by side
as the CPUs (and ``--gpus-per-trial``) allow, at most ``--max-concurrent``.
"""

import argparse
import errno
import json
import logging
import os
import pickle
import re
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional

import ray
from ray import tune
from ray._private import services  # ray.init's own reading of an address
from ray._private.utils import read_ray_address  # the cluster `ray start` started last
from ray._raylet import AuthenticationTokenLoader
from ray._raylet import Config as RayConfig
from ray.exceptions import AuthenticationError, RayError
from ray.tune.logger import JsonLoggerCallback

import seqmem
from seqmem.atomic import copy_file
from seqmem.errors import ConfigError, WriteError, chain, fail, os_error_behind, require, shorten
from seqmem.sweep import config
from seqmem.sweep.config import Sweep, load_sweep, parse_overrides, with_overrides
from seqmem.sweep.curves import plot_curves
from seqmem.sweep.plot import plot_summary
from seqmem.sweep.progress import Progress
from seqmem.sweep.summary import TrialRow, summarise, write_summary, write_trials_csv
from seqmem.sweep.trial import option_args, run_trial


def run_sweep(
    sweep: Sweep,
    out: Path,
    threads: int = 1,
    max_concurrent: Optional[int] = None,
    address: Optional[str] = None,
    gpus_per_trial: float = 0.0,
    status_every_s: float = 60.0,
) -> list[TrialRow]:
    """Run every trial of ``sweep`` on Ray Tune into ``out``; write the tables and plot; return the rows.

    Uses the Ray session of this process if there is one (tests share one), else starts one (local,
    or joins ``address``) and shuts it down at the end.

    Args:
        sweep: the sweep to run.
        out: the sweep folder.
        threads: torch threads, and CPUs reserved, per trial.
        max_concurrent: at most this many trials at once (None: as many as the resources allow).
        address: a Ray cluster to join (``auto``, or ``host:port``); None: a local Ray on this machine.
        gpus_per_trial: the GPU share of each trial, in (0, 1]; 0: CPU only.
        status_every_s: seconds between two status lines of the running trials.

    Raises:
        ConfigError: the cluster has fewer CPUs or GPUs than one trial asks for.
    """
    out = out.resolve()
    # Ray's TensorBoard and CSV loggers would add a second set of runs to the sweep folder; only its
    # JSON logger is kept (in ray/), which its result grid reads back. Its console tables are off too
    # (the legacy output engine, at verbose 0, prints nothing): Progress prints one line per trial.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    started = not ray.is_initialized()
    if started:
        start_ray(address)
    try:
        resources = ray.cluster_resources()
        require(
            threads <= resources.get("CPU", 0),
            f"--threads {threads}: the Ray cluster has {resources.get('CPU', 0):g} CPUs, fewer than one trial asks for",
        )
        require(
            gpus_per_trial <= resources.get("GPU", 0),
            f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs",
        )
        try:
            out.mkdir(parents=True, exist_ok=True)  # only now: a refused sweep writes nothing
        except OSError as error:
            raise WriteError.of(error, out) from error
        if sweep.path != (out / "sweep.yaml").resolve():
            copy_file(sweep.path, out / "sweep.yaml")
        progress = Progress(sweep, status_every_s)
        trainable = tune.with_parameters(
            run_trial, sweep=sweep, out=str(out), cwd=os.getcwd(), threads=threads, gpus=gpus_per_trial
        )
        tuner = make_tuner(
            out / "ray",
            tune.with_resources(trainable, {"cpu": threads, "gpu": gpus_per_trial}),
            param_space={axis.key: tune.grid_search(list(axis.points)) for axis in sweep.axes},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent,
                # A new trial in a warm worker skips importing torch and Lightning again (seconds each);
                # every trial seeds itself, so reuse changes no result.
                reuse_actors=True,
                trial_name_creator=lambda trial: sweep.trial_name(trial.config),
                trial_dirname_creator=lambda trial: sweep.trial_name(trial.config),
            ),
            run_config=tune.RunConfig(
                name="ray", storage_path=str(out), verbose=0, callbacks=[progress, JsonLoggerCallback()]
            ),
        )
        with _quiet_ray_reports() as reports:
            # Ray catches Ctrl-C here: it stops the trials and returns what has finished.
            caught = fit(tuner)
        failure = reports.storage_failure or caught  # the first failure, a write's, says most
        if failure is not None:
            print(
                f"note: Ray Tune's own state in {str(out / 'ray')!r} is incomplete ({failure}); the sweep does not "
                "need it: its tables come from the trials",
                flush=True,
            )
    finally:
        if started:
            ray.shutdown()
    # Each trial's outcome as the driver received it (Progress keeps them), not as Ray reads it back from ray/:
    # a trial that never finished (interrupted, or never started) is unfinished.
    outcomes = progress.outcomes
    rows = [TrialRow.of(sweep, point, *outcomes.get(sweep.trial_name(point), (None, None))) for point in sweep.points()]
    write_outputs(out, rows, sweep)
    return rows


def make_tuner(state: Path, *args: Any, **kwargs: Any) -> tune.Tuner:
    """``tune.Tuner(*args, **kwargs)``, which saves its own state into ``state`` at once (before any trial).

    Raises:
        WriteError: that state could not be written (a full disk): nothing has run yet.
    """
    try:
        return tune.Tuner(*args, **kwargs)
    except Exception as error:
        cause = os_error_behind(error)
        if cause is None:
            raise
        # pyarrow's message wraps the OS's: its errno says it plainly.
        reason = os.strerror(cause.errno) if cause.errno else cause.strerror or str(cause)
        raise WriteError(cause.errno, reason, str(state), kind="Ray Tune's state in") from error


#: What Ray Tune raises where its own files in ray/ are cut short or cannot be written (a full disk): a pickle
#: or JSON file that ends early, or the OS error of the write.
RAY_STATE_ERRORS = (OSError, EOFError, pickle.UnpicklingError, json.JSONDecodeError)


def fit(tuner: tune.Tuner) -> Optional[str]:
    """``tuner.fit()``; where Ray Tune could not write or read back its own state, why, in a few words.

    That state (``ray/``) is a by-product: every trial's outcome is in its run folder and reached the driver
    as it finished (see :class:`~seqmem.sweep.progress.Progress`). Ray reads it back once the trials are done,
    to build its result grid, which the sweep does not use; on a full disk that is where it fails.

    Raises:
        Exception: any other error of Ray Tune (a bug keeps its traceback).
    """
    try:
        tuner.fit()
    except Exception as error:
        cause = next((e for e in chain(error) if isinstance(e, RAY_STATE_ERRORS)), None)
        if cause is None:
            raise
        return _reason(cause)
    return None


def _reason(error: BaseException) -> str:
    """A few words for an error of Ray Tune's state: the OS's reason where it has one (pyarrow's message wraps it)."""
    text = " ".join(str(error).split())
    number = error.errno if isinstance(error, OSError) and error.errno else _errno(text)
    if number is not None:
        return f"{os.strerror(number)} [{errno.errorcode.get(number, number)}]"
    return f"{type(error).__name__}: {text or 'no message'}"


def _errno(text: str) -> Optional[int]:
    """The error number in a message that shows one (``[Errno 28] ...``), else None."""
    found = re.search(r"\[Errno (\d+)\]", text)
    return int(found.group(1)) if found else None


#: Seconds an ``--address`` has to answer (accept a connection, and reply to a gRPC client's first words as a Ray
#: head does) before the sweep gives up on it.
CONNECT_TIMEOUT_S = 10.0
#: The first bytes of a gRPC (HTTP/2) connection: the client preface and an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def answers(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> Optional[str]:
    """None where a server at ``host:port`` accepts a connection and replies to a gRPC client's first words within
    ``timeout`` seconds, as a Ray head's GCS does; else why not, in a few words.

    Ray itself tries an address for minutes (twenty tries of up to 35 s) where nothing answers.
    """
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            sock.sendall(HTTP2_PREFACE)
            if not sock.recv(1):
                return "it closed the connection without a reply"
    except TimeoutError:
        return f"no reply within {timeout:g} s"
    except OSError as error:
        return error.strerror or str(error)
    return None


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join the Ray cluster at ``address``, or start one on this machine with ``num_cpus`` (default: all).

    Trials print into their own train.log, so worker output is not forwarded to this console. A local
    Ray's workers import the same seqmem as this process (a checkout on PYTHONPATH included), whatever
    their working directory. A local Ray is a new one even where a cluster runs on this machine (plain
    ``ray.init()`` would join the one ``ray start`` started last).

    Token authentication (``RAY_AUTH_MODE``), where the environment does not set it: a local Ray runs with it,
    as Ray's default is, but said explicitly (Ray warns at every start where it is left to its default); a
    cluster on this machine is joined with this machine's token where there is one (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``: the one ``ray start --head`` took), as Ray joins
    ``auto``; a cluster elsewhere gets a token only where ``RAY_AUTH_MODE=token`` says so, as in Ray, which
    sends no token to another machine unasked.

    Raises:
        ConfigError: nothing at ``address`` answers within :data:`CONNECT_TIMEOUT_S` seconds, or it cannot be
            joined (not a Ray head, or it asks for a token this process does not have).
    """
    if address is not None:
        join_ray(address)
        return
    auth_mode("token" if "RAY_AUTH_MODE" not in os.environ else None)
    if num_cpus is None:
        num_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    source = str(Path(seqmem.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )


def join_ray(address: str) -> None:
    """Join the Ray cluster at ``address`` (``auto``, ``host:port``, or Ray Client's ``ray://host:port``), with
    the token authentication :func:`start_ray` describes.

    Raises:
        ConfigError: as :func:`start_ray`.
    """
    target = address
    if address == "auto":
        # Where no cluster is recorded, Ray's own auto joins any Ray it sees running here: another sweep's private
        # one, say, which ends with that sweep. Only the cluster `ray start` recorded (or RAY_ADDRESS) is joined.
        target = os.environ.get("RAY_ADDRESS") or read_ray_address()
        if not target:
            raise ConfigError(
                "--address auto: no Ray cluster was started on this machine with `ray start`: start one with "
                "`ray start --head`, or give the address of one as host:port"
            )
    where = target
    if "://" not in target:  # Ray Client's addresses are left to Ray
        try:
            where = services.canonicalize_bootstrap_address(target) or target  # as ray.init() reads it: localhost
            host, _, port = where.rpartition(":")
            host, port_number = host.strip("[]"), int(port)
        except ValueError:
            raise ConfigError(f"--address {address}: not a Ray address {target!r}: give host:port, or auto") from None
        why = answers(host, port_number)
        if why is not None:
            found = ""
            if target != address:
                found = " (RAY_ADDRESS)" if os.environ.get("RAY_ADDRESS") else " (the last `ray start` on this machine)"
            raise ConfigError(
                f"--address {address}: no Ray cluster answers at {where}{found}: {why}: check the host and the port "
                "(`ray start --head` prints them) and that the cluster runs (`ray status`)"
            )
        local = "RAY_AUTH_MODE" not in os.environ and on_this_machine(host) and has_token()
        auth_mode("token" if local else None)
    try:
        with _stderr_held():
            ray.init(address=where, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, RayError) as error:
        ray.shutdown()
        if any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in chain(error)):
            raise ConfigError(
                f"--address {address}: the Ray cluster at {where} asks for a token that this process does not have: "
                "set RAY_AUTH_MODE=token and the cluster's token (`ray get-auth-token` on its head) in "
                "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
            ) from None
        reason = shorten(" ".join(str(error).split()) or type(error).__name__)
        raise ConfigError(
            f"--address {address}: cannot join a Ray cluster at {where}: {reason}: check that it is the address "
            "`ray start --head` printed"
        ) from None


def auth_mode(mode: Optional[str] = None) -> None:
    """Set Ray's token authentication (``RAY_AUTH_MODE``: ``token`` or ``disabled``) for this process and the Ray
    processes it starts; None: as the environment says."""
    if mode is not None:
        os.environ["RAY_AUTH_MODE"] = mode
    # Ray reads its settings once, when imported, and its token once, when first used: both are read again, as
    # Ray does itself where it turns token mode on (the token may be another one since: a sweep joined a cluster).
    RayConfig.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def has_token() -> bool:
    """Whether a Ray token is set where Ray looks for one: ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``
    names, or ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True  # a path that cannot be read is Ray's error to report
    return (Path.home() / ".ray" / "auth_token").is_file()


def on_this_machine(host: str) -> bool:
    """Whether ``host`` is an address of this machine (the loopback, or one of its interfaces'): one that a
    socket here can bind to."""
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, address in found:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((address[0], 0))
            except OSError:
                continue
            return True
    return False


@contextmanager
def _stderr_held() -> Iterator[None]:
    """Hold back what this process writes to its stderr (file descriptor 2, where Ray's core logs each failed
    try) while it joins a cluster: written out after if it joins; dropped if not, for the one line that says why."""
    sys.stderr.flush()
    saved = os.dup(2)
    joined = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            joined = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if joined:
                held.seek(0)
                os.write(2, held.read())


class _DropRayReports(logging.Filter):
    # Messages whose content the sweep reports itself, or that mislead for a sweep.
    DROPPED = (
        "Trial task failed",  # a traceback: Progress prints the error in one line; the traceback stays in
        # the run's train.log and in Ray's error.txt under ray/
        "Trials did not complete",  # the summary counts errors and unfinished trials
        "Experiment has been interrupted",  # suggests Tuner.restore; the same command continues a sweep
        "Failed to fetch metrics",  # trials an interrupt kept from starting have no results yet
    )
    # Ray copies its own state into ray/ as it goes; where a copy fails (a full disk) it logs a traceback, at
    # every try. The trials do not need that state: the first failure is kept, for one line at the end.
    STORAGE = ("Last sync command failed", "Saving experiment state to storage")

    def __init__(self) -> None:
        super().__init__()
        self.storage_failure: Optional[str] = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.STORAGE):
            if self.storage_failure is None:
                error = record.exc_info[1] if record.exc_info else None
                # The syncer puts its traceback into the message: its last line names the error.
                self.storage_failure = _reason(error or RuntimeError(message.strip().splitlines()[-1]))
            return False
        return not message.startswith(self.DROPPED)


@contextmanager
def _quiet_ray_reports() -> Iterator[_DropRayReports]:
    """Drop Ray Tune's log messages that the sweep reports in its own way (see _DropRayReports)."""
    names = (
        "ray.tune.execution.tune_controller",
        "ray.tune.tune",
        "ray.tune.analysis.experiment_analysis",
        "ray.tune.execution.experiment_state",
        "ray.train._internal.syncer",
    )
    loggers = [logging.getLogger(name) for name in names]
    drop = _DropRayReports()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield drop
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def check_shared_options(sweep: Sweep) -> None:
    """Refuse, before any trial starts, options that every trial would fail to parse (a misspelt key in ``set``
    or ``--set``, a value of the wrong type); a grid point's own bad options are that trial's error, as ever.

    Parsed together with the first grid point's options (a bundle may switch the task, whose options ``set``
    then names); only when the point alone parses are the shared options at fault.

    Raises:
        ConfigError: naming the options and seqmem fit's reason.
    """
    from argparse import ArgumentError

    from seqmem.lightning_cli import check_fit_options  # torch and Lightning: imported once the config is read

    if not sweep.options:
        return
    own = {key: value for axis in sweep.axes for key, value in next(iter(axis.points.values())).items()}
    base = ["--config", str(sweep.base)]
    try:
        check_fit_options([*base, *option_args({**sweep.options, **own})])
    except ArgumentError as error:
        try:
            check_fit_options([*base, *option_args(own)])
        except ArgumentError:
            return  # the grid point is at fault: its trial reports it
        keys = ", ".join(sweep.options)
        reason = shorten(" ".join(str(error).split()), limit=300)
        raise ConfigError(f"sweep: the options of every trial (set and --set: {keys}) do not parse: {reason}") from None


def write_outputs(out: Path, rows: list[TrialRow], sweep: Sweep) -> None:
    """trials.csv, summary.csv, summary.md and summary.png; the summary is printed too."""
    summaries = summarise(rows, [axis.name for axis in sweep.config_axes], [r.name for r in sweep.record])
    metric = next((r.metric for r in rows if r.metric), "val/loss")
    write_trials_csv(out / "trials.csv", rows, sweep)
    print("\n" + write_summary(out, summaries, sweep, metric))
    plot_summary(out / "summary.png", rows, summaries, sweep, metric)
    written = "trials.csv, summary.csv, summary.md, summary.png"
    if sweep.curves:
        plot_curves(out / "curves.png", out, rows, sweep)
        written += ", curves.png"
    print(f"wrote {written} in {out}; tensorboard --logdir {out}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"sweep: {message} (see seqmem sweep --help)")


def main(argv: Optional[list[str]] = None) -> None:
    """``seqmem sweep CONFIG [--out DIR] [--threads N] [--max-concurrent N] [--address ADDR] [--gpus-per-trial F]
    [--set KEY=VALUE ...]``."""
    parser = _Parser(
        prog="seqmem sweep",
        description=__doc__,
        epilog=config.__doc__,  # the config format
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="sweep config: a YAML path, or a shipped sweep's name (agreement.yaml)")
    parser.add_argument("--out", type=Path, help="sweep folder (default: lightning_logs/sweeps/<config name>)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, and CPUs reserved, per trial")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: as many as fit)")
    parser.add_argument("--address", help="join this Ray cluster (auto, or host:port) instead of starting one")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPU share of each trial in (0, 1]; 0: CPU")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of every trial, over the config's set (repeatable; the value is read as YAML): "
        "--set data.path=input.txt --set model.hidden_size=64",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        parser.error(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if not 0 <= args.gpus_per_trial <= 1:
        parser.error(f"--gpus-per-trial must be in [0, 1] (one trial trains on one GPU), got {args.gpus_per_trial:g}")
    try:
        sweep = with_overrides(load_sweep(args.config), parse_overrides(args.set))
        check_shared_options(sweep)
        out = args.out or Path("lightning_logs") / "sweeps" / sweep.path.stem
        rows = run_sweep(sweep, out, args.threads, args.max_concurrent, args.address, args.gpus_per_trial)
    except (ConfigError, WriteError) as error:  # bad input, or a file of the sweep it could not write
        fail(str(error))
    errors = sum(row.status == "error" for row in rows)
    unfinished = sum(row.status == "unfinished" for row in rows)
    if unfinished:
        print(f"{unfinished} of {len(rows)} trials unfinished (interrupted): run the same command to continue")
    if errors or unfinished:
        raise SystemExit(1)
