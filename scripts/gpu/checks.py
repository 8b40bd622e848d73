"""The correctness parts of ``scripts/gpu_check.py``: the suite's CUDA cases, no syncs on quiet steps, DDP with two
processes on the one GPU, and mixed precision. None of them times anything, so they may run side by side.

They reuse the suite's own instruments rather than copies of them: the quiet-step rule and the host-read detector
of ``tests/test_host_reads.py``, the DDP run of ``tests/test_ddp.py``.
"""

import math
import multiprocessing
import os
import socket
import subprocess
import sys
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from functools import partial
from pathlib import Path

import torch
from gpu.part import Context, Outcome, Part, fmt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmem.cli import run_cli
from seqmem.models import MODELS

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the suite's instruments below, and the conftest they import

from test_ddp import COPY, SaveRankWeights  # noqa: E402
from test_diagnostics import LIGHTNING_TAGS  # noqa: E402
from test_diagnostics_ddp import written_tags  # noqa: E402
from test_host_reads import MODES, SMALL, HostRead, HostReads, quiet_reads  # noqa: E402

# ---- the suite's CUDA cases ------------------------------------------------------------------------------------

SUITE_COLUMNS = ("selection", "passed", "failed", "errors", "skipped", "not collected", "pytest exit status")


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def junit_results(path: Path) -> dict[str, list[tuple[str, str]]]:
    """(test id, first line of its message) per outcome — passed, failed, error, skipped, not collected — of a
    pytest ``--junitxml`` report. A module that failed to import is a test case named after it with no class."""
    results: dict[str, list[tuple[str, str]]] = {k: [] for k in ("passed", "failed", "error", "skipped", "uncollected")}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}" if case.get("classname") else str(case.get("name"))
        found = {child.tag: child for child in case}
        outcome = next((tag for tag in ("failure", "error", "skipped") if tag in found), None)
        message = "" if outcome is None else first_line(found[outcome].get("message") or "")
        if outcome is None:
            results["passed"].append((test, ""))
        elif outcome == "error" and not case.get("classname"):
            # The module's import error is in the text, the message only says "collection failure".
            errors = [line for line in (found["error"].text or "").splitlines() if line.startswith("E ")]
            results["uncollected"].append((test, errors[-1][1:].strip() if errors else message))
        else:
            results[{"failure": "failed"}.get(outcome, outcome)].append((test, message))
    return results


def suite(ctx: Context) -> Outcome:
    # A smoke run takes one small file's device cases: the CPU ones pass and the CUDA ones skip, as they would
    # wherever no GPU is; on the GPU machine, every case of the device fixture (its ids hold "cuda").
    selection = ["tests/test_metrics.py", "-k", "cuda or cpu"] if ctx.smoke else ["tests", "-k", "cuda"]
    report = ctx.work / "junit.xml"
    command = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider"]
    # A test module whose imports are missing on the machine (tests/test_sweep.py without ray) is listed, not fatal.
    command += ["--continue-on-collection-errors", f"--junitxml={report}"]
    ctx.say(" ".join(command[2:]))
    done = subprocess.run(command, cwd=REPO, timeout=max(ctx.left() - 10, 1))
    results = junit_results(report)
    counts = {kind: len(cases) for kind, cases in results.items()}
    ctx.table.add(
        " ".join(selection),
        *(counts[k] for k in ("passed", "failed", "error", "skipped", "uncollected")),
        done.returncode,
    )
    for kind in ("failed", "error", "uncollected"):
        for test, message in results[kind][:10]:
            ctx.table.note(f"- {kind}: `{test}`: {message}")
    met = counts["failed"] == counts["error"] == 0 and counts["passed"] > 0 and (ctx.smoke or counts["skipped"] == 0)
    summary = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped"))
    if counts["uncollected"]:
        summary += (
            f", {counts['uncollected']} modules not collected ({', '.join(t for t, _ in results['uncollected'])})"
        )
    return Outcome(f"{summary} (pytest {' '.join(selection)})", met)


# ---- no syncs on quiet steps -----------------------------------------------------------------------------------

QUIET_COLUMNS = ("cell", "BPTT", "options", "host reads", "CUDA syncs", "first one", "expected")
FUSED_ADAM = ["--model.optimizer", "torch.optim.Adam", "--model.optimizer.fused", "true"]
CUDA_SYNC = "CUDA sync"  # HostRead.name of a synchronisation that CUDA's sync debug mode reported
SYNC_WARNING = "called a synchronizing CUDA operation"  # its text (c10/cuda/CUDAFunctions.cpp)


