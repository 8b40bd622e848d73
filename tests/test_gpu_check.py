"""scripts/gpu_check.py cannot rot before a GPU comes: its CPU smoke mode runs every part, tiny, and each part writes
its table; what a CPU can judge (no host reads on quiet steps, DDP tags once, mixed-precision norms) it judges."""

import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

from gpu import checks as gpu_checks  # noqa: E402

# The columns each part's table must have (the ones the benchmarks page reads), and its rows in a smoke run.
COLUMNS = {
    "suite": ("selection", "passed", "failed", "errors", "skipped", "not collected"),
    "quiet": ("cell", "BPTT", "options", "host reads", "CUDA syncs", "expected"),
    "ddp": ("event files", "diagnostic tags written twice", "differ from 1 process", "val/loss, 2 ranks", "rel. diff"),
    "precision": ("cell", "precision", "grad_norm/total", "float32 grad_norm/total", "rel. diff", "families logged"),
    "speed": ("T", "H", "precision", "cell", "baseline", "seqmem ms/step", "baseline ms/step", "ratio", "target"),
    "trial": ("config", "cell", "steps", "seqmem fit s", "plain loop s", "ratio"),
    "memory": ("code", "BPTT", "T", "peak MiB", "peak MiB, longer T", "ratio"),
    "diagnostics": ("cell", "steps", "inside diagnostics s", "in-run share", "ratio on / off"),
}
ROWS = {"suite": 1, "quiet": 3, "ddp": 1, "precision": 2, "speed": 4, "trial": 1, "memory": 4, "diagnostics": 1}


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(report: str) -> dict[str, list[dict[str, str]]]:
    """Each section's first table as rows of {column: cell}, keyed by the part name in its heading."""
    found = {}
    for section in re.split(r"^## ", report, flags=re.M)[1:]:
        heading, *lines = section.splitlines()
        name = re.search(r"\(`(\w+)`\)$", heading)
        rows = [line for line in lines if line.startswith("|")]
        if name is None or len(rows) < 2:
            continue
        header = cells(rows[0])
        found[name.group(1)] = [dict(zip(header, cells(row), strict=True)) for row in rows[2:]]
    return found


def summary(report: str) -> dict[str, dict[str, str]]:
    section = report.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [cells(line) for line in section.splitlines() if line.startswith("| ")]
    return {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--out", str(out), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)


def test_cpu_smoke_runs_every_part_and_writes_its_table(tmp_path: Path) -> None:
    done = run(tmp_path, "--cpu-smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Two files only, a report and a log, easy to carry back from a remote machine.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.log", "gpu_check.md"]
    for part in COLUMNS:
        assert re.search(rf"^\[{part}\] ok in \d+ s: .+", done.stdout, flags=re.M), f"no summary line for {part}"
        assert f"===== {part} =====" in (tmp_path / "gpu_check.log").read_text()
    report = (tmp_path / "gpu_check.md").read_text()
    assert {part: row["status"] for part, row in summary(report).items()} == dict.fromkeys(COLUMNS, "ok")
    found = tables(report)
    assert set(found) == set(COLUMNS)
    for part, columns in COLUMNS.items():
        assert len(found[part]) >= ROWS[part], part
        assert set(columns) <= set(found[part][0]), f"{part} lacks {set(columns) - set(found[part][0])}"

    # What a CPU can judge, judged: each CPU device case passes and its CUDA twin skips;
    (suite,) = found["suite"]
    assert int(suite["passed"]) == int(suite["skipped"]) > 0 and suite["failed"] == suite["errors"] == "0"
    # no quiet step reads the device, whatever the row;
    assert {row["host reads"] for row in found["quiet"]} == {"0"}
    # DDP on 2 CPU processes: one event file, each diagnostic tag once, as a single process writes them, and the
    # validation loss of one process;
    (ddp,) = found["ddp"]
    assert (ddp["event files"], ddp["diagnostic tags written twice"], ddp["differ from 1 process"]) == ("1", "0", "0")
    assert float(ddp["rel. diff"]) <= 1e-6 and ddp["ranks identical"] == "yes"
    # bf16 moves the first gradient norm by rounding only (test_precision.py's bound), every family logged;
    for row in found["precision"]:
        assert float(row["rel. diff"].rstrip(" %")) < 3 and row["non-finite values"] == "0"
        logged, of = row["families logged"].split("/")
        assert logged == of
    # and the timings are numbers.
    for part, column in (("speed", "ratio"), ("trial", "ratio"), ("diagnostics", "in-run share")):
        assert all(0 < float(row[column].rstrip(" %")) < math.inf for row in found[part]), part


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    # Without --cpu-smoke on a machine without CUDA, each timing part refuses to measure: one line each.
    done = run(tmp_path, "--parts", "speed", "memory")
    assert done.returncode == 1
    report = (tmp_path / "gpu_check.md").read_text()
    rows = summary(report)
    assert set(rows) == {"speed", "memory"} and {row["status"] for row in rows.values()} == {"failed"}
    assert all(
        row["result"] == "RuntimeError: no CUDA device: run this on a GPU machine, or pass --cpu-smoke"
        for row in rows.values()
    )
    assert report.count("**failed**") == 2 and "Traceback" in report  # each with the end of its log
    assert re.search(r"^\[memory\] failed in \d+ s: RuntimeError: no CUDA device", done.stdout, flags=re.M)


def test_cuda_syncs_records_what_cudas_sync_debug_mode_reports_on_recorded_batches(monkeypatch) -> None:
    """The GPU side of the quiet part, without a GPU: CUDA's sync debug mode reports a sync as a Python warning
    with a fixed text; the recorder turns the mode on and off and keeps those of recorded batches, with the caller."""
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def synchronising_op() -> None:
        warnings.warn(gpu_checks.SYNC_WARNING, UserWarning, stacklevel=1)  # what torch does on a synchronising call

    syncs = gpu_checks.CudaSyncs()
    with pytest.warns(UserWarning, match="unrelated"), syncs:
        synchronising_op()  # not recording: between batches
        syncs.batch, syncs.recording = 3, True
        synchronising_op()
        synchronising_op()  # the same place twice: both kept, not once per place
        warnings.warn("unrelated", UserWarning, stacklevel=1)  # passed on, not recorded
        torch.ones(()).item()  # a host read as HostReads sees it
    assert modes == ["warn", "default"]
    assert [(read.name, read.batch) for read in syncs.reads] == [("CUDA sync", 3), ("CUDA sync", 3), ("item", 3)]
    assert {read.caller.name for read in syncs.reads[:2]} == {"synchronising_op"}
