"""The ``seqmem`` command: fit / validate / test / predict (:mod:`seqmem.lightning_cli`), and ``sweep``.

seqmem fit --config copy --model.cell orthogonal --data.seq_len 200
seqmem sweep agreement      # a grid of seeded fits on Ray Tune (seqmem/sweep/)

Imports run one way: this module imports the LightningCLI and the sweep; neither imports it.
"""

import inspect
import sys
from argparse import ArgumentError
from typing import Optional

from seqmem.callbacks.nonfinite import NonFiniteError
from seqmem.errors import error_line, fail, shorten
from seqmem.lightning_cli import run_cli
from seqmem.tasks import TaskDataModule

__all__ = ["main", "run_cli"]


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``seqmem`` console script; ``args`` replaces ``sys.argv[1:]`` in tests."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["sweep"]:  # not a LightningCLI subcommand: a grid of fits on Ray Tune (imported only then)
        from seqmem.sweep import main as sweep

        return sweep(argv[1:])
    try:
        run_cli(args)
    except ArgumentError as error:
        fail(parse_error_message(error))
    except NonFiniteError as error:
        print(f"seqmem: error: {error}", file=sys.stderr)  # a failed run, not bad input: status 1
        sys.exit(1)
    except Exception as error:
        line = error_line(error)  # bad input, or a file the run could not write
        if line is None:
            raise
        fail(line)


def parse_error_message(error: ArgumentError) -> str:
    """jsonargparse's message on one line, cut short (it quotes the value given), saying what ``--data`` takes."""
    message = shorten(" ".join(str(error).split()), limit=400)  # 'Parser key "model.cell": Expected ...'
    if message.startswith('Parser key "data":'):
        message = f"data must be one of {', '.join(concrete_tasks())}: {message}"
    return message


def concrete_tasks() -> list[str]:
    """The task datamodules ``--data`` accepts: every subclass of TaskDataModule that is not abstract."""
    found, pending = set(), [TaskDataModule]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not inspect.isabstract(cls):
            found.add(cls.__name__)
    return sorted(found)


if __name__ == "__main__":
    main()
