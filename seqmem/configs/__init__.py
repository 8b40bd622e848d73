"""The configs shipped with seqmem, found by name from any directory.

``defaults.yaml`` holds what every command shares (seed, logging cadence, the diagnostics) and is read
before any ``--config``; the task configs (``seqmem fit --config agreement``) hold only what is specific
to their task; ``sweeps/`` holds the sweeps (``seqmem sweep agreement``).
"""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent
DEFAULTS = CONFIGS / "defaults.yaml"
SWEEPS = CONFIGS / "sweeps"
#: Names of the shipped task configs and sweeps, as ``--config`` and ``seqmem sweep`` accept them.
TASK_CONFIGS = tuple(sorted(path.stem for path in CONFIGS.glob("*.yaml") if path != DEFAULTS))
SWEEP_CONFIGS = tuple(sorted(path.stem for path in SWEEPS.glob("*.yaml")))


def find_config(value: str, folder: Path = CONFIGS) -> str:
    """``value`` itself when it is an existing file or names no config shipped in ``folder``, else that config's path.

    A shipped config's name may be given with or without ``.yaml``; a file of that name in the working
    directory comes first.
    """
    name = value.removesuffix(".yaml")
    if Path(value).is_file() or "/" in value or not (folder / f"{name}.yaml").is_file():
        return value
    return str(folder / f"{name}.yaml")
