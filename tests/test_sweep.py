"""`seqmem sweep`: the config format, aggregation over seeds, and tiny sweeps end to end on a local Ray."""

import csv
import json
import math
from pathlib import Path
from typing import Optional

import pytest
import ray
import yaml
from conftest import CONFIGS, fill
from ray.tune.experiment.trial import Trial

from seqmem.cli import main, run_cli
from seqmem.configs import SWEEP_CONFIGS
from seqmem.errors import ConfigError
from seqmem.sweep import Spread, TrialRow, load_sweep, run_sweep, summarise
from seqmem.sweep.config import Record, parse_overrides, with_overrides
from seqmem.sweep.curves import seed_band
from seqmem.sweep.run import start_ray
from seqmem.sweep.summary import write_summary
from seqmem.sweep.trial import TrialError, claim, fit_args, read_records, run_trial, train

# Adding, T = 10, hidden 8: a trial is a second of training; the run folders' names are the grid's.
TINY = {
    "base": "adding.yaml",
    "budget": 4,
    "set": {
        "model.hidden_size": 8,
        "data.seq_len": 10,
        "data.batch_size": 8,
        "data.train_batches": 4,
        "data.val_batches": 1,
        "trainer.val_check_interval": 2,
        "trainer.log_every_n_steps": 1,
    },
    "grid": {
        # "short" cannot build: adding needs T >= 2. Its error must not stop the other trials.
        "model": {"gru": {"model.cell": "gru"}, "short": {"data.seq_len": 1}},
        "seed_everything": [0, 1],
    },
    "record": {"horizon_init": "grad_time/layer0/horizon"},
    "curves": {"train/loss": "log"},
}
NAMES = [f"model={m},seed={s}" for m in ("gru", "short") for s in (0, 1)]


def write_config(folder: Path, **changes) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))  # axis order matters
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


# ---- the config format (no Ray) -----------------------------------------------------------------


def test_grid_expands_to_named_trials_with_options_in_order(tmp_path):
    sweep = load_sweep(
        str(
            write_config(
                tmp_path,
                grid={
                    "model": {"gru": {"model.cell": "gru"}, "lstm3": {"model.cell": "lstm", "model.forget_bias": 3}},
                    "data.seq_len": [10, 20, 30],
                    "seed_everything": [0, 1],
                },
            )
        )
    )
    points = sweep.points()
    assert len(points) == 2 * 3 * 2
    assert sweep.trial_name(points[0]) == "model=gru,data.seq_len=10,seed=0"
    assert sweep.trial_name(points[-1]) == "model=lstm3,data.seq_len=30,seed=1"
    options = sweep.trial_options(points[-1])
    # set first, then the axes: the grid's data.seq_len overrides the set one (10).
    assert options["data.seq_len"] == 30 and options["model.forget_bias"] == 3 and options["seed_everything"] == 1
    assert sweep.base == CONFIGS / "adding.yaml"
    assert sweep.seed_axis.key == "seed_everything"
    assert [a.name for a in sweep.config_axes] == ["model", "data.seq_len"]
    assert [a.numeric for a in sweep.config_axes] == [False, True]


def test_a_seed_axis_sets_the_weights_seed_and_the_data_seed(tmp_path):
    sweep = load_sweep(str(write_config(tmp_path, grid={"data.seq_len": [10, 20], "seed": [3, 4]})))
    assert sweep.seed_axis.key == "seed"
    assert [a.name for a in sweep.config_axes] == ["data.seq_len"]
    options = [sweep.trial_options(point) for point in sweep.points()]
    assert [(o["seed_everything"], o["data.seed"]) for o in options] == [(3, 3), (4, 4), (3, 3), (4, 4)]
    assert sweep.trial_name(sweep.points()[1]) == "data.seq_len=10,seed=4"


