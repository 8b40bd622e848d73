"""The ``seqmem`` command: fit / validate / test / predict (:mod:`seqmem.lightning_cli`), and ``sweep``.

seqmem fit --config copy --model.cell orthogonal --data.seq_len 200
seqmem sweep agreement      # a grid of seeded fits on Ray Tune (seqmem/sweep/)

Imports run one way: this module imports the LightningCLI and the sweep; neither imports it.
"""

import inspect
import os
import signal
import sys
import threading
from argparse import ArgumentError
from contextlib import contextmanager
from typing import Iterator, Optional

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from seqmem.callbacks.nonfinite import NonFiniteError
from seqmem.errors import Terminated, error_line, fail, shorten
from seqmem.lightning_cli import raised_in, run_cli
from seqmem.tasks import TaskDataModule

__all__ = ["main", "run_cli"]

#: The exit status of a run stopped by SIGTERM: 128 + 15, what a shell reports for a process that SIGTERM ended.
SIGTERM_STATUS = 128 + signal.SIGTERM


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``seqmem`` console script; ``args`` replaces ``sys.argv[1:]`` in tests."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["sweep"]:  # not a LightningCLI subcommand: a grid of fits on Ray Tune (imported only then)
        from seqmem.sweep import main as sweep

        return sweep(argv[1:])
    with stop_on_sigterm():
        try:  # around the reporting too: a SIGTERM while an error is being reported stops it as well
            run_subcommand(args)
        except Terminated as stop:
            if rank_zero_only.rank == 0:  # under DDP every rank is sent it: one line for the run
                print(f"seqmem: error: {stop}", file=sys.stderr)
            sys.exit(SIGTERM_STATUS)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, a SIGTERM raises :class:`~seqmem.errors.Terminated` at once, wherever the process is;
    a second one, while the first is still being handled (a teardown that does not end), exits at once.

    Lightning's own SIGTERM handler, which it puts before this one while it runs, only sets a flag that its loops
    read after each batch and then exits with status 0, as if the run had finished; a process stuck elsewhere
    never reads it. Only the main thread can set a handler: elsewhere (a test's thread) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def handler(signum: int, frame: object) -> None:
        if received:
            os.write(2, b"seqmem: error: stopped by SIGTERM\n")
            os._exit(SIGTERM_STATUS)
        received.append(signum)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:  # None: a handler set outside Python, which cannot be put back; the default is the nearest
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run_subcommand(args: Optional[list[str]]) -> None:
    """A LightningCLI subcommand; bad input and files it could not write end in one line, exit status 2."""
    try:
        run_cli(args)
    except ArgumentError as error:
        fail(parse_error_message(error))
    except NonFiniteError as error:
        print(f"seqmem: error: {error}", file=sys.stderr)  # a failed run, not bad input: status 1
        sys.exit(1)
    except Exception as error:
        line = error_line(error)  # bad input, or a file the run could not write
        if line is None and lost_its_peers(error):
            sys.exit(2)  # quiet: the rank that failed first has said why
        if line is None:
            raise
        fail(line)


def lost_its_peers(error: BaseException) -> bool:
    """Whether ``error`` is a collective of a DDP run that failed on a rank other than 0: the consequence of
    another process ending (rank 0 stopped on a full disk, say, and gloo's connection was closed by the peer).
    Rank 0 reports the failure behind it (or its traceback, for a bug); the other ranks add nothing."""
    return rank_zero_only.rank != 0 and raised_in(error, ("torch.distributed",))


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