class CudaSyncs(HostReads):
    """HostReads, plus every synchronisation CUDA itself reports while recording: sync debug mode "warn".

    Mode "error" would raise at the first sync of a logging step, which reads its counters on purpose; "warn"
    reports each one, tagged with its batch here, and the same quiet-batch rule as on the CPU keeps the quiet ones.
    """

    def __enter__(self) -> "CudaSyncs":
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("always", message=SYNC_WARNING)  # every one, not once per place
        self._shown = warnings.showwarning
        warnings.showwarning = self._show
        torch.cuda.set_sync_debug_mode("warn")
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        torch.cuda.set_sync_debug_mode("default")
        self._warnings.__exit__(*exc)

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_WARNING not in str(message):
            return self._shown(message, category, filename, lineno, file, line)
        if self.recording:
            stack = [f for f in traceback.extract_stack()[:-1] if not f.filename.endswith("warnings.py")]
            self.reads.append(HostRead(CUDA_SYNC, self.batch, stack))


def quiet_cases(smoke: bool) -> list[tuple[str, str, str, list[str], bool]]:
    """(cell, BPTT mode, label, options, whether quiet steps must be free of syncs) of every row.

    On a GPU a non-fused, non-capturable optimizer keeps its step count on the host, and the non-finite guard then
    copies its skip flag to the host on every update (README: Non-finite guard): the rows use fused Adam, as the
    README advises; under bf16-mixed, where Lightning refuses to clip for a fused optimizer, copy.yaml's RMSprop
    made capturable (its step count on the device); the last row shows the documented cost of the shipped one.
    """
    cells = ["orthogonal"] if smoke else sorted(MODELS)
    cases = [(cell, mode, "fused Adam", FUSED_ADAM, True) for cell in cells for mode in sorted(MODES)]
    capturable = [] if smoke else ["--model.optimizer.capturable", "true"]  # a CPU optimizer cannot capture
    label = "RMSprop" + ("" if smoke else " capturable") + ", bf16-mixed"
    cases.append(("lstm", "tbptt", label, [*capturable, "--trainer.precision", "bf16-mixed"], True))
    if not smoke:
        cases.append(("lstm", "full", "RMSprop as copy.yaml ships it", [], False))
    return cases


def quiet_row(ctx: Context, cell: str, mode: str, label: str, options: list[str], must_be_quiet: bool) -> bool:
    """One row: the syncs on the quiet batches of a short fit; whether the row is as expected."""
    args = [*"--trainer.enable_progress_bar false --trainer.enable_model_summary false".split(), *SMALL]
    args += ["--model.cell", cell, *MODES[mode], *options, "--trainer.accelerator", ctx.accelerator]
    folder = ctx.folder(f"{cell}-{mode}-{len(ctx.table.rows)}")
    reads = quiet_reads(folder, args, HostReads() if ctx.smoke else CudaSyncs())
    syncs = sum(read.name == CUDA_SYNC for read in reads)
    places = Counter(f"{r.name} by {r.owner} at {Path(r.caller.filename).name}:{r.caller.lineno}" for r in reads)
    first = next(iter(places), "—")
    expected = "none" if must_be_quiet else "one flag copy per update on a GPU"
    ctx.table.add(cell, mode, label, len(reads) - syncs, "n/a (CPU)" if ctx.smoke else syncs, first, expected)
    if must_be_quiet and places:
        ctx.table.note(f"- {cell} {mode} {label}: " + "; ".join(f"{n}× {place}" for place, n in places.most_common(3)))
    ctx.say(f"{cell} {mode} {label}: {len(reads) - syncs} host reads, {syncs} CUDA syncs on quiet batches")
    return not must_be_quiet or not reads


def quiet_steps(ctx: Context) -> Outcome:
    rows = [
        ctx.attempt(f"{case[0]} {case[1]} {case[2]}", partial(quiet_row, ctx, *case)) for case in quiet_cases(ctx.smoke)
    ]
    detector = "the host-read detector (CPU)" if ctx.smoke else "torch.cuda sync debug mode and the host-read detector"
    ctx.table.note(f"Quiet batches: no logging step, no periodic diagnostic, no validation; recorded by {detector}.")
    clean = all(rows)
    return Outcome(f"quiet training steps {'free of' if clean else 'NOT free of'} host syncs", clean)


# ---- DDP: two processes on the one GPU ---------------------------------------------------------------------------