def test_shipped_sweep_parses():
    sweep = load_sweep("agreement.yaml")
    assert sweep.base == CONFIGS / "agreement.yaml"
    assert (sweep.budget, sweep.stop_when_solved, sweep.solved) == (6000, True, None)  # the task's criterion
    assert len(sweep.points()) == 18
    cells = {sweep.trial_options(p)["model.cell"] for p in sweep.points()}
    assert cells == {"vanilla", "orthogonal", "irnn", "gru", "lstm"}


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_every_value_of_every_shipped_sweep_is_a_valid_fit_option(name, tmp_path, hub_cache):
    # Each label of each axis at least once (the seed axis changes nothing the CLI checks): a wrong option
    # or a value a cell does not take (model.activation on the LSTM) must fail here, not hours into a sweep.
    sweep = load_sweep(name)
    # lm's corpus comes from the Hub: here from a cached copy, offline (a shipped sweep names no local file).
    cache = ["--data.cache_dir", str(hub_cache)] if sweep.base.stem == "lm" else []
    labels = [list(axis.points) for axis in sweep.axes]
    for i in range(max(map(len, labels))):
        point = {axis.key: values[i % len(values)] for axis, values in zip(sweep.axes, labels, strict=True)}
        args = fit_args(sweep, point, tmp_path, gpus=0, resume=None)[1:]  # [1:]: no "fit"
        cli = run_cli([*args, *cache], run=False)
        assert cli.trainer.max_steps == sweep.budget
        for key, value in sweep.trial_options(point).items():
            group, option = key.split(".", 1) if "." in key else ("", key)
            if key == "model.optimizer":  # not an hparam: the module keeps the optimizer the CLI built
                optimizer = cli.model.optimizer(cli.model.parameters())
                assert type(optimizer).__name__ == value["class_path"].rsplit(".", 1)[1], (name, key)
                assert all(optimizer.defaults[k] == v for k, v in value["init_args"].items()), (name, key)
            elif group in ("model", "data") and "." not in option:  # the options the modules keep as hparams
                hparams = cli.model.hparams if group == "model" else cli.datamodule.hparams
                assert hparams[option] == value, (name, key)


@pytest.mark.parametrize("name", ["charlm-quick", "charlm", "copy-quick", "copy", "copy-long"])
def test_the_models_a_study_compares_at_equal_size_have_parameter_counts_within_four_percent(name, tmp_path):
    # The study compares at equal parameter count (its header says so), built as its trials build them. The LM
    # sizes are chosen for Tiny Shakespeare's 65 characters: a corpus of as many stands in for it. Hidden sizes are
    # whole numbers, so counts match to within 3.3 % (charlm-quick's GRU against its LSTM), the rest to 1 %.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(chr(33 + i) for i in range(65)) * 2000)
    sweep = load_sweep(name)
    text = ["--data.path", str(corpus)] if sweep.base.stem == "lm" else []
    (models,) = [axis for axis in sweep.axes if axis.key == "model"]
    counts = {}
    for label in models.points:
        point = {axis.key: label if axis is models else next(iter(axis.points)) for axis in sweep.axes}
        cli = run_cli([*fit_args(sweep, point, tmp_path, gpus=0, resume=None)[1:], *text], run=False)
        assert not text or cli.model.task.input_size == 65
        counts[label] = sum(p.numel() for p in cli.model.parameters())
    assert max(counts.values()) <= 1.04 * min(counts.values()), counts


