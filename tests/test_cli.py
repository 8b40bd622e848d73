"""The real ``seqmem`` CLI, in-process: every cell × task trains, shipped configs parse, bad input fails cleanly."""

import functools
import inspect
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, HUB_CORPUS, HUB_SPLITS, QUIET, REPO_ROOT, TASK_CONFIGS, fit_args

from seqmem.cli import main, run_cli
from seqmem.models import MODELS, OrthogonalRNN, registered_options
from seqmem.module import SequenceModel

CELLS = ["vanilla", "orthogonal", "irnn", "gru", "lstm", "lru"]
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
def test_every_cell_trains_on_every_task_through_the_cli(cell, task, workdir, lm_cache, request):
    # Only lm needs the corpus (and skips without it); the other tasks run in a clone with nothing beside it.
    shakespeare = request.getfixturevalue("shakespeare") if task == "lm" else None
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
            *"--trainer.log_every_n_steps 1".split(),  # train/loss is handed to Lightning on logging steps
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


def test_lm_config_reads_its_hub_corpus_offline_from_the_cache(workdir, hub_cache):
    # No data.path: lm.yaml's Hub dataset through the real datasets loader, from a cached copy (HF offline).
    args = [*TINY, *TASK_ARGS["lm"], "--data.cache_dir", str(hub_cache)]
    args += "--trainer.max_steps 2 --trainer.limit_val_batches 1 --trainer.val_check_interval 2".split()
    cli = run_cli(fit_args(workdir, "--config", "lm", *args))
    data = cli.datamodule
    assert (data.hparams.path, data.hparams.hub_dataset, data.hparams.hub_config) == (None, HUB_CORPUS, None)
    assert data.vocab == sorted(set(HUB_SPLITS["train"]))
    decode = lambda ids: "".join(data.vocab[i] for i in ids.tolist())  # noqa: E731
    for split, loader in (("train", data.train_dataloader), ("validation", data.val_dataloader)):
        stream_len = len(HUB_SPLITS[split]) // 4  # data.batch_size 4 contiguous streams
        first = next(iter(loader()))["x"]  # (4, 8)
        assert [decode(row) for row in first] == [HUB_SPLITS[split][s * stream_len :][:8] for s in range(4)]
    counts = Counter(HUB_SPLITS["train"])
    entropy = -sum(n / len(HUB_SPLITS["train"]) * math.log(n / len(HUB_SPLITS["train"])) for n in counts.values())
    assert cli.model.task.baseline == pytest.approx(entropy)
    assert cli.trainer.global_step == 2


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
def test_shipped_config_instantiates(config, workdir, hub_cache):
    extra = ["--data.cache_dir", str(hub_cache)] if config.stem == "lm" else []  # lm.yaml's Hub corpus, offline
    cli = run_cli(["--config", str(config), "--trainer.default_root_dir", str(workdir), *extra], run=False)
    spec = cli.datamodule.spec
    # The link carries the task into the model: sizes are never copied by hand.
    assert cli.model.task == spec
    assert cli.model.head.out_features == spec.output_size
    assert cli.trainer.max_steps > 0 or cli.trainer.max_epochs > 0
    # The shared defaults reach every task: the diagnostics, in order, with the guard last.
    diagnostics = "GradientNorms ClippingEvents RecurrentSpectrum TimestepGradients InputSensitivity JacobianSpectrum"
    seqmem_callbacks = [
        type(c).__name__ for c in cli.trainer.callbacks if type(c).__module__.startswith("seqmem.callbacks")
    ]
    assert seqmem_callbacks == [*diagnostics.split(), "NonFiniteGuard"]
    assert cli.trainer.log_every_n_steps == 10


def test_shared_defaults_give_way_to_the_command_line(workdir):
    cli = run_cli(
        ["--config", str(CONFIGS / "adding.yaml"), *"--trainer.log_every_n_steps 3 --trainer.callbacks []".split()],
        run=False,
    )
    assert cli.trainer.log_every_n_steps == 3
    assert not any(type(c).__module__.startswith("seqmem.callbacks") for c in cli.trainer.callbacks)


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