DDP_COLUMNS = (
    "backend",
    "processes on",
    "event files",
    "(tag, step) written",
    "diagnostic tags written twice",
    "differ from 1 process",
    "val/loss, 2 ranks",
    "val/loss, 1 process",
    "rel. diff",
    "ranks identical",
)
GLOO = '{"class_path": "lightning.pytorch.strategies.DDPStrategy", "init_args": {"process_group_backend": "gloo"}}'
DDP_STEPS = ["--trainer.max_steps", "8"]  # two epochs of 4 batches per rank (COPY: 8 batches), a validation after each


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scalars(version: Path) -> dict[str, dict[int, float]]:
    """Every scalar of one run folder as {tag: {step: value}}."""
    events = EventAccumulator(str(version), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def ddp_rank(rank: int, port: int, args: list[str]) -> None:
    """One rank: Lightning's manual multi-node launch, one "node" per process, both on this machine and GPU 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK=str(rank))
    run_cli(["fit", *args])


def ddp(ctx: Context) -> Outcome:
    # NCCL refuses two ranks on one device; gloo all-reduces CUDA tensors through the host.
    device = ["--trainer.accelerator", ctx.accelerator, "--trainer.devices", "1"]
    root, ranks = ctx.folder("ddp"), ctx.folder("ranks")
    saver = f'{{"class_path": "test_ddp.SaveRankWeights", "init_args": {{"dirpath": "{ranks}"}}}}'
    assert SaveRankWeights  # imported so that the ranks can build it by class path
    two = [*COPY, *DDP_STEPS, *device, "--trainer.num_nodes", "2", f"--trainer.strategy={GLOO}"]
    two += ["--trainer.default_root_dir", str(root), f"--trainer.callbacks+={saver}"]
    port, context = free_port(), multiprocessing.get_context(ctx.start_method)
    processes = [context.Process(target=ddp_rank, args=(rank, port, two)) for rank in (0, 1)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=max(ctx.left() - 20, 1))
    codes = [process.exitcode for process in processes]
    if codes != [0, 0]:
        for process in processes:
            process.kill()
        raise RuntimeError(f"a DDP rank failed (exit codes {codes}); its traceback is in the part's log")
    ctx.say("2 ranks done; the 1-process fit and evaluation")
    files, written = written_tags(root)
    # The reference: one process, the same 4 batches per epoch, so the same steps log, validate and end epochs.
    single = ctx.folder("single")
    run_cli(["fit", *COPY, *DDP_STEPS, *device, "--data.train_batches", "4", "--trainer.default_root_dir", str(single)])
    _, reference = written_tags(single)
    version = root / "lightning_logs" / "version_0"
    logged = scalars(version)["val/loss"]
    two_ranks = logged[max(logged)]
    checkpoint = version / "checkpoints" / "last.ckpt"
    evaluate = ["validate", *COPY, *device, "--trainer.default_root_dir", str(ctx.folder("validate"))]
    one = float(run_cli([*evaluate, "--ckpt_path", str(checkpoint)]).trainer.callback_metrics["val/loss"])
    rel = abs(two_ranks - one) / abs(one)
    rank0, rank1 = (torch.load(ranks / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    identical = rank0.keys() == rank1.keys() and all(torch.equal(v, rank1[k]) for k, v in rank0.items())
    # Lightning itself writes its `epoch` twice at an epoch's last step (with the train and the val metrics).
    twice = sorted(key for key, count in written.items() if count > 1 and key[0] not in LIGHTNING_TAGS)
    differ = sorted(key for key in set(written) | set(reference) if written[key] != reference[key])
    ctx.table.add(
        "gloo",
        "CPU" if ctx.smoke else "GPU 0 (both)",
        files,
        len(written),
        len(twice),
        len(differ),
        f"{two_ranks:.7g}",
        f"{one:.7g}",
        fmt(rel),
        "yes" if identical else "NO",
    )
    for name, keys in (("written twice", twice), ("differ from 1 process", differ)):
        if keys:
            ctx.table.note(
                f"- {name}: {', '.join(f'{tag}@{step} ({written[(tag, step)]}×)' for tag, step in keys[:8])}"
            )
    ctx.table.note(
        "copy, orthogonal cell, 8 steps, every diagnostic of defaults.yaml; written counts each (tag, step) over every "
        "event file; the 1-process run has the same epochs; val/loss: the last one logged against `seqmem validate` "
        "of the same checkpoint in one process."
    )
    met = files == 1 and not (twice or differ) and rel <= 1e-6 and identical
    return Outcome(
        f"{len(written)} (tag, step) pairs, {len(twice)} written twice, {len(differ)} differ from 1 process; "
        f"val/loss {two_ranks:.6g} vs {one:.6g} (rel. {rel:.1e}); ranks {'identical' if identical else 'DIFFER'}",
        met,
    )


# ---- mixed precision ----------------------------------------------------------------------------------------------

PRECISION_COLUMNS = (
    "cell",
    "precision",
    "grad_norm/total",
    "float32 grad_norm/total",
    "rel. diff",
    "families logged",
    "non-finite values",
)
MIXED = ("bf16-mixed", "16-mixed")
TOLERANCE = 0.01


def one_step(ctx: Context, cell: str, precision: str) -> dict[str, dict[int, float]]:
    """Every scalar of one optimizer step of ``cell`` on copy, every diagnostic of defaults.yaml measuring it."""
    root = ctx.folder(f"{cell}-{precision}")
    size = "--model.hidden_size 16 --data.seq_len 10 --data.batch_size 8"
    if not ctx.smoke:
        size = "--model.hidden_size 64 --data.seq_len 30 --data.batch_size 32"
    args = ["fit", "--config", "copy", "--model.cell", cell, *size.split(), "--trainer.precision", precision]
    args += ["--trainer.accelerator", ctx.accelerator, "--trainer.default_root_dir", str(root)]
    args += "--trainer.gradient_clip_val 1.0 --trainer.max_steps 1 --trainer.log_every_n_steps 1".split()
    args += "--trainer.limit_val_batches 0 --trainer.enable_checkpointing false".split()
    run_cli([*args, "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    return scalars(root / "lightning_logs" / "version_0")


def precision_rows(ctx: Context, cell: str) -> float:
    """Both mixed precisions of one cell against its float32 step; returns the larger relative difference."""
    reference = one_step(ctx, cell, "32-true")
    families = {tag.split("/")[0] for tag in reference}
    norm = reference["grad_norm/total"][0]
    worst = 0.0
    for mixed in MIXED:
        tags = one_step(ctx, cell, mixed)
        rel = abs(tags["grad_norm/total"][0] - norm) / norm
        logged = families & {tag.split("/")[0] for tag in tags}
        bad = sum(not math.isfinite(v) for values in tags.values() for v in values.values())
        label = f"{mixed} (a CPU runs it as bf16)" if ctx.smoke and mixed == "16-mixed" else mixed
        row = (fmt(tags["grad_norm/total"][0], 6), fmt(norm, 6), f"{100 * rel:.2f} %", f"{len(logged)}/{len(families)}")
        ctx.table.add(cell, label, *row, bad)
        # A missing family or a non-finite value fails the row whatever the norm says.
        worst = max(worst, rel if logged == families and not bad else math.inf)
        ctx.say(f"{cell} {mixed}: grad_norm/total {100 * rel:.2f} % from float32")
    return worst


def precision(ctx: Context) -> Outcome:
    # The float32 reference in full float32: TF32 would round cuDNN's and cuBLAS's operands to 10 bits.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    cells = ["lstm"] if ctx.smoke else sorted(MODELS)
    worst = max(
        (w for w in [ctx.attempt(c, partial(precision_rows, ctx, c)) for c in cells] if w is not None), default=0
    )
    ctx.table.note(
        "One step of copy, every diagnostic of defaults.yaml at step 0; families: tag prefixes the float32 run logs."
    )
    if math.isinf(worst):
        return Outcome("a diagnostic family missing or a non-finite value under mixed precision (see the notes)", False)
    return Outcome(
        f"grad_norm/total within {100 * worst:.2f} % of float32 (target {100 * TOLERANCE:.0f} %)", worst <= TOLERANCE
    )


PARTS = [
    Part(
        name="suite",
        title="The suite's CUDA cases",
        target="every CUDA case passes",
        columns=SUITE_COLUMNS,
        run=suite,
        budget_s=120,
        smoke_budget_s=90,
        timing=False,
    ),
    Part(
        name="quiet",
        title="No host syncs on quiet steps",
        target="no sync on a quiet step",
        columns=QUIET_COLUMNS,
        run=quiet_steps,
        budget_s=90,
        smoke_budget_s=90,
        timing=False,
    ),
    Part(
        name="ddp",
        title="DDP: two processes on one GPU",
        target="every tag once, val/loss of 1 process",
        columns=DDP_COLUMNS,
        run=ddp,
        budget_s=90,
        smoke_budget_s=90,
        timing=False,
    ),
    Part(
        name="precision",
        title="Mixed precision",
        target="grad norms within 1 % of float32",
        columns=PRECISION_COLUMNS,
        run=precision,
        budget_s=90,
        smoke_budget_s=90,
        timing=False,
    ),
]
