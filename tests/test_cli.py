"""The real ``seqmem`` CLI, in-process: every cell × task trains, shipped configs parse, bad input fails cleanly."""

import functools
import inspect
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, REPO_ROOT, TASK_CONFIGS, fit_args

from seqmem.cli import main, run_cli
from seqmem.models import MODELS, OrthogonalRNN
from seqmem.module import SequenceModel

CELLS = ["vanilla", "orthogonal", "irnn", "gru", "lstm"]
TASKS = ["adding", "copy", "agreement", "lm"]
TINY = "--model.hidden_size 8 --model.embedding_size 4 --model.num_layers 1 --model.dropout 0".split()
# Options whose values in the shipped configs are too big for a smoke run.
TASK_ARGS = {
    "adding": "--data.seq_len 6 --data.batch_size 4 --data.train_batches 2 --data.val_batches 1".split(),
    "copy": "--data.seq_len 3 --data.batch_size 4 --data.train_batches 2 --data.val_batches 1".split(),
    "agreement": (
        "--data.min_len 6 --data.max_len 8 --data.distance 4 --data.batch_size 4 --data.train_batches 2 "
        "--data.val_batches 1"
    ).split(),
    "lm": "--data.seq_len 8 --data.batch_size 4".split(),
}


# What each task logs beside val/loss and val/baseline (agreement: the one distance bucket of --data.distance 4).
EXTRA_METRICS = {
    "adding": set(),
    "copy": {"val/acc"},
    "agreement": {"val/acc", "val/acc_d4-7"},
    "lm": {"val/ppl", "val/bpc"},
}


@functools.cache
def shakespeare_unigram_entropy(path: Path) -> float:
    """Entropy in nats of the character frequencies of the training split (the first 90 %)."""
    text = path.read_text()
    counts = Counter(text[: int(len(text) * 0.9)])
    total = sum(counts.values())
    return -sum(n / total * math.log(n / total) for n in counts.values())