TASKS = "AddingData, AgreementData, CopyData, LMData"
LR_RULE = "model.optimizer.lr must be finite and >= 0 (0 freezes the model for its diagnostics)"
BAD_INPUT = {
    "unknown cell": ("--config copy --model.cell transformer".split(), "model.cell must be one of vanilla"),
    "unknown task": ("--config copy --data seqmem.tasks.SortingData".split(), "data must be one of " + TASKS),
    "abstract task base": ("--config copy --data TaskDataModule".split(), "data must be one of " + TASKS),
    "abstract synthetic base": ("--config copy --data SyntheticTask".split(), "is abstract"),
    "seq_len < 1": ("--config copy --data.seq_len 0".split(), "data.seq_len"),
    "hidden_size < 1": ("--config copy --model.hidden_size 0".split(), "model.hidden_size"),
    "option of another cell": ("--config copy --model.cell gru --model.forget_bias 1".split(), "model.forget_bias"),
    "missing corpus": ("--config lm --data.path {tmp}/missing.txt".split(), "data.path"),
    "empty corpus": ("--config lm --data.path {tmp}/empty.txt".split(), "data.path"),
    "binary corpus": ("--config lm --data.path {tmp}/binary.bin".split(), "binary.bin' is not utf-8 text"),
    "latin-1 corpus": ("--config lm --data.path {tmp}/latin.txt".split(), "--data.encoding"),
    "unknown encoding": ("--config lm --data.path {tmp}/latin.txt --data.encoding klingon".split(), "data.encoding"),
    "binary lexicon": ("--config agreement --data.lexicon {tmp}/binary.bin".split(), "data.lexicon"),
    "distance > length": ("--config agreement --data.distance 51".split(), "data.distance"),
    "trainer clipping under tbptt": (
        "--config copy --model.tbptt_steps 5 --trainer.gradient_clip_val 1".split(),
        "trainer.gradient_clip_val",
    ),
    # adding.yaml clips in the Trainer: the message gives the exact fix.
    "config clipping under tbptt": (
        "--config adding --model.tbptt_steps 5".split(),
        "pass --trainer.gradient_clip_val null --model.gradient_clip_val 1.0",
    ),
    "two clippers": ("--config adding --model.gradient_clip_val 1".split(), "model.gradient_clip_val"),
    "negative max_steps": ("--config adding --trainer.max_steps -5".split(), "`max_steps` must be"),
    "checkpoint missing": ("--config adding --ckpt_path {tmp}/missing.ckpt".split(), "missing.ckpt' does not exist"),
    "checkpoint is a folder": ("--config adding --ckpt_path {tmp}".split(), "is a directory"),
    "checkpoint empty": ("--config adding --ckpt_path {tmp}/empty.txt".split(), "empty.txt' is an empty file"),
    "checkpoint garbage": ("--config adding --ckpt_path {tmp}/binary.bin".split(), "not a readable checkpoint"),
    # torch's refusal of a class it does not know puts a terminal escape (bold) into its message.
    "checkpoint of a foreign class": (
        "--config adding --ckpt_path {tmp}/foreign.ckpt".split(),
        "not a readable checkpoint (truncated, or another format): Weights only load failed. This file can still be "
        "loaded, to do so you have two options, do those steps",
    ),
    "root dir is a file": ("--config adding --trainer.default_root_dir {tmp}/empty.txt".split(), "is not a folder"),
    # torch refuses a NaN or negative learning rate only when training starts, an infinite one never.
    "learning rate nan": ("--config adding --model.optimizer.lr .nan".split(), LR_RULE + ", got nan"),
    "learning rate inf": ("--config adding --model.optimizer.lr .inf".split(), LR_RULE + ", got inf"),
    "learning rate < 0": ("--config adding --model.optimizer.lr -1".split(), LR_RULE + ", got -1.0"),
    "weight decay < 0": (
        "--config adding --model.optimizer.weight_decay -0.1".split(),
        "model.optimizer.weight_decay must be finite and >= 0, got -0.1",
    ),
    "momentum nan": (
        "--config adding --model.optimizer SGD --model.optimizer.momentum .nan".split(),
        "model.optimizer.momentum must be finite and >= 0, got nan",
    ),
    # Batches no machine holds: refused with the figure before the first one is drawn.
    "adding too long for memory": (
        "--config adding --data.seq_len 1000000000000".split(),
        "data.seq_len 1000000000000 with data.batch_size 64 needs at least",
    ),
    "copy too long for memory": ("--config copy --data.seq_len 1000000000000".split(), "data.seq_len 1000000000000"),
    "agreement too long for memory": (
        "--config agreement --data.max_len 1000000000000".split(),
        "data.max_len 1000000000000 with data.batch_size",
    ),
    "batch too large for memory": (
        "--config adding --data.batch_size 1000000000000".split(),
        "with data.batch_size 1000000000000 needs at least",
    ),
}
# What the bad-input cases read: made in the scratch folder, never counted as written by the command.
INPUT_FILES = {
    "empty.txt": b"",
    "binary.bin": bytes(range(256)) * 2000,
    "latin.txt": "café naïve\n".encode("latin-1") * 99,
    "foreign.ckpt": b"\x80\x02cplugins\nPayload\nq\x00.",  # a pickle of one global, plugins.Payload
}


