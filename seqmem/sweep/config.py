"""The sweep config: one YAML file that describes a grid of ``seqmem fit`` runs.

    base: agreement.yaml          # a shipped config by name (seqmem/configs/<name>), or a path
                                  # (relative to this file)
    budget: 6000                  # trainer.max_steps of every trial; the only length limit (max_epochs is lifted)
    solved: {metric: val/acc, threshold: 0.99, mode: max}   # optional; default: the task's own criterion
    stop_when_solved: true        # optional (default false): stop a trial at its first solved validation
    set:                          # optional: options of every trial, any `seqmem fit` option, dotted
      trainer.val_check_interval: 250
    grid:                         # the axes; the trials are their cartesian product
      model:                      # a bundle axis: label -> the options it sets
        vanilla: {model.cell: vanilla}
        lstm_fb3: {model.cell: lstm, model.forget_bias: 3}
      data.distance: [5, 10, 30]  # an option axis: values of one option
      seed: [0, 1, 2]             # the seed axis: summaries aggregate over it. `seed` sets seed_everything
                                  # and data.seed (weights and data stream); `seed_everything` only the first
    record:                       # optional: one value of a TensorBoard tag per trial, as a column
      horizon_init: grad_time/layer0/horizon                    # the first logged value
      horizon_end: {tag: grad_time/layer0/horizon, at: last}    # or the last one
      bpc_at_4800: {tag: val/bpc, at: 4800}                     # or the last one at or before a step
    curves:                       # optional: tags plotted against step in curves.png, one panel each,
      train/loss: log             # one line per configuration (median over seeds, band min–max);
      clip/clipped_fraction: linear                             # the y scale: linear or log

Options are passed to the trial's ``seqmem fit`` as ``--key value`` after ``--config <base>``: ``set``
first, then the axes in order, so a grid value overrides a ``set`` value. A trial's run name lists its
axis values, ``model=lstm_fb3,data.distance=30,seed=0`` (the seed axis shows as ``seed``). The lm task
draws no data, so its seed axis is ``seed_everything``.
"""

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from seqmem.configs import CONFIGS, SWEEP_CONFIGS, SWEEPS, TASK_CONFIGS, find_config
from seqmem.errors import ConfigError, quote, require

KEYS = ("base", "budget", "solved", "stop_when_solved", "set", "grid", "record", "curves")
SEED_AXES = ("seed_everything", "seed")
# Options the sweep sets itself, with what to use instead.
RESERVED = {
    "trainer.max_steps": "set budget instead",
    "trainer.max_epochs": "the budget (in steps) is the only length limit",
    "trainer.logger": "each trial logs to its own run folder under --out",
    "trainer.default_root_dir": "each trial logs to its own run folder under --out",
    "config": "set base instead",
    "ckpt_path": "the sweep resumes unfinished trials itself",
}


@dataclass(frozen=True)
class Axis:
    """One axis of the grid.

    Args:
        key: the axis as written in ``grid``: an option (``data.distance``) or a bundle's name (``model``).
        points: label -> the options that point sets; an option axis maps each value to ``{key: value}``.
        bundle: whether the points are labelled bundles of options rather than values of one option.
    """

    key: str
    points: dict[Any, dict[str, Any]]
    bundle: bool

    @property
    def name(self) -> str:
        """The axis as run names and tables show it (``seed`` for ``seed_everything``)."""
        return "seed" if self.key == "seed_everything" else self.key

    @property
    def numeric(self) -> bool:
        """An option axis whose values are all numbers: it can be a plot's x-axis."""
        return not self.bundle and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.points)


@dataclass(frozen=True)
class Record:
    """A TensorBoard tag read back from every trial as one value.

    Args:
        name: the column name.
        tag: the scalar tag, e.g. ``grad_time/layer0/horizon``.
        at: ``first`` (the value at the lowest step), ``last`` (at the highest), or a step number: the value
            logged last at or before that step (e.g. where the last fifth of the budget begins, to read how
            much a metric still moved after it).
    """

    name: str
    tag: str
    at: Union[str, int] = "first"