def test_a_record_reads_the_first_the_last_or_the_value_at_a_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path) as writer:
        for step in (0, 500, 1000, 1500, 2000):
            writer.add_scalar("val/bpc", 3.0 - step / 1000, step)
    records = (
        Record("first", "val/bpc"),
        Record("last", "val/bpc", "last"),
        Record("at_1600", "val/bpc", 1600),  # the value logged last at or before step 1600
        Record("at_1500", "val/bpc", 1500),
        Record("before_any", "val/bpc", -1),
        Record("never", "val/loss", "last"),
    )
    values = read_records(tmp_path, records)
    assert values == {"first": 3.0, "last": 1.0, "at_1600": 1.5, "at_1500": 1.5, "before_any": None, "never": None}
    assert load_sweep(str(write_config(tmp_path, record={"b": {"tag": "val/bpc", "at": 1600}}))).record[0].at == 1600


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budgett": 5}, "unknown key 'budgett'; allowed: base, budget"),
        ({"budget": 0}, "budget must be a whole number of steps >= 1, got 0"),
        ({"base": "nope.yaml"}, "base 'nope.yaml' is neither a shipped config (adding, agreement"),
        ({"set": {"trainer.max_steps": 9}}, "set: trainer.max_steps is set by the sweep (set budget instead)"),
        ({"grid": {"data.seq_len": []}}, "grid.data.seq_len is empty"),
        ({"grid": {"model": {"gru": "gru"}}}, "grid.model.gru must be a mapping of options"),
        ({"solved": {"metric": "val/loss", "threshold": 0.1}}, "solved must be {metric: ..., threshold: ..., mode"),
        ({"solved": {"metric": "val/loss", "threshold": 0.1, "mode": "low"}}, "solved.mode must be max or min"),
        ({"record": {"h": {"tag": "x", "at": "middle"}}}, "record.h.at must be first, last or a step number"),
    ],
)
def test_bad_sweep_config_is_one_line_naming_the_key(tmp_path, capsys, change, message):
    path = write_config(tmp_path, **change)
    with pytest.raises(ConfigError) as error:
        load_sweep(str(path))
    assert message in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqmem: error: sweep config: ") and message in err[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_bad_sweep_option_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(write_config(tmp_path)), "--gpus-per-trial", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("seqmem: error: sweep: --gpus-per-trial must be in [0, 1]")


def test_a_run_folder_of_other_options_is_never_reused(tmp_path):
    first = load_sweep(str(write_config(tmp_path)))
    point = first.points()[0]
    run_dir = tmp_path / "out" / first.trial_name(point)
    run_dir.mkdir(parents=True)
    (run_dir / "trial.json").write_text(json.dumps(first.definition(point)))
    other = load_sweep(str(write_config(tmp_path, budget=8)))
    with pytest.raises(TrialError, match=r"holds a run with another budget: delete that folder"):
        run_trial(point, other, str(tmp_path / "out"), str(tmp_path), threads=1, gpus=0)


def test_a_trial_is_known_by_its_base_configs_name_and_text_not_by_where_the_file_lies(tmp_path):
    base = (CONFIGS / "adding.yaml").read_text()
    here, there = tmp_path / "here", tmp_path / "there"
    for folder in (here, there):
        folder.mkdir()
        (folder / "mine.yaml").write_text(base)
    sweep = load_sweep(str(write_config(here, base="mine.yaml")))
    moved = load_sweep(str(write_config(there, base="mine.yaml")))  # the checkout moved: the same trials
    point = sweep.points()[0]
    assert sweep.base != moved.base and sweep.definition(point) == moved.definition(point)
    (there / "mine.yaml").write_text(base.replace("max_steps: 2000", "max_steps: 2001"))
    edited = load_sweep(str(write_config(there, base="mine.yaml")))  # an edited base: trained afresh
    assert edited.definition(point)["base_sha256"] != sweep.definition(point)["base_sha256"]


# ---- aggregation over seeds (no Ray) ------------------------------------------------------------


def row(
    model: str,
    seed: int,
    status: str,
    steps: Optional[int] = None,
    final: Optional[float] = None,
    h: Optional[float] = None,
) -> TrialRow:
    """A hand-made trial row: model and seed axes, ``h`` a recorded value."""
    return TrialRow(
        f"model={model},seed={seed}",
        {"model": model, "seed": seed},
        status,
        steps_to_solve=steps,
        steps=steps or 100,
        metric="val/acc",
        final=final,
        seconds=1.0,
        record={"h": h},
    )