def make_input_files(folder: Path) -> None:
    for name, content in INPUT_FILES.items():
        (folder / name).write_bytes(content)


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_naming_the_option(case, workdir, capsys):
    args, option = BAD_INPUT[case]
    make_input_files(workdir)
    logs = workdir / "lightning_logs"
    logs.mkdir()
    kept = logs / "notes.txt"
    kept.write_text("earlier results")
    with pytest.raises(SystemExit) as exit_info:
        # Shipped configs by name (--config copy): found inside the package from this scratch folder.
        main(fit_args(workdir, *[a.format(tmp=workdir) for a in args]))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("seqmem: error:") and option in lines[0], lines[0]
    assert len(lines[0]) < 600, "an error quotes user data only in part"
    assert lines[0].isprintable(), "no terminal escape or control character reaches the terminal"
    assert kept.read_text() == "earlier results"
    assert sorted(p.name for p in workdir.rglob("*") if p.name not in INPUT_FILES) == ["lightning_logs", "notes.txt"]


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


def refusal(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """The one line ``seqmem`` printed for ``args``, which it refused with exit status 2 and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("seqmem:")]
    return line


def run_folders(root: Path) -> list[Path]:
    return list(root.glob("**/version_*"))


def test_a_batch_too_large_for_this_machine_is_refused_with_the_figure(workdir, capsys, monkeypatch):
    monkeypatch.setattr("seqmem.lightning_cli.host_memory", lambda: 24 * 10**9)  # the same figure on any machine
    line = refusal(capsys, fit_args(workdir, "--config", "adding", "--data.seq_len", "100000000"))
    # adding.yaml: batch 64, LSTM hidden 128. x (B, T, 2) and y (B,) float32; one layer's outputs (B, T, 128).
    assert line == (
        "seqmem: error: data.seq_len 100000000 with data.batch_size 64 needs at least 3.3 TB a batch (51.2 GB of "
        "data, 3.3 TB of model activations); this machine has 24.0 GB of memory: lower data.seq_len or "
        "data.batch_size"
    )
    assert run_folders(workdir) == []


def test_an_allocation_that_fails_during_the_run_is_one_line(workdir, capsys, monkeypatch):
    # A batch beyond the estimate, as a task of one's own may make: torch's real allocator error.
    monkeypatch.setattr("seqmem.tasks.AddingData.make_batch", lambda self, generator: {"x": torch.empty(2**60)})
    line = refusal(capsys, fit_args(workdir, *TINY_ADDING))
    assert line == (
        "seqmem: error: out of memory: could not allocate 4611.7 PB in host memory; lower data.batch_size, the "
        "sequence length or model.hidden_size"
    )


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_an_lm_corpus_too_short_for_seq_len_is_refused_before_anything_is_written(
    subcommand, workdir, lm_cache, capsys
):
    corpus = workdir / "short.txt"
    corpus.write_text("abcdefghij\n" * 30)  # 330 characters: 297 train, 33 validation
    lm = ["--config", "lm", *TINY, "--data.path", str(corpus), "--data.cache_dir", str(lm_cache)]
    args = [subcommand, "--trainer.default_root_dir", str(workdir), *QUIET, *lm, "--data.batch_size", "4"]
    line = refusal(capsys, [*args, "--data.seq_len", "50"])
    assert line == (
        "seqmem: error: data.seq_len (50) is too long: the validation split has 33 tokens, too few for 4 streams "
        "longer than a window; lower data.seq_len or data.batch_size"
    )
    assert run_folders(workdir) == []


def documented_args(cls: type) -> dict[str, str]:
    """Google-style ``Args:`` entries of a class docstring: name -> its text on one line."""
    section = inspect.getdoc(cls).split("Args:")[1]
    section = re.split(r"^\w[\w ]*:$", section, flags=re.M)[0]  # up to the next section (Raises:, Example:)
    entries = re.findall(r"^    (\w+): (.*?)(?=^    \w+: |\Z)", section, re.M | re.S)
    return {name: " ".join(text.split()) for name, text in entries}


def test_the_cli_builds_the_named_subcommands_parser_alone_and_every_one_when_none_is_named(capsys, tmp_path):
    """Building a subcommand's parser costs about a 100-step fit of a small model, once per sweep trial: a run
    builds the one it names; ``seqmem --help`` still lists all four, and a validate after a fit still runs."""
    args = fit_args(tmp_path, "--config", "adding", "--model.cell", "gru", "--trainer.max_steps", "2")
    cli = run_cli(args)
    assert set(cli.subcommands()) == {"fit"}
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "{fit,validate,test,predict}" in capsys.readouterr().out
    ckpt = next(Path(cli.trainer.log_dir).rglob("last.ckpt"))
    validate = run_cli(["validate", *args[1:], "--ckpt_path", str(ckpt)])
    assert set(validate.subcommands()) == {"validate"} and "val/loss" in validate.trainer.callback_metrics


def test_fit_help_shows_every_model_argument_with_its_doc(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    docs = documented_args(SequenceModel)
    parameters = set(inspect.signature(SequenceModel.__init__).parameters) - {"self"}
    assert set(docs) == parameters  # every constructor argument is documented
    # task is linked from --data, so it is not a user option and has no help entry of its own; options stands for
    # the cells' own, each an option with the help the cell's docstring gives it.
    for name in parameters - {"task", "options"}:
        assert f"--model.{name}" in help_text
        # argparse re-wraps help lines; compare the first words, whitespace-normalised.
        assert " ".join(docs[name].split()[:6]) in help_text, name
    for name, option in registered_options().items():
        metavar = "{true,false,null}" if option.type is bool else name.upper()  # argparse lists a bool's choices
        assert f"--model.{name} {metavar} {' '.join(option.help.split()[:8])}" in help_text, name


@pytest.mark.parametrize("name", ["agreement", "agreement.yaml"])
def test_shipped_config_by_name_from_any_directory(name, workdir):
    cli = run_cli(["--config", name], run=False)
    assert type(cli.datamodule).__name__ == "AgreementData"
    assert (cli.datamodule.hparams.max_len, cli.datamodule.hparams.distance) == (50, 30)


def test_a_file_in_the_working_directory_comes_before_a_shipped_config(workdir):
    (workdir / "copy.yaml").write_text("data:\n  class_path: seqmem.tasks.AddingData\n")
    assert type(run_cli(["--config", "copy.yaml"], run=False).datamodule).__name__ == "AddingData"
    assert type(run_cli(["--config", "copy"], run=False).datamodule).__name__ == "CopyData"  # no file "copy"


def test_fit_help_names_the_shipped_configs_and_only_concrete_tasks(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the name of one shipped with seqmem: adding, agreement, copy, lm" in help_text
    subclasses = help_text.split("subclass of TaskDataModule")[-1].split("known subclasses:")[1].split(")")[0]
    assert sorted(name.strip().split(".")[-1] for name in subclasses.split(",")) == [
        "AddingData",
        "AgreementData",
        "CopyData",
        "LMData",
    ]


TINY_ADDING = ["--config", "adding", *TINY, *TASK_ARGS["adding"], "--trainer.max_steps", "2"]


def test_enable_checkpointing_false_is_honoured(workdir):
    cli = run_cli(fit_args(workdir, *TINY_ADDING, "--trainer.enable_checkpointing", "false"))
    assert cli.trainer.global_step == 2 and cli.trainer.checkpoint_callbacks == []
    assert not list(workdir.rglob("*.ckpt"))


def test_fast_dev_run_writes_nothing(workdir):
    # No run folder under fast_dev_run (Lightning drops the logger): nothing at all may be written.
    cli = run_cli(["fit", *QUIET, *TINY_ADDING, "--trainer.fast_dev_run", "true"])
    assert cli.trainer.global_step == 1
    assert list(workdir.rglob("*")) == []


def can_write(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def test_unwritable_root_dir_is_one_line(workdir, capsys):
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    # Root ignores permission bits: then take a file system that refuses everyone.
    refusing = [folder for folder in (locked, Path("/sys")) if folder.is_dir() and not can_write(folder)]
    if not refusing:
        pytest.skip("no folder that this user cannot write")
    target = refusing[0] / "runs"
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(fit_args(target, *TINY_ADDING))
    finally:
        locked.chmod(0o755)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("seqmem: error: trainer.default_root_dir") and "is not writable" in line
    assert not target.exists()


# ---- checkpoints load only into their own task and model ---------------------------------------

COPY_TINY = ["--config", "copy", *TINY, *TASK_ARGS["copy"], "--trainer.max_steps", "2"]


@pytest.fixture(scope="module")
def copy_checkpoint(tmp_path_factory) -> Path:
    """last.ckpt of a 2-step copy run (LSTM, hidden 8, T = 3): what the checkpoint tests load."""
    root = tmp_path_factory.mktemp("copy_run")
    run_cli(fit_args(root, *COPY_TINY, "--model.cell", "lstm"))
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


MISMATCH = {
    "another cell": (["--model.cell", "gru"], "trained with model.cell 'lstm', this command gives 'gru'"),
    "another size": (["--model.hidden_size", "16"], "trained with model.hidden_size 8, this command gives 16"),
    "another task": (["--config", "adding", *TINY], "trained on the copy task, this command's data is the adding task"),
    "another sequence length": (["--data.seq_len", "5"], "(data options that differ: data.seq_len 3 there, 5 here)"),
}


@pytest.mark.parametrize("case", sorted(MISMATCH))
@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_a_checkpoint_loads_only_into_its_own_task_and_model(case, subcommand, copy_checkpoint, workdir, capsys):
    args, reason = MISMATCH[case]
    command = [subcommand, "--trainer.default_root_dir", str(workdir), *QUIET, *COPY_TINY, "--model.cell", "lstm"]
    with pytest.raises(SystemExit) as exit_info:
        main([*command, *args, "--ckpt_path", str(copy_checkpoint)])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"seqmem: error: ckpt_path '{copy_checkpoint}' ") and reason in line, line
    assert list(workdir.rglob("*")) == [], "refused before anything is written"


def with_weights(checkpoint: Path, target: Path, weights: str) -> Path:
    """A copy of ``checkpoint`` at ``target`` whose settings (LSTM) stay and whose weights are a GRU's ("gru") or
    none ("none"): what a damaged or hand-made file holds."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hp = saved["hyper_parameters"]
    gru = SequenceModel(hp["task"], cell="gru", hidden_size=hp["hidden_size"], embedding_size=hp["embedding_size"])
    saved["state_dict"] = gru.state_dict() if weights == "gru" else {}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, target)
    return target