@dataclass(frozen=True)
class Criterion:
    """When a trial counts as solved: ``metric >= threshold`` (mode max) or ``<=`` (mode min)."""

    metric: str
    threshold: float
    mode: str


@dataclass(frozen=True)
class Sweep:
    """A parsed, checked sweep config (see the module docstring for the format).

    Args:
        path: the sweep config file.
        base: the base ``seqmem fit`` config every trial starts from.
        budget: optimizer steps of every trial (``trainer.max_steps``).
        solved: the solved criterion; None: the task's own.
        stop_when_solved: stop a trial at its first solved validation.
        options: options of every trial (``set``).
        axes: the grid's axes, in order.
        record: TensorBoard tags read back per trial.
        curves: TensorBoard tags plotted against step, with their y scale (``linear`` or ``log``).
    """

    path: Path
    base: Path
    budget: int
    solved: Optional[Criterion]
    stop_when_solved: bool
    options: dict[str, Any]
    axes: tuple[Axis, ...]
    record: tuple[Record, ...]
    curves: tuple[tuple[str, str], ...] = ()

    @property
    def seed_axis(self) -> Optional[Axis]:
        """The axis summaries aggregate over, if the grid has one."""
        return next((axis for axis in self.axes if axis.key in SEED_AXES), None)

    @property
    def config_axes(self) -> tuple[Axis, ...]:
        """Every axis but the seed axis: one summary row per combination of their labels."""
        return tuple(axis for axis in self.axes if axis is not self.seed_axis)

    def points(self) -> list[dict[str, Any]]:
        """Every trial as {axis key: label}, first axis slowest (the order of the tables)."""
        keys = [axis.key for axis in self.axes]
        return [
            dict(zip(keys, labels, strict=True)) for labels in itertools.product(*(axis.points for axis in self.axes))
        ]

    def trial_name(self, point: dict[str, Any]) -> str:
        """``model=gru,data.distance=30,seed=0``: a run folder's name, safe as a path component."""
        name = ",".join(f"{axis.name}={point[axis.key]}" for axis in self.axes)
        return re.sub(r"[/\\\s]", "_", name)

    def trial_options(self, point: dict[str, Any]) -> dict[str, Any]:
        """The options of one trial: ``set``, then each axis's point (later ones win)."""
        options = dict(self.options)
        for axis in self.axes:
            options.update(axis.points[point[axis.key]])
        return options

    def definition(self, point: dict[str, Any]) -> dict[str, Any]:
        """What a trial's outcome depends on, as JSON: a finished run is reused only if this is unchanged.

        The base config counts by its name and its text, not by where it lies: the same sweep continues after the
        checkout moves or seqmem is installed elsewhere, and an edited base config trains its trials afresh."""
        return {
            "base": self.base.name,
            "base_sha256": hashlib.sha256(self.base.read_bytes()).hexdigest(),
            "options": self.trial_options(point),
            "budget": self.budget,
            "solved": None if self.solved is None else vars(self.solved),
            "stop_when_solved": self.stop_when_solved,
        }


def load_sweep(config: str) -> Sweep:
    """Read and check a sweep config: a path, or the name of a shipped one (``agreement.yaml``).

    Raises:
        ConfigError: one line naming the key at fault and what is allowed.
    """
    path = Path(find_config(config, SWEEPS)).expanduser()
    require(
        path.is_file(), f"sweep config {quote(config)}: no such file, nor a shipped sweep ({', '.join(SWEEP_CONFIGS)})"
    )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"sweep config {path}: not valid YAML ({' '.join(str(error).split())})") from None
    return parse_sweep(raw, path.resolve())