def test_seeds_aggregate_median_range_and_solved_count():
    rows = [
        row("a", 0, "solved", 300, 0.99, h=4),
        row("a", 1, "solved", 100, 1.0, h=6),
        row("a", 2, "not solved", None, 0.5, h=8),
        row("b", 0, "not solved", None, 0.6),
        row("b", 1, "not solved", None, 0.7),
        row("c", 0, "solved", 200, 1.0),
        row("c", 1, "solved", 400, 0.995),
        row("d", 0, "error"),
        row("d", 1, "solved", 50, 1.0),
        row("d", 2, "unfinished"),
    ]
    a, b, c, d = summarise(rows, ["model"], ["h"])
    assert (a.values, a.runs, a.solved) == ({"model": "a"}, 3, 2)
    # Sorted with the unsolved seed as infinitely many steps: 100, 300, inf -> median 300, max "not solved".
    assert a.steps == Spread(300, 100, math.inf)
    assert a.final == Spread(0.99, 0.5, 1.0)
    assert a.record == {"h": 6}
    assert (b.solved, b.runs) == (0, 2) and math.isinf(b.steps.median) and math.isinf(b.steps.low)
    assert b.record == {"h": None}
    assert c.steps == Spread(300, 200, 400)  # even count: the mean of the middle two
    # Errors and unfinished trials are counted apart, never as unsolved seeds.
    assert (d.runs, d.solved, d.errors, d.unfinished) == (1, 1, 1, 1)
    assert d.steps == Spread(50, 50, 50)


def test_curves_band_is_the_median_and_range_of_the_seeds_that_logged_each_step():
    # Seed b stopped after step 2 (solved early): from step 4 on the band is seed a alone.
    steps, median, low, high = seed_band([[(0, 1.0), (2, 0.5), (4, 0.2)], [(0, 3.0), (2, 0.1)], [(0, 2.0)]])
    assert steps == [0, 2, 4]
    assert median == [2.0, 0.3, 0.2] and low == [1.0, 0.1, 0.2] and high == [3.0, 0.5, 0.2]


def test_every_configuration_keeps_its_colour_in_every_panel_even_where_another_has_no_curve(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    from seqmem.sweep.curves import plot_curves

    sweep = load_sweep(str(write_config(tmp_path, grid={"clip": {"on": {}, "off": {}}}, curves=["a", "b"])))
    rows = [TrialRow(f"clip={label}", {"clip": label}, "not solved") for label in ("off", "on")]
    for row in rows:
        with SummaryWriter(tmp_path / row.name) as writer:
            for step in range(3):
                writer.add_scalar("a", 1.0 + step, step)
                if row.values["clip"] == "on":  # only the clipping arm logs b (as clip/ tags)
                    writer.add_scalar("b", 2.0, step)
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figure to read its lines
    plot_curves(tmp_path / "curves.png", tmp_path, rows, sweep)
    panel_a, panel_b = kept[0].axes
    colours = [{line.get_label().split(" ")[0]: line.get_color() for line in ax.lines} for ax in (panel_a, panel_b)]
    assert set(colours[0]) == {"clip=off", "clip=on"} and set(colours[1]) == {"clip=on"}
    assert colours[1]["clip=on"] == colours[0]["clip=on"] != colours[0]["clip=off"]


def test_curves_take_a_scale_per_tag_or_a_list(tmp_path):
    assert load_sweep(str(write_config(tmp_path, curves=["val/acc"]))).curves == (("val/acc", "linear"),)
    with pytest.raises(ConfigError, match="curves.val/acc must be linear or log"):
        load_sweep(str(write_config(tmp_path, curves={"val/acc": "loglog"})))


def test_a_run_the_guard_stops_is_reported_as_diverged_not_as_an_error(workdir):
    # W_h at spectral radius 20, SGD at lr 1e3, no clipping: the updates go non-finite within a few steps.
    args = ["fit", "--config", "adding", "--trainer.default_root_dir", str(workdir)]
    args += (
        "--model.cell vanilla --model.hidden_size 8 --model.spectral_radius 20 --model.optimizer SGD "
        "--model.optimizer.lr 1000 --trainer.gradient_clip_val null --data.seq_len 30 --data.batch_size 8 "
        "--trainer.max_steps 60 --trainer.enable_progress_bar false --trainer.enable_model_summary false"
    ).split()
    result = train(args, threads=1)
    assert result["status"] == "diverged" and 10 <= result["steps"] < 60
    diverged = TrialRow("model=vanilla,seed=0", {"model": "vanilla", "seed": 0}, "diverged", steps=result["steps"])
    (summary,) = summarise([diverged, row("vanilla", 1, "solved", 100)], ["model"], [])
    assert (summary.runs, summary.solved, summary.diverged, summary.errors) == (2, 1, 1, 0)
    assert math.isinf(summary.steps.high) and summary.steps.low == 100  # diverged counts as not solved
    assert diverged.outcome(60) == f"diverged: stopped by the non-finite guard at step {result['steps']}"


def test_half_unsolved_has_an_unsolved_median():
    (summary,) = summarise([row("a", 0, "solved", 100), row("a", 1, "not solved")], ["model"], [])
    assert math.isinf(summary.steps.median) and summary.steps.low == 100


def test_summary_says_not_solved_within_budget(tmp_path):
    sweep = load_sweep(str(write_config(tmp_path, budget=6000, record={})))
    rows = [
        row("gru", 0, "solved", 250, 1.0),
        row("gru", 1, "not solved", None, 0.6),
        row("lstm", 0, "not solved", None, 0.5),
        row("lstm", 1, "not solved", None, 0.5),
    ]
    table = write_summary(tmp_path, summarise(rows, ["model"], []), sweep, "val/acc")
    gru, lstm = table.splitlines()[2:]
    assert "| gru | 1/2 | not solved within 6000 | 250 – not solved |" in gru
    assert "| lstm | 0/2 | not solved within 6000 | not solved |" in lstm
    assert "fail" not in table
    assert rows[1].outcome(6000).startswith("not solved within 6000 steps")
    summary = read_csv(tmp_path / "summary.csv")
    assert (summary[0]["solved"], summary[0]["steps_min"], summary[0]["steps_max"]) == ("1", "250", "")


# ---- end to end on a local Ray ------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs): each sweep then skips Ray's start-up."""
    start_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_sweep(local_ray, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The TINY sweep through the real `seqmem sweep` command; its folder and the run folders' mtimes."""
    folder = tmp_path_factory.mktemp("sweep")
    out = folder / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(write_config(folder)), "--out", str(out)])
    assert exit_info.value.code == 1  # some trials ended with an error
    mtimes = {p: p.stat().st_mtime_ns for p in run_files(out)}
    return folder, out, mtimes