BAD_WEIGHTS = {
    # nn.GRU's weights have nn.LSTM's names, 3 gates in place of 4.
    "gru": "4 of another shape (net.rnn.weight_ih_l0 is (24, 4), the settings make (32, 4))",
    "none": "all 7 weights missing (embed.weight, net.rnn.weight_ih_l0, ...)",
}


@pytest.mark.parametrize("weights", sorted(BAD_WEIGHTS))
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_a_checkpoint_whose_weights_do_not_fit_its_settings_is_refused_before_anything_is_written(
    weights, subcommand, copy_checkpoint, workdir, tmp_path_factory, capsys
):
    bad = with_weights(copy_checkpoint, tmp_path_factory.mktemp("bad") / "bad.ckpt", weights)
    command = [subcommand, "--trainer.default_root_dir", str(workdir), *QUIET, *COPY_TINY, "--model.cell", "lstm"]
    line = refusal(capsys, [*command, "--ckpt_path", str(bad)])
    assert line.startswith(
        f"seqmem: error: ckpt_path '{bad}' holds weights that do not fit the model its settings describe (model.cell "
        "'lstm'): "
    )
    assert BAD_WEIGHTS[weights] in line, line
    assert list(workdir.rglob("*")) == [], "refused before anything is written"


def test_ckpt_path_last_passes_over_a_checkpoint_whose_weights_do_not_fit(copy_checkpoint, workdir, capsys):
    run_cli(fit_args(workdir, *COPY_TINY, "--model.cell", "lstm"))
    good = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    with_weights(good, workdir / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt", "gru")  # newer
    capsys.readouterr()
    resumed = run_cli(
        fit_args(workdir, *COPY_TINY, "--model.cell", "lstm", "--trainer.max_steps", "3", "--ckpt_path", "last")
    )
    assert resumed.trainer.ckpt_path == str(good) and resumed.trainer.global_step == 3
    assert "(1 newer of another task or model, or unreadable, passed over)" in capsys.readouterr().err
    (workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").unlink()
    (workdir / "lightning_logs" / "version_2" / "checkpoints" / "last.ckpt").unlink()  # the resumed run's
    before = run_folders(workdir)
    command = ["validate", "--trainer.default_root_dir", str(workdir), *QUIET, *COPY_TINY, "--model.cell", "lstm"]
    line = refusal(capsys, [*command, "--ckpt_path", "last"])
    assert line.startswith("seqmem: error: ckpt_path last: no checkpoint under") and "1 newer" in line, line
    assert run_folders(workdir) == before


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_an_adding_checkpoint_resumes_and_evaluates_at_another_sequence_length(subcommand, workdir):
    """No weight depends on adding's length, and its TaskSpec does not hold it: a model trained at T = 6 resumes,
    or is evaluated, at T = 9 (copy's does hold it, in its chance baseline: MISMATCH above)."""
    run_cli(fit_args(workdir, *TINY_ADDING))  # data.seq_len 6
    ckpt = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    longer = [*TINY_ADDING, "--data.seq_len", "9", "--trainer.max_steps", "3", "--ckpt_path", str(ckpt)]
    cli = run_cli([subcommand, *fit_args(workdir, *longer)[1:]])
    assert cli.datamodule.hparams.seq_len == 9 and cli.trainer.ckpt_path == str(ckpt)
    assert cli.trainer.global_step == 3 if subcommand == "fit" else "val/loss" in cli.trainer.callback_metrics


def test_a_checkpoint_resumes_with_other_trainer_and_batch_options(copy_checkpoint, workdir):
    extra = ["--data.batch_size", "2", "--trainer.max_steps", "4", "--ckpt_path", str(copy_checkpoint)]
    cli = run_cli(fit_args(workdir, *COPY_TINY, "--model.cell", "lstm", *extra))
    assert cli.trainer.ckpt_path == str(copy_checkpoint) and cli.trainer.global_step == 4


def test_ckpt_path_last_takes_the_newest_run_of_the_same_task_and_model(workdir, capsys):
    run_cli(fit_args(workdir, *COPY_TINY, "--model.cell", "vanilla"))
    run_cli(fit_args(workdir, *COPY_TINY, "--model.cell", "irnn"))  # newer, another model
    vanilla = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    resumed = run_cli(
        fit_args(workdir, *COPY_TINY, "--model.cell", "vanilla", "--trainer.max_steps", "3", "--ckpt_path", "last")
    )
    assert resumed.trainer.ckpt_path == str(vanilla) and resumed.trainer.global_step == 3
    notice = (
        f"seqmem: --ckpt_path last: loading {vanilla} (1 newer of another task or model, or unreadable, passed over)"
    )
    assert notice in capsys.readouterr().err.splitlines()
    fresh = run_cli(fit_args(workdir, *COPY_TINY, "--model.cell", "gru", "--ckpt_path", "last"))
    assert fresh.trainer.ckpt_path is None and fresh.trainer.global_step == 2
    assert "matches this task and model (3 newer of another task or model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "validate",
                "--trainer.default_root_dir",
                str(workdir),
                *QUIET,
                *COPY_TINY,
                "--model.cell",
                "orthogonal",
                "--ckpt_path",
                "last",
            ]
        )
    assert exit_info.value.code == 2
    assert "seqmem: error: ckpt_path last: no checkpoint under" in capsys.readouterr().err