def parse_sweep(raw: Any, path: Path) -> Sweep:
    """Check a loaded sweep config; ``path`` locates a relative ``base``."""
    require(isinstance(raw, dict), f"sweep config {path}: expected a mapping of {', '.join(KEYS)}")
    for key in raw:
        require(key in KEYS, f"sweep config: unknown key {key!r}; allowed: {', '.join(KEYS)}")
    require("base" in raw, "sweep config: base is missing (a shipped config name such as agreement.yaml, or a path)")
    require("grid" in raw, "sweep config: grid is missing (a mapping of axes, e.g. seed_everything: [0, 1, 2])")
    budget = raw.get("budget")
    require(
        isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1,
        f"sweep config: budget must be a whole number of steps >= 1, got {budget!r}",
    )
    stop = raw.get("stop_when_solved", False)
    require(isinstance(stop, bool), f"sweep config: stop_when_solved must be true or false, got {stop!r}")
    options = raw.get("set") or {}
    require(isinstance(options, dict), f"sweep config: set must be a mapping of options to values, got {options!r}")
    check_options(options, "sweep config: set")
    grid = raw["grid"]
    require(isinstance(grid, dict) and grid, "sweep config: grid must be a non-empty mapping of axes")
    axes = tuple(parse_axis(key, values) for key, values in grid.items())
    seeds = [axis.key for axis in axes if axis.key in SEED_AXES]
    require(len(seeds) <= 1, f"sweep config: grid has two seed axes ({', '.join(seeds)}); keep one")
    sweep = Sweep(
        path=path,
        base=resolve_base(raw["base"], path.parent),
        budget=budget,
        solved=parse_criterion(raw.get("solved")),
        stop_when_solved=stop,
        options=options,
        axes=axes,
        record=parse_record(raw.get("record") or {}),
        curves=parse_curves(raw.get("curves") or {}),
    )
    names = [sweep.trial_name(point) for point in sweep.points()]
    for name in names:
        require(names.count(name) == 1, f"sweep config: two trials get the run name {name}; make the labels distinct")
    return sweep