def run_files(out: Path) -> list[Path]:
    """Every file in the run folders of the trials that finished (gru)."""
    return [p for run in out.glob("model=gru,*") for p in run.rglob("*") if p.is_file()]


def test_sweep_runs_every_trial_and_reports_errors_in_the_table(tiny_sweep):
    _, out, _ = tiny_sweep
    trials = read_csv(out / "trials.csv")
    assert [t["name"] for t in trials] == NAMES
    by_name = {t["name"]: t for t in trials}
    for name in NAMES[:2]:
        # adding's own criterion (val/loss <= 1/600) is far beyond 4 steps: not solved, trained to the budget.
        t = by_name[name]
        assert (t["status"], t["steps_to_solve"], t["steps"], t["metric"]) == ("not solved", "", "4", "val/loss")
        assert float(t["final"]) > 0 and t["horizon_init"] != ""
        assert list((out / name).glob("events.out.tfevents.*")) and (out / name / "result.json").is_file()
    for name in NAMES[2:]:
        assert by_name[name]["status"] == "error"
        assert by_name[name]["error"] == "data.seq_len must be >= 2 (one marker per half), got 1"
    summary = {r["model"]: r for r in read_csv(out / "summary.csv")}
    assert (summary["gru"]["solved"], summary["gru"]["runs"], summary["short"]["errors"]) == ("0", "2", "2")
    assert "| gru | 0/2 | not solved within 4 |" in (out / "summary.md").read_text()
    assert (out / "summary.png").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0
    assert (out / "ray").is_dir() and not list((out / "ray").rglob("events.out.tfevents.*"))  # no Ray TB runs


def test_seeds_of_a_trial_differ_and_the_run_records_its_seed(tiny_sweep):
    _, out, _ = tiny_sweep
    trials = {t["name"]: t for t in read_csv(out / "trials.csv")}
    assert trials["model=gru,seed=0"]["final"] != trials["model=gru,seed=1"]["final"]
    assert yaml.safe_load((out / "model=gru,seed=1" / "config.yaml").read_text())["seed_everything"] == 1