def test_predict_writes_the_test_split_predictions_to_the_run_folder(copy_checkpoint, workdir):
    command = ["predict", "--trainer.default_root_dir", str(workdir), *QUIET, *COPY_TINY, "--model.cell", "lstm"]
    cli = run_cli([*command, "--ckpt_path", str(copy_checkpoint)])
    written = torch.load(workdir / "lightning_logs" / "version_0" / "predictions.pt")
    (batch,) = list(cli.datamodule.test_dataloader())  # data.val_batches 1: one test batch
    assert written["task"] == "copy"
    assert torch.equal(written["x"], batch["x"]) and torch.equal(written["y"], batch["y"])
    model = SequenceModel.load_from_checkpoint(copy_checkpoint).eval()
    with torch.no_grad():
        assert torch.equal(written["pred"], model(batch["x"])[0].argmax(dim=-1))  # (B, T) class ids


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
    return found


def test_imports_run_one_way_from_the_command_to_the_sweep_and_the_lightning_cli():
    # seqmem.cli imports the sweep and the LightningCLI; nothing in the package imports seqmem.cli back.
    package = REPO_ROOT / "seqmem"
    for path in package.rglob("*.py"):
        if path.name != "cli.py" or path.parent != package:
            assert not {"seqmem.cli", "seqmem.cli.main"} & imported_modules(path), path
    cli = imported_modules(package / "cli.py")
    assert "seqmem.lightning_cli" in cli and "seqmem.sweep" in cli
    assert not any(m.startswith("seqmem.sweep") for m in imported_modules(package / "lightning_cli.py"))
