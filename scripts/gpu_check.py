"""Every GPU-specific check of seqmem in one command, with a report of markdown tables.

    python3 scripts/gpu_check.py --out DIR               # on a GPU machine: under 8 minutes on one H200
    python3 scripts/gpu_check.py --cpu-smoke --out DIR   # every part tiny, on the CPU (tests/test_gpu_check.py)

Parts (``--parts`` picks some; gpu/checks.py and gpu/timings.py say what each measures):

* suite       — the test suite's CUDA cases (the ``device`` fixture), pass/fail counts;
* quiet       — quiet training steps make no host sync: CUDA's sync debug mode, every cell, full and truncated BPTT;
* ddp         — two DDP processes on the one GPU (gloo): every tag written once, val/loss of one process;
* precision   — bf16-mixed and 16-mixed, every cell, every diagnostic: grad norms within 1 % of float32;
* speed       — seqmem against cuDNN per training step, float32 and bf16-mixed, H 128-1024, T 100 and 1000;
* trial       — one main-job trial (agreement.yaml) end to end against a plain loop;
* memory      — torch.cuda.max_memory_allocated of truncated against full BPTT;
* diagnostics — the diagnostics' in-run share at the shipped intervals.

Each part runs in a process of its own, forked from this one (torch and seqmem are imported once; ``--start-method
spawn`` starts each afresh instead), with its own time budget: a part that fails or runs out of time is reported
with its one-line error and the end of its log, and the others still run; a row that raises is noted under its
table and the part goes on. The parts that time nothing run side by side first, then the timing parts alone, one
after another (``--cpu-smoke``: all at once). The budgets add up to 7.5 minutes (the side-by-side ones count once,
by the longest), so the whole check stays under 8 minutes.

Into ``--out`` go two files: ``gpu_check.md`` (the summary and every part's table, rewritten as parts finish, so
a run cut short keeps what it had) and ``gpu_check.log`` (every part's output). stdout gets progress lines, one
line per finished part and the summary table.
"""

import os

# Forking a process that has initialised CUDA breaks CUDA in the child; tests/conftest.py asks torch whether CUDA is
# there when it is imported, which with this set reads NVML instead of initialising CUDA (torch.cuda.is_available).
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import argparse
import contextlib
import json
import multiprocessing
import platform
import shlex
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

# The parts live in scripts/gpu/; the timing parts reuse the benchmark scripts' own loops (scripts/benchmarks/).
sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from gpu import checks as gpu_checks
from gpu import timings as gpu_timings
from gpu.part import Context, Part, Table, cores

PARTS: list[Part] = [*gpu_checks.PARTS, *gpu_timings.PARTS]  # budgets: max(checks) + sum(timings) = 450 s
LOG_TAIL = 25  # lines of a failed part's log in the report
LOG_LIMIT = 1_000_000  # characters of each part's log in gpu_check.log (its end)


@dataclass
class Result:
    """How a part ended — ok, partial (some rows raised), failed or timed out; pending until then — with its
    one-line summary (or error), whether its target held, and the GPU it used."""

    part: Part
    status: str = "pending"
    seconds: float = 0.0
    summary: str = ""
    met: Optional[bool] = None
    device: str = ""