def test_running_again_skips_finished_trials(tiny_sweep, capsys):
    folder, out, mtimes = tiny_sweep
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["sweep", str(folder / "sweep.yaml"), "--out", str(out)])
    printed = capsys.readouterr().out
    for name in NAMES[:2]:
        assert f"{name}: not solved within 4 steps" in printed and "done earlier" in printed
    # Nothing was trained again: every file of the finished runs is untouched, and no new event file.
    assert set(run_files(out)) == set(mtimes)
    for path, mtime in mtimes.items():
        assert path.stat().st_mtime_ns == mtime, path
    # The errored trials were tried again (and end the same way).
    assert [t["status"] for t in read_csv(out / "trials.csv")] == ["not solved"] * 2 + ["error"] * 2


def test_solved_trials_stop_at_their_step(local_ray, tmp_path):
    # Met at the first validation (step 2): stopped there, 2 of the 4-step budget.
    path = write_config(
        tmp_path,
        grid={"seed_everything": [0, 1]},
        stop_when_solved=True,
        solved={"metric": "val/loss", "threshold": 1e9, "mode": "min"},
    )
    rows = run_sweep(load_sweep(str(path)), tmp_path / "out")
    assert [(r.name, r.status, r.steps_to_solve, r.steps) for r in rows] == [
        ("seed=0", "solved", 2, 2),
        ("seed=1", "solved", 2, 2),
    ]
    summary = read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 1 and (summary[0]["solved"], summary[0]["steps_median"]) == ("2", "2")


def test_a_trial_larger_than_the_cluster_is_refused_before_anything_is_written(local_ray, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(write_config(tmp_path)), "--out", str(tmp_path / "out"), "--threads", "3"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "seqmem: error: --threads 3: the Ray cluster has 2 CPUs, fewer than one trial asks for"
    )
    assert not (tmp_path / "out").exists()


# ---- options from the command line: --set -----------------------------------------------------------------------


def test_set_options_are_yaml_values_over_the_configs_set_and_part_of_each_trials_definition(tmp_path):
    sweep = load_sweep(str(write_config(tmp_path)))
    overrides = parse_overrides(["data.path=input.txt", "model.hidden_size=16", "data.cache_dir=null", "x.y=[1, 2]"])
    assert overrides == {"data.path": "input.txt", "model.hidden_size": 16, "data.cache_dir": None, "x.y": [1, 2]}
    changed = with_overrides(sweep, {"model.hidden_size": 16})
    point = sweep.points()[0]
    sizes = [s.trial_options(point)["model.hidden_size"] for s in (changed, sweep)]
    assert sizes == [16, 8]  # --set over the config's set (8)
    assert changed.definition(point) != sweep.definition(point)
    assert ["--model.hidden_size", "16"] == fit_args(changed, point, tmp_path, 0, None)[3:5]  # after --config base
    # A run folder made with other --set options is not reused.
    run_dir = tmp_path / "out" / sweep.trial_name(point)
    run_dir.mkdir(parents=True)
    (run_dir / "trial.json").write_text(json.dumps(sweep.definition(point)))
    with pytest.raises(TrialError, match=r"holds a run with another options: delete that folder"):
        run_trial(point, changed, str(tmp_path / "out"), str(tmp_path), threads=1, gpus=0)


@pytest.mark.parametrize(
    "item, message",
    [
        ("data.path", "sweep --set takes key=value (e.g. --set data.path=input.txt), got 'data.path'"),
        ("trainer.max_steps=5", "sweep --set: trainer.max_steps is set by the sweep (set budget instead)"),
        ("--model.cell=gru", "sweep --set: option '--model.cell' must be a dotted option name"),
        ("model.hidden_size=[1", "sweep --set model.hidden_size: '[1' is not a YAML value"),
        ("seed_everything=3", "sweep --set seed_everything: set by the grid axis seed_everything (edit the grid"),
        ("data.pth=input.txt", "sweep: the options of every trial (set and --set: model.hidden_size, data.seq_len"),
    ],
)
def test_a_bad_set_option_is_one_line_before_anything_is_written(item, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(write_config(tmp_path)), "--out", str(tmp_path / "out"), f"--set={item}"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"seqmem: error: {message}"), line
    assert not (tmp_path / "out").exists()


