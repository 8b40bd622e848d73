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
checkpoint is kept, and the next run resumes from it); a run folder made with other options is never reused.

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
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NoReturn, Optional

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

import seqmem
from seqmem.atomic import copy_file
from seqmem.errors import ConfigError, WriteError, fail, require, shorten
from seqmem.sweep import config
from seqmem.sweep.config import Sweep, load_sweep, parse_overrides, with_overrides
from seqmem.sweep.curves import plot_curves
from seqmem.sweep.plot import plot_summary
from seqmem.sweep.progress import Progress
from seqmem.sweep.summary import TrialRow, summarise, write_summary, write_trials_csv
from seqmem.sweep.trial import error_message, option_args, run_trial


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
        trainable = tune.with_parameters(
            run_trial, sweep=sweep, out=str(out), cwd=os.getcwd(), threads=threads, gpus=gpus_per_trial
        )
        tuner = tune.Tuner(
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
                name="ray",
                storage_path=str(out),
                verbose=0,
                callbacks=[Progress(sweep, status_every_s), JsonLoggerCallback()],
            ),
        )
        with _quiet_ray_reports():
            # Ray catches Ctrl-C here: it stops the trials and returns what has finished.
            grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    by_name = {}
    for result in grid:
        if result.config is None:  # never started (interrupted first): unfinished
            continue
        error = None if result.error is None else error_message(result.error)
        by_name[sweep.trial_name(result.config)] = (result.metrics, error)
    rows = [TrialRow.of(sweep, point, *by_name.get(sweep.trial_name(point), (None, None))) for point in sweep.points()]
    write_outputs(out, rows, sweep)
    return rows


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join the Ray cluster at ``address``, or start one on this machine with ``num_cpus`` (default: all).

    Trials print into their own train.log, so worker output is not forwarded to this console. A local
    Ray's workers import the same seqmem as this process (a checkout on PYTHONPATH included), whatever
    their working directory.
    """
    if address is not None:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        return
    if num_cpus is None:
        num_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    source = str(Path(seqmem.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )


class _DropRayReports(logging.Filter):
    # Messages whose content the sweep reports itself, or that mislead for a sweep.
    DROPPED = (
        "Trial task failed",  # a traceback: Progress prints the error in one line; the traceback stays in
        # the run's train.log and in Ray's error.txt under ray/
        "Trials did not complete",  # the summary counts errors and unfinished trials
        "Experiment has been interrupted",  # suggests Tuner.restore; the same command continues a sweep
        "Failed to fetch metrics",  # trials an interrupt kept from starting have no results yet
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.DROPPED)


@contextmanager
def _quiet_ray_reports() -> Iterator[None]:
    """Drop Ray Tune's log messages that the sweep reports in its own way (see _DropRayReports)."""
    names = ("ray.tune.execution.tune_controller", "ray.tune.tune", "ray.tune.analysis.experiment_analysis")
    loggers = [logging.getLogger(name) for name in names]
    drop = _DropRayReports()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
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