def check_options(options: dict, where: str) -> None:
    """Option keys are dotted ``seqmem fit`` options, not ones the sweep sets itself; ``where`` begins the error
    line (``sweep config: set``)."""
    for key in options:
        require(
            isinstance(key, str) and key and not key.startswith("-"),
            f"{where}: option {key!r} must be a dotted option name such as model.cell (no leading --)",
        )
        reserved = next((k for k in RESERVED if key == k or key.startswith(k + ".")), None)
        require(reserved is None, f"{where}: {key} is set by the sweep ({RESERVED.get(reserved)})")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``seqmem sweep --set key=value`` (repeatable): {key: value}, each value read as YAML, as in ``set``
    (``--set data.path=input.txt``, ``--set model.hidden_size=64``, ``--set data.path=null``); a key given twice
    takes its last value.

    Raises:
        ConfigError: an item without ``=``, a value that is not YAML, or a key the sweep sets itself.
    """
    overrides = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        require(equals == "=", f"sweep --set takes key=value (e.g. --set data.path=input.txt), got {quote(item)}")
        try:
            overrides[key] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"sweep --set {key}: {quote(text)} is not a YAML value ({error.problem})") from None
    check_options(overrides, "sweep --set")
    return overrides


def with_overrides(sweep: "Sweep", overrides: dict[str, Any]) -> "Sweep":
    """``sweep`` with ``overrides`` (``seqmem sweep --set``) over its ``set`` options, for every trial.

    Raises:
        ConfigError: an override of an option a grid axis sets (the axis's points would all be the same trial).
    """
    for axis in sweep.axes:
        for key in overrides:
            taken = any(key in options for options in axis.points.values())
            require(not taken, f"sweep --set {key}: set by the grid axis {axis.key} (edit the grid instead)")
    return dataclasses.replace(sweep, options={**sweep.options, **overrides})


def parse_axis(key: Any, values: Any) -> Axis:
    """A list is an option axis over ``key``; a mapping is a bundle axis of labelled option sets."""
    require(isinstance(key, str) and key, f"sweep config: grid axis {key!r} must be a name")
    if isinstance(values, list):
        require(values, f"sweep config: grid.{key} is empty")
        for value in values:
            require(
                value is None or isinstance(value, (str, int, float, bool)),
                f"sweep config: grid.{key}: {value!r} is not a single value; for structured values use a bundle "
                "axis (label: {option: value})",
            )
        require(len(set(map(json.dumps, values))) == len(values), f"sweep config: grid.{key} lists a value twice")
        if key == "seed":
            # A new seed is a new run: new weights (seed_everything) and a new data stream (data.seed).
            return Axis(key, {v: {"seed_everything": v, "data.seed": v} for v in values}, bundle=False)
        check_options({key: None}, f"sweep config: grid.{key}")
        return Axis(key, {value: {key: value} for value in values}, bundle=False)
    require(
        isinstance(values, dict) and values,
        f"sweep config: grid.{key} must be a list of values or a mapping of labels to options, got {values!r}",
    )
    for label, options in values.items():
        require(
            isinstance(options, dict),
            f"sweep config: grid.{key}.{label} must be a mapping of options ({{model.cell: lstm}}), got {options!r}",
        )
        check_options(options, f"sweep config: grid.{key}.{label}")
    return Axis(key, dict(values), bundle=True)


def resolve_base(base: Any, folder: Path) -> Path:
    """A shipped config by name (``agreement.yaml``), else a path relative to the sweep config's folder."""
    require(isinstance(base, str) and base, f"sweep config: base must be a config name or path, got {base!r}")
    if base.removesuffix(".yaml") in TASK_CONFIGS:  # a shipped config by name
        return CONFIGS / f"{base.removesuffix('.yaml')}.yaml"
    path = Path(base).expanduser()
    path = path if path.is_absolute() else folder / path
    shipped = ", ".join(TASK_CONFIGS)
    require(path.is_file(), f"sweep config: base {quote(base)} is neither a shipped config ({shipped}) nor a file")
    return path.resolve()


def parse_criterion(solved: Any) -> Optional[Criterion]:
    """``{metric, threshold, mode}``, all three given; None when absent (the task's own criterion)."""
    if solved is None:
        return None
    require(
        isinstance(solved, dict) and set(solved) == {"metric", "threshold", "mode"},
        f"sweep config: solved must be {{metric: ..., threshold: ..., mode: max or min}}, got {solved!r}",
    )
    require(
        isinstance(solved["metric"], str),
        f"sweep config: solved.metric must be a metric name, got {solved['metric']!r}",
    )
    try:
        threshold = float(solved["threshold"])  # YAML reads 1e-3 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"sweep config: solved.threshold must be a number, got {solved['threshold']!r}") from None
    require(solved["mode"] in ("max", "min"), f"sweep config: solved.mode must be max or min, got {solved['mode']!r}")
    return Criterion(solved["metric"], threshold, solved["mode"])


def parse_record(record: Any) -> tuple[Record, ...]:
    """``{name: tag}`` or ``{name: {tag: ..., at: first|last|<step>}}``."""
    require(isinstance(record, dict), f"sweep config: record must be a mapping of column names to tags, got {record!r}")
    parsed = []
    for name, spec in record.items():
        if isinstance(spec, str):
            spec = {"tag": spec}
        require(
            isinstance(spec, dict) and "tag" in spec and set(spec) <= {"tag", "at"} and isinstance(spec["tag"], str),
            f"sweep config: record.{name} must be a tag or {{tag: ..., at: first, last or a step}}, got {spec!r}",
        )
        at = spec.get("at", "first")
        step = isinstance(at, int) and not isinstance(at, bool) and at >= 0
        require(
            at in ("first", "last") or step,
            f"sweep config: record.{name}.at must be first, last or a step number >= 0, got {at!r}",
        )
        parsed.append(Record(str(name), spec["tag"], at))
    return tuple(parsed)


def parse_curves(curves: Any) -> tuple[tuple[str, str], ...]:
    """``{tag: linear|log}``, or a list of tags (linear)."""
    if isinstance(curves, list):
        curves = {tag: "linear" for tag in curves}
    require(
        isinstance(curves, dict) and all(isinstance(tag, str) for tag in curves),
        f"sweep config: curves must be a mapping of tags to linear or log (or a list of tags), got {curves!r}",
    )
    for tag, scale in curves.items():
        require(scale in ("linear", "log"), f"sweep config: curves.{tag} must be linear or log, got {scale!r}")
    return tuple(curves.items())