def test_the_sweep_help_documents_set(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "--set KEY=VALUE" in capsys.readouterr().out


# ---- a full disk: the trial's one line, and the same command continues ------------------------------------------


def test_a_trial_on_a_full_disk_is_an_error_with_its_line_and_the_same_command_continues(
    local_ray, tmp_path, capsys, monkeypatch
):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # tests.faults, as the Ray workers see it
    full = tmp_path / "disk-is-full"
    full.touch()
    callback = {"class_path": "tests.faults.FullDisk", "init_args": {"after": 3, "marker": str(full)}}
    config = write_config(tmp_path, budget=6, grid={"seed_everything": [0]}, record={}, curves={})
    command = ["sweep", str(config), "--out", str(tmp_path / "out"), "--set", "checkpoint.every_n_train_steps=2"]
    command += ["--set", f"trainer.callbacks+={json.dumps(callback)}"]  # the disk fills from step 3 on
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 1
    run = tmp_path / "out" / "seed=0"
    expected = (
        f"cannot write {str(run / 'checkpoints' / 'epoch=0-step=4.ckpt')!r}: No space left on device [ENOSPC]; the "
        f"last good checkpoint {str(run / 'checkpoints' / 'last.ckpt')!r} (step 2) is intact: resume with --ckpt_path "
        "last"
    )
    assert f"[1/1] seed=0: error: {expected}" in capsys.readouterr().out.splitlines()
    (trial,) = read_csv(tmp_path / "out" / "trials.csv")
    assert (trial["status"], trial["error"]) == ("error", expected)
    full.unlink()  # room again: the same command resumes the trial from its last good checkpoint
    main(command)  # every trial finished: no SystemExit
    (trial,) = read_csv(tmp_path / "out" / "trials.csv")
    assert (trial["status"], trial["steps"]) == ("not solved", "6")
    assert f"Restored all states from the checkpoint at {run / 'checkpoints' / 'last.ckpt'}" in (
        (run / "train.log").read_text()
    )


# ---- a full disk under the whole sweep folder: one line each, and nothing to clean by hand -------------------------

ENOSPC = "No space left on device [ENOSPC]"


def test_a_sweep_on_a_full_disk_says_so_in_lines_and_the_same_command_continues_once_there_is_room(
    local_ray, small_disk, tmp_path, capsys
):
    # Room for the sweep's copy of its config and Ray Tune's first state (a page each), none for the trial: it
    # fails at its first file (trial.json), and Ray's copies of its own state into ray/ are cut short.
    out = small_disk / "out"
    config = write_config(tmp_path, grid={"seed_everything": [0]}, record={}, curves={})
    command = ["sweep", str(config), "--out", str(out)]
    filler = fill(small_disk, leave=8192)
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured.err
    (line,) = [line for line in captured.out.splitlines() if line.startswith("[1/1] ")]
    assert line == f"[1/1] seed=0: error: cannot write {str(out / 'seed=0' / 'trial.json')!r}: {ENOSPC}"
    assert f"note: Ray Tune's own state in {str(out / 'ray')!r} is incomplete" in captured.out
    (line,) = [line for line in captured.err.splitlines() if line.startswith("seqmem:")]
    assert line == f"seqmem: error: cannot write {str(out / 'trials.csv')!r}: {ENOSPC}"
    assert [p.name for p in out.iterdir() if p.name.startswith("seed=")] == ["seed=0"]  # left empty
    filler.unlink()  # room again: the same command retries the folder the full disk left incomplete
    main(command)  # every trial finished: no SystemExit
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and "not a sweep run" not in captured.out
    (trial,) = read_csv(out / "trials.csv")
    assert (trial["name"], trial["status"], trial["steps"]) == ("seed=0", "not solved", "4")
    assert (out / "summary.md").is_file() and (out / "seed=0" / "result.json").is_file()


def test_ray_tunes_state_that_cannot_be_written_before_any_trial_is_one_line(local_ray, small_disk, tmp_path, capsys):
    # A page for the sweep's copy of its config, none for the state Ray Tune saves before it starts a trial.
    out = small_disk / "out"
    fill(small_disk, leave=4096)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(write_config(tmp_path)), "--out", str(out)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "started" not in captured.out
    (line,) = [line for line in captured.err.splitlines() if line.startswith("seqmem:")]
    assert line == f"seqmem: error: cannot write Ray Tune's state in {str(out / 'ray')!r}: {ENOSPC}"


def test_tables_come_from_the_trials_when_ray_tunes_own_state_cannot_be_read_back(
    local_ray, tmp_path, capsys, monkeypatch
):
    # As on a full disk, where Ray's copy of a trial's error (ray/<run>/error.pkl) was cut short: here there is
    # room for the tables, and they hold every trial's outcome and its error.
    def cut_short(trial):
        raise EOFError("Ran out of input")

    monkeypatch.setattr(Trial, "get_pickled_error", cut_short)
    grid = {"model": TINY["grid"]["model"], "seed_everything": [0]}
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(write_config(tmp_path, grid=grid, record={}, curves={})), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1  # a trial ended with an error
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured.err
    note = f"note: Ray Tune's own state in {str(tmp_path / 'out' / 'ray')!r} is incomplete (EOFError: Ran out of input)"
    assert note in captured.out
    trials = read_csv(tmp_path / "out" / "trials.csv")
    assert [(t["name"], t["status"]) for t in trials] == [
        ("model=gru,seed=0", "not solved"),
        ("model=short,seed=0", "error"),
    ]
    assert trials[1]["error"] == "data.seq_len must be >= 2 (one marker per half), got 1"
    assert "| gru | 0/1 | not solved within 4 |" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.parametrize(
    "left",
    [
        {},  # the folder alone: trial.json could not be written
        {".trial.json.1a2b3c4d.tmp": b""},  # a kill while trial.json was written
        {"trial.json": b"", "train.log": b"...", "checkpoints/": None},  # a 0-byte trial.json
        {"trial.json": b'{"budget": 4, "base', "checkpoints/last.ckpt": b"weights"},  # cut short: not resumed
        {"result.json": b"", "trial.json": "definition"},  # a 0-byte result.json: the trial is not finished
    ],
    ids=["empty", "temporary-file", "empty-trial-json", "partial-trial-json", "empty-result-json"],
)
def test_a_run_folder_an_attempt_left_incomplete_is_the_trials_to_retry(tmp_path, left):
    sweep = load_sweep(str(write_config(tmp_path)))
    point = sweep.points()[0]
    definition = json.loads(json.dumps(sweep.definition(point)))
    run_dir = tmp_path / "out" / sweep.trial_name(point)
    run_dir.mkdir(parents=True)
    for name, content in left.items():
        path = run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "definition":
            path.write_text(json.dumps(definition))
        elif content is not None:
            path.write_bytes(content)
    assert claim(run_dir, definition) is None  # not finished: ready to train
    assert sorted(p.name for p in run_dir.iterdir()) == ["trial.json"]
    assert json.loads((run_dir / "trial.json").read_text()) == definition


def test_a_folder_without_trial_json_that_holds_other_files_is_refused_in_one_line_and_kept(tmp_path):
    sweep = load_sweep(str(write_config(tmp_path)))
    point = sweep.points()[0]
    run_dir = tmp_path / "out" / sweep.trial_name(point)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "train.log").write_text("a trial's log, and a file of the user's beside it")
    (run_dir / "checkpoints" / "notes.txt").write_text("mine")
    with pytest.raises(TrialError) as error:
        run_trial(point, sweep, str(tmp_path / "out"), str(tmp_path), threads=1, gpus=0)
    assert str(error.value) == (
        f"{run_dir} exists but is not a sweep run (no trial.json, and it holds "
        f"{str(run_dir / 'checkpoints' / 'notes.txt')!r}): move it, or sweep into another --out"
    )
    assert (run_dir / "checkpoints" / "notes.txt").read_text() == "mine" and (run_dir / "train.log").is_file()
