"""StepsToSolve: the first validation that meets the criterion, logged at its step; stop there; resume remembers."""

import json
from pathlib import Path

import pytest
from conftest import CONFIGS, fit_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmem.callbacks import StepsToSolve
from seqmem.callbacks.solved import TAG
from seqmem.cli import main, run_cli
from seqmem.errors import ConfigError
from seqmem.tasks import AddingData, AgreementData, CopyData

# Adding, T = 10, validated every 2 steps: fast, and its val/loss moves from one validation to the next.
ADDING = [
    "--config",
    str(CONFIGS / "adding.yaml"),
    "--model.hidden_size",
    "8",
    "--data.seq_len",
    "10",
    "--data.batch_size",
    "16",
    "--data.train_batches",
    "20",
    "--data.val_batches",
    "1",
    "--trainer.val_check_interval",
    "2",
    "--trainer.log_every_n_steps",
    "1",
    "--model.optimizer.lr",
    "0.03",
]


def solved_callback(**init_args) -> list[str]:
    """Append a StepsToSolve to the shipped config's callbacks, as `seqmem sweep` does."""
    spec = {"class_path": "seqmem.callbacks.StepsToSolve", "init_args": init_args}
    return ["--trainer.callbacks+", json.dumps(spec)]


def scalars(log_dir: str, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return [(s.step, s.value) for s in events.Scalars(tag)]


def steps_to_solve(cli) -> StepsToSolve:
    return next(c for c in cli.trainer.callbacks if isinstance(c, StepsToSolve))


@pytest.fixture(scope="module")
def val_curve(tmp_path_factory) -> list[tuple[int, float]]:
    """(global_step, val/loss) of every validation of an 8-step run, the losses read back from TensorBoard."""
    root = tmp_path_factory.mktemp("curve")
    cli = run_cli(fit_args(root, *ADDING, "--trainer.max_steps", "8"))
    losses = [value for _, value in scalars(cli.trainer.logger.log_dir, "val/loss")]
    # val_check_interval 2: validations after optimizer steps 2, 4, 6 and 8 (Lightning writes them one
    # step earlier on its own x-axis, which is why the steps are not read back).
    assert len(losses) == 4
    return list(zip([2, 4, 6, 8], losses, strict=True))


def first_meeting(curve: list[tuple[int, float]], threshold: float) -> int:
    return next(step for step, value in curve if value <= threshold)


def test_every_task_states_its_criterion():
    assert (AgreementData().spec.solved_metric, AgreementData().spec.solved_threshold) == ("val/acc", 0.99)
    assert (CopyData().spec.solved_metric, CopyData().spec.solved_mode) == ("val/acc", "max")
    adding = AddingData().spec
    assert (adding.solved_metric, adding.solved_mode) == ("val/loss", "min")
    assert adding.solved_threshold == pytest.approx(0.01 * adding.baseline)


def test_logged_step_is_the_first_validation_meeting_the_threshold(workdir, val_curve):
    # The threshold is the best loss of a later validation: earlier ones are above it, so only the
    # first validation at or below it may count, not the first validation of the run.
    threshold = min(value for _, value in val_curve[1:])
    expected = first_meeting(val_curve, threshold)
    assert expected > val_curve[0][0]
    cli = run_cli(
        fit_args(
            workdir,
            *ADDING,
            "--trainer.max_steps",
            "8",
            *solved_callback(metric="val/loss", threshold=threshold, mode="min"),
        )
    )
    assert steps_to_solve(cli).solved_step == expected
    assert scalars(cli.trainer.logger.log_dir, TAG) == [(expected, float(expected))]
    assert cli.trainer.global_step == 8  # not asked to stop: trains on after solving


def test_stop_when_solved_stops_at_that_step(workdir, val_curve):
    threshold = min(value for _, value in val_curve[1:])
    expected = first_meeting(val_curve, threshold)
    cli = run_cli(
        fit_args(
            workdir,
            *ADDING,
            "--trainer.max_steps",
            "8",
            *solved_callback(metric="val/loss", threshold=threshold, mode="min", stop_when_solved=True),
        )
    )
    assert cli.trainer.global_step == expected < 8


def test_never_solved_logs_nothing(workdir):
    # The task's own criterion (val/loss <= 0.01 * 1/6) is far out of reach of 4 steps.
    cli = run_cli(fit_args(workdir, *ADDING, "--trainer.max_steps", "4", *solved_callback(stop_when_solved=True)))
    callback = steps_to_solve(cli)
    assert (callback.metric, callback.mode, callback.solved_step) == ("val/loss", "min", None)
    assert cli.trainer.global_step == 4
    assert scalars(cli.trainer.logger.log_dir, TAG) == []
    assert scalars(cli.trainer.logger.log_dir, "val/loss")  # the run did log, just not the tag


def test_resumed_run_remembers_the_solved_step(workdir):
    # Met at the first validation (step 2); the resumed run must neither forget it nor log it again.
    solved = solved_callback(metric="val/loss", threshold=1e9, mode="min")
    first = run_cli(fit_args(workdir, *ADDING, "--trainer.max_steps", "4", *solved))
    last = Path(first.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    resumed = run_cli(fit_args(workdir, *ADDING, "--trainer.max_steps", "6", *solved, "--ckpt_path", str(last)))
    assert resumed.trainer.global_step == 6
    assert steps_to_solve(resumed).solved_step == 2
    assert scalars(resumed.trainer.logger.log_dir, TAG) == []  # the new run's events: not logged again


def test_bad_criterion_is_one_line(workdir, capsys):
    with pytest.raises(ConfigError, match="threshold and mode"):
        StepsToSolve(metric="val/bpc")
    with pytest.raises(SystemExit) as exit_info:
        main(
            fit_args(
                workdir,
                *ADDING,
                "--trainer.max_steps",
                "2",
                *solved_callback(metric="val/accuracy", threshold=0.5, mode="max"),
            )
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("seqmem: error: StepsToSolve metric 'val/accuracy' was not logged; logged:")
    assert "val/loss" in err