def run_part(part: Part, work: Path, smoke: bool, threads: int, deadline: float, start_method: str) -> None:
    """The body of a part's process: its own process group (so a timeout ends what it started too), its output
    into its log, progress lines to the terminal, and result.json for the parent."""
    os.setsid()
    progress = os.fdopen(os.dup(1), "w", buffering=1)
    with open(work / "log.txt", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # for the processes it starts
    table = Table(work / "table.md", part.columns)
    ctx = Context(part.name, smoke, work, table, deadline, threads, progress, start_method)
    result: dict = {"status": "failed"}
    try:
        ctx.check_device()
        outcome = part.run(ctx)
        result = {"status": "ok", "summary": outcome.summary, "met": outcome.met}
        if ctx.failed:  # rows that raised: noted under the table, the rest measured
            failed = f"{len(ctx.failed)} failed ({', '.join(ctx.failed[:3])}{', ...' if len(ctx.failed) > 3 else ''})"
            result = {"status": "partial", "summary": f"{failed}; {outcome.summary}", "met": False}
    except BaseException as error:  # reported, whatever it is: the other parts go on
        traceback.print_exc()
        lines = str(error).strip().splitlines() or [""]
        result["summary"] = f"{type(error).__name__}: {lines[0]}"[:300]
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_initialized() else ""
    sys.stdout.flush()
    (work / "result.json").write_text(json.dumps(result))


class Runner:
    """Starts parts, stops those past their budget, and keeps the report up to date."""

    def __init__(self, parts: list[Part], work: Path, out: Path, smoke: bool, command: str, start_method: str):
        self.work, self.out, self.smoke, self.command = work, out, smoke, command
        self.results = {part.name: Result(part) for part in parts}
        # Forked by default: the parts share this process's imports (a spawned part imports torch and seqmem anew).
        self.start_method = start_method
        self.processes = multiprocessing.get_context(start_method)

    def run(self, parts: list[Part], side_by_side: bool) -> None:
        """Run ``parts``, all at once or one at a time."""
        batches = ([parts] if parts else []) if side_by_side else [[part] for part in parts]
        for batch in batches:
            threads = max(1, cores() // len(batch))
            running = {part.name: self._start(part, threads) for part in batch}
            while running:
                time.sleep(0.2)
                for name, (process, started, deadline) in list(running.items()):
                    if process.is_alive() and time.monotonic() < deadline:
                        continue
                    timed_out = process.is_alive()
                    if timed_out:
                        with contextlib.suppress(ProcessLookupError):  # it may have ended since
                            os.killpg(process.pid, signal.SIGKILL)  # the part and everything it started
                    process.join()
                    self._finish(name, time.monotonic() - started, timed_out)
                    del running[name]

    def _start(self, part: Part, threads: int) -> tuple:
        folder = self.work / part.name
        folder.mkdir()
        started = time.monotonic()
        deadline = started + part.budget(self.smoke)
        args = (part, folder, self.smoke, threads, deadline, self.start_method)
        process = self.processes.Process(target=run_part, args=args)
        process.start()
        print(f"[{part.name}] started (budget {part.budget(self.smoke):.0f} s, {threads} threads)", flush=True)
        return process, started, deadline

    def _finish(self, name: str, seconds: float, timed_out: bool) -> None:
        result = self.results[name]
        result.seconds = seconds
        path = self.work / name / "result.json"
        found = json.loads(path.read_text()) if path.is_file() else {}
        if timed_out:
            result.status, result.summary = (
                "timed out",
                f"stopped after its budget of {result.part.budget(self.smoke):.0f} s",
            )
        elif not found:
            result.status, result.summary = "failed", "its process died without a result (see its log)"
        else:
            result.status, result.summary, result.met = found["status"], found["summary"], found.get("met")
            result.device = found.get("device", "")
        met = "" if result.met is None else f" — target {'met' if result.met else 'NOT met'}"
        print(f"[{name}] {result.status} in {seconds:.0f} s: {result.summary}{met}", flush=True)
        if result.status != "ok":
            print("\n".join(f"    {line}" for line in self._log_tail(name)), flush=True)
        self.write_report()

    def _log_tail(self, name: str) -> list[str]:
        log = self.work / name / "log.txt"
        return log.read_text(errors="replace").splitlines()[-LOG_TAIL:] if log.is_file() else []

    def summary_table(self) -> list[str]:
        lines = ["| part | status | seconds | budget s | result | target | met |", "|---|---|---:|---:|---|---|---|"]
        for result in self.results.values():
            met = {None: "—", True: "yes", False: "NO"}[result.met]
            summary = result.summary.replace("|", "\\|")
            lines.append(
                f"| {result.part.name} | {result.status} | {result.seconds:.0f} | {result.part.budget(self.smoke):.0f} "
                f"| {summary} | {result.part.target} | {met} |"
            )
        return lines

    def write_report(self) -> None:
        """gpu_check.md: the summary, then each finished part's table (and, if it failed, its log's end)."""
        devices = sorted({r.device for r in self.results.values() if r.device})
        mode = "CPU smoke run (every part tiny; no target judged where the CPU cannot)" if self.smoke else "GPU run"
        lines = [
            "# seqmem GPU check",
            "",
            f"- {mode}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {platform.node()} ({platform.machine()}), {', '.join(devices) or 'no GPU used so far'}, "
            f"{cores()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}",
            f"- command: `{self.command}`",
            "",
            "## Summary",
            "",
            *self.summary_table(),
        ]
        for name, result in self.results.items():
            if result.status == "pending":
                continue
            lines += ["", f"## {result.part.title} (`{name}`)", "", f"Target: {result.part.target}.", ""]
            table = self.work / name / "table.md"
            lines += table.read_text().splitlines() if table.is_file() else ["(no table)"]
            if result.status != "ok":
                lines += ["", f"**{result.status}**: {result.summary}", "", "```", *self._log_tail(name), "```"]
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")

    def write_log(self) -> None:
        """gpu_check.log: every part's output, each cut to its last LOG_LIMIT characters."""
        with open(self.out / "gpu_check.log", "w") as log:
            for name in self.results:
                path = self.work / name / "log.txt"
                text = path.read_text(errors="replace")[-LOG_LIMIT:] if path.is_file() else "(not run)\n"
                log.write(f"===== {name} =====\n{text}\n")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md and gpu_check.log")
    parser.add_argument("--cpu-smoke", action="store_true", help="every part tiny, on the CPU: proves the script runs")
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], help="only these parts (default: all)")
    parser.add_argument("--serial", action="store_true", help="run the non-timing parts one at a time too")
    parser.add_argument(
        "--start-method",
        choices=["fork", "spawn"],
        default="fork",
        help="how parts (and DDP ranks) start: fork shares the imports; spawn starts each afresh",
    )
    args = parser.parse_args(argv)
    selected = [part for part in PARTS if not args.parts or part.name in args.parts]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    command = shlex.join(["python3", "scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    runner = Runner(selected, work, args.out, args.cpu_smoke, command, args.start_method)
    runner.write_report()
    print(f"gpu_check: {len(selected)} parts, scratch folder {work}, report {args.out / 'gpu_check.md'}", flush=True)
    if args.cpu_smoke and not args.serial:  # nothing is timed for real: every part at once
        runner.run(selected, side_by_side=True)
    else:
        runner.run([p for p in selected if not p.timing], side_by_side=not args.serial)
        runner.run([p for p in selected if p.timing], side_by_side=False)
    runner.write_report()
    runner.write_log()
    print("\n" + "\n".join(runner.summary_table()), flush=True)
    return 0 if all(r.status == "ok" for r in runner.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