def test_every_cell_is_a_cli_choice():
    assert set(CELLS) == set(MODELS)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_trains_on_every_task_through_the_cli(cell, task, workdir, shakespeare, lm_cache):
    extra = ["--data.path", str(shakespeare), "--data.cache_dir", str(lm_cache)] if task == "lm" else []
    cli = run_cli(
        fit_args(
            workdir,
            "--config",
            str(CONFIGS / f"{task}.yaml"),
            "--model.cell",
            cell,
            *TINY,
            *TASK_ARGS[task],
            *extra,
            *"--trainer.max_steps 2 --trainer.limit_val_batches 2 --trainer.val_check_interval 2".split(),
        )
    )
    assert cli.trainer.global_step == 2
    assert type(cli.model.net) is MODELS[cell]
    assert math.isfinite(cli.trainer.callback_metrics["train/loss"].item())
    logged = {k: v.item() for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    loss = logged["val/loss"]
    assert math.isfinite(loss) and loss > 0
    assert set(logged) == {"val/loss", "val/baseline"} | EXTRA_METRICS[task]
    # The chance-level baseline, from the task's formula (README, Tasks).
    hp = cli.datamodule.hparams
    baseline = {
        "adding": lambda: 2 / 12,  # Var(U1 + U2): always predicting 1
        "copy": lambda: hp.num_copy * math.log(hp.num_symbols) / (hp.seq_len + 2 * hp.num_copy),
        "agreement": lambda: math.log(2),
        "lm": lambda: shakespeare_unigram_entropy(shakespeare),
    }[task]()
    assert logged["val/baseline"] == pytest.approx(baseline, rel=1e-6)
    if "val/acc" in logged:
        assert 0 <= logged["val/acc"] <= 1
    if task == "agreement":  # every verb is 4 tokens from its subject: one bucket holds every sample
        assert logged["val/acc_d4-7"] == pytest.approx(logged["val/acc"])
    if task == "lm":
        assert logged["val/bpc"] == pytest.approx(loss / math.log(2), rel=1e-6)
        assert logged["val/ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
    # The default logger wrote TensorBoard events under the chosen root, not the working directory's parent.
    assert list((workdir / "lightning_logs").glob("version_0/events.out.tfevents.*"))


@pytest.mark.parametrize("config", TASK_CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_parses_and_prints(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)
    # The printed config is the shipped one on top of the shared defaults: every value of both survives.
    assert_subset(yaml.safe_load((CONFIGS / "defaults.yaml").read_text()), printed)
    assert_subset(yaml.safe_load(config.read_text()), printed)


def assert_subset(shipped, printed, where: str = "config") -> None:
    """Every value in ``shipped`` appears, at the same place, in ``printed`` (which may hold more)."""
    if isinstance(shipped, dict):
        for key, value in shipped.items():
            assert key in printed, f"{where}.{key} missing"
            assert_subset(value, printed[key], f"{where}.{key}")
    elif isinstance(shipped, list):
        assert len(shipped) == len(printed), where
        for i, (a, b) in enumerate(zip(shipped, printed, strict=True)):
            assert_subset(a, b, f"{where}[{i}]")
    else:
        assert shipped == printed, where


@pytest.mark.parametrize("config", TASK_CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_instantiates(config, workdir, shakespeare, lm_cache):
    extra = ["--data.path", str(shakespeare), "--data.cache_dir", str(lm_cache)] if config.stem == "lm" else []
    cli = run_cli(["--config", str(config), "--trainer.default_root_dir", str(workdir), *extra], run=False)
    spec = cli.datamodule.spec
    # The link carries the task into the model: sizes are never copied by hand.
    assert cli.model.task == spec
    assert cli.model.head.out_features == spec.output_size
    assert cli.trainer.max_steps > 0 or cli.trainer.max_epochs > 0
    # The shared defaults reach every task: the diagnostics, in order, with the guard last.
    assert [
        type(c).__name__ for c in cli.trainer.callbacks if type(c).__module__.startswith("seqmem")
    ] == "GradientNorms ClippingEvents RecurrentSpectrum TimestepGradients InputSensitivity NonFiniteGuard".split()
    assert cli.trainer.log_every_n_steps == 10


def test_shared_defaults_give_way_to_the_command_line(workdir):
    cli = run_cli(
        ["--config", str(CONFIGS / "adding.yaml"), *"--trainer.log_every_n_steps 3 --trainer.callbacks []".split()],
        run=False,
    )
    assert cli.trainer.log_every_n_steps == 3
    assert not any(type(c).__module__.startswith("seqmem") for c in cli.trainer.callbacks)


def test_readme_overrides_apply(workdir):
    cli = run_cli(
        ["--config", str(CONFIGS / "copy.yaml"), *"--model.cell orthogonal --data.seq_len 200".split()], run=False
    )
    assert isinstance(cli.model.net, OrthogonalRNN)
    assert cli.datamodule.hparams.seq_len == 200
    assert cli.model.task.baseline == pytest.approx(10 * math.log(8) / 220)  # copy's memoryless baseline
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch["x"].shape == (128, 220)


def test_optimizer_from_config_gives_orthogonal_group_its_scale(workdir):
    cli = run_cli(["--config", str(CONFIGS / "copy.yaml")], run=False)
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-4, 2e-5])


BAD_INPUT = {
    "unknown cell": ("--config copy --model.cell transformer".split(), 'key "model.cell"'),
    "unknown task": ("--config copy --data seqmem.tasks.SortingData".split(), 'key "data"'),
    "seq_len < 1": ("--config copy --data.seq_len 0".split(), "data.seq_len"),
    "hidden_size < 1": ("--config copy --model.hidden_size 0".split(), "model.hidden_size"),
    "option of another cell": ("--config copy --model.cell gru --model.forget_bias 1".split(), "model.forget_bias"),
    "missing corpus": ("--config lm --data.path {tmp}/missing.txt".split(), "data.path"),
    "empty corpus": ("--config lm --data.path {tmp}/empty.txt".split(), "data.path"),
    "distance > length": ("--config agreement --data.distance 51".split(), "data.distance"),
    "trainer clipping under tbptt": (
        "--config copy --model.tbptt_steps 5 --trainer.gradient_clip_val 1".split(),
        "trainer.gradient_clip_val",
    ),
    "two clippers": ("--config adding --model.gradient_clip_val 1".split(), "model.gradient_clip_val"),
}


def bad_args(args: list[str], tmp: Path) -> list[str]:
    config = CONFIGS / f"{args[1]}.yaml"
    return [str(config) if i == 1 else a.format(tmp=tmp) for i, a in enumerate(args)]


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_naming_the_option(case, workdir, capsys):
    args, option = BAD_INPUT[case]
    (workdir / "empty.txt").write_text("")
    logs = workdir / "lightning_logs"
    logs.mkdir()
    kept = logs / "notes.txt"
    kept.write_text("earlier results")
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(workdir, *bad_args(args, workdir)))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("seqmem: error:") and option in lines[0]
    assert kept.read_text() == "earlier results"
    assert sorted(p.name for p in workdir.rglob("*") if p.name not in {"empty.txt"}) == ["lightning_logs", "notes.txt"]


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    # A separate interpreter: what a user at a shell sees, exit status and stderr included.
    result = subprocess.run(
        [sys.executable, *"-m seqmem.cli fit --config".split(), str(CONFIGS / "adding.yaml"), "--data.seq_len", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "seqmem: error: data.seq_len must be >= 2" in result.stderr
    assert not (tmp_path / "lightning_logs").exists()


def documented_args(cls: type) -> dict[str, str]:
    """Google-style ``Args:`` entries of a class docstring: name -> its text on one line."""
    section = inspect.getdoc(cls).split("Args:")[1]
    section = re.split(r"^\w[\w ]*:$", section, flags=re.M)[0]  # up to the next section (Raises:, Example:)
    entries = re.findall(r"^    (\w+): (.*?)(?=^    \w+: |\Z)", section, re.M | re.S)
    return {name: " ".join(text.split()) for name, text in entries}


def test_fit_help_shows_every_model_argument_with_its_doc(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    docs = documented_args(SequenceModel)
    parameters = set(inspect.signature(SequenceModel.__init__).parameters) - {"self"}
    assert set(docs) == parameters  # every constructor argument is documented
    # task is linked from --data, so it is not a user option and has no help entry of its own.
    for name in parameters - {"task"}:
        assert f"--model.{name}" in help_text
        # argparse re-wraps help lines; compare the first words, whitespace-normalised.
        assert " ".join(docs[name].split()[:6]) in help_text, name
