"""What one part of ``scripts/gpu_check.py`` is and what it gets: its table, its context, its outcome.

A part is a function ``run(ctx) -> Outcome`` that measures, adds its rows to ``ctx.table`` as it goes (the
table is rewritten after every row, so a part stopped at its time budget keeps what it had measured) and
returns one line for the summary. It runs in a process of its own (see gpu_check.py), on the GPU, or tiny
on the CPU when ``ctx.smoke``.
"""

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TextIO, TypeVar

import torch

T = TypeVar("T")


@dataclass
class Outcome:
    """What a part says in the summary.

    Args:
        summary: one line: what was measured, and the headline numbers.
        met: whether the part's target held; None where it has none or a CPU smoke run cannot judge it.
    """

    summary: str
    met: Optional[bool] = None


class Table:
    """A markdown table (and notes under it) kept in ``path``, rewritten whole after every change.

    Args:
        path: the file it lives in.
        columns: the column names, in order.
    """

    def __init__(self, path: Path, columns: tuple[str, ...]):
        self.path = path
        self.columns = columns
        self.rows: list[tuple[str, ...]] = []
        self.notes: list[str] = []
        self._write()

    def add(self, *cells: object) -> None:
        """One row, one cell per column (floats as they are formatted by the caller)."""
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {self.path.stem} has {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(tuple(str(cell).replace("|", "\\|") for cell in cells))
        self._write()

    def note(self, line: str) -> None:
        """A line of text under the table."""
        self.notes.append(line)
        self._write()

    def _write(self) -> None:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += ["", *self.notes]
        partial = self.path.with_suffix(".partial")
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(self.path)  # whole or not at all: the parent may read it at any moment


@dataclass
class Context:
    """What a running part gets.

    Args:
        name: the part's name (progress lines start with it).
        smoke: run tiny on the CPU (``--cpu-smoke``) instead of full size on the GPU.
        work: a scratch folder of the part's own (logs, checkpoints, TensorBoard files).
        table: the part's table.
        deadline: ``time.monotonic()`` at which the part is stopped.
        threads: torch threads the part may use.
        progress: where progress lines go (the terminal, not the part's log).
        start_method: how the part starts processes of its own (the DDP ranks): "fork" or "spawn".
    """

    name: str
    smoke: bool
    work: Path
    table: Table
    deadline: float
    threads: int
    progress: TextIO
    start_method: str = "fork"
    started: float = field(default_factory=time.monotonic)
    failed: list[str] = field(default_factory=list)

    def attempt(self, what: str, measure: Callable[[], T]) -> Optional[T]:
        """``measure()``, or None if it raised: the failure is noted under the table, its traceback goes to the
        part's log, and the part goes on with its next row (``failed`` lists what failed)."""
        try:
            return measure()
        except Exception as error:
            traceback.print_exc()
            lines = str(error).strip().splitlines() or [""]
            self.failed.append(what)
            self.table.note(f"- {what}: failed: {type(error).__name__}: {lines[0][:300]}")
            self.say(f"{what}: failed: {type(error).__name__}")
            return None

    def say(self, message: str) -> None:
        """One progress line on the terminal: ``[part 12 s] message``."""
        print(f"[{self.name} {time.monotonic() - self.started:.0f} s] {message}", file=self.progress, flush=True)

    def left(self) -> float:
        """Seconds before the part is stopped."""
        return self.deadline - time.monotonic()

    @property
    def accelerator(self) -> str:
        """``--trainer.accelerator`` of every fit: gpu, or cpu in a smoke run."""
        return "cpu" if self.smoke else "gpu"

    @property
    def device(self) -> torch.device:
        """The device of the plain-PyTorch references."""
        return torch.device("cpu" if self.smoke else "cuda")

    def check_device(self) -> None:
        """Refuse to measure a GPU that is not there (and say how to run without one)."""
        if not self.smoke and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device: run this on a GPU machine, or pass --cpu-smoke")

    def sync(self) -> None:
        """Wait for the device (nothing to wait for on the CPU)."""
        if not self.smoke:
            torch.cuda.synchronize()

    def folder(self, *names: str) -> Path:
        """A fresh folder under the part's scratch folder."""
        path = self.work.joinpath(*names)
        path.mkdir(parents=True, exist_ok=False)
        return path


@dataclass(frozen=True)
class Part:
    """One check of gpu_check.py.

    Args:
        name: what ``--parts`` calls it.
        title: the heading of its section in the report.
        target: what it is measured against, in words.
        columns: the columns of its table.
        run: the check itself.
        budget_s: seconds it may take on the GPU machine before it is stopped.
        smoke_budget_s: the same for ``--cpu-smoke``.
        timing: it measures time, so it runs alone, after the parts that do not.
    """

    name: str
    title: str
    target: str
    columns: tuple[str, ...]
    run: Callable[[Context], Outcome]
    budget_s: float
    smoke_budget_s: float
    timing: bool

    def budget(self, smoke: bool) -> float:
        return self.smoke_budget_s if smoke else self.budget_s


def fmt(value: Optional[float], digits: int = 3) -> str:
    """A number for a table: 3 significant digits; "n/a" for None."""
    return "n/a" if value is None else f"{value:.{digits}g}"


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0))
