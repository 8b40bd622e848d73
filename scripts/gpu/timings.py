"""The timing parts of ``scripts/gpu_check.py``: seqmem against plain cuDNN per training step, one main-job trial end
to end against a plain loop, peak memory of truncated against full BPTT, and the diagnostics' in-run share. Each
runs alone on the machine (gpu_check.py runs them one after another).

They reuse the benchmark scripts' own pieces: benchmark_speed.py's two timed loops, benchmark_memory.py's two
training runs, benchmark_diagnostics.py's timed fit and its in-run Stopwatch.
"""

import argparse
import gc
import itertools
import math
import time
from functools import partial

import benchmark_diagnostics
import benchmark_memory
import benchmark_speed
import torch
from gpu.part import Context, Outcome, Part, fmt

from seqmem.cli import run_cli
from seqmem.tasks import CopyData

# ---- per training step, against cuDNN ----------------------------------------------------------------------------

SPEED_COLUMNS = ("T", "H", "precision", "cell", "baseline", "seqmem ms/step", "baseline ms/step", "ratio", "target")
SPEED_CELLS = ("vanilla", "gru", "lstm", "orthogonal")  # nn.RNN, nn.GRU, nn.LSTM; the orthogonal cell against nn.RNN
SMOKE_CELLS = ("lstm", "orthogonal")
BATCH = 128


def speed_row(ctx: Context, length: int, hidden: int, precision: str, cell: str, options: dict) -> float:
    """One row: seqmem and its baseline on the same batches; returns seqmem's ratio over its target."""
    args = argparse.Namespace(hidden=hidden, precision=precision, **options)
    # The copy task at delay T - 20 is T steps long; both sides read the same batches.
    data = CopyData(seq_len=length - 20, batch_size=BATCH, train_batches=args.warmup + args.steps + 2)
    ours = benchmark_speed.time_seqmem(cell, data, args)
    base = benchmark_speed.time_baseline(cell, data, args)
    module, module_args, target = benchmark_speed.CELLS[cell]
    baseline = module.__name__ + (f"({module_args['nonlinearity']})" if module_args else "")
    ratio = ours / base
    ctx.table.add(
        length, hidden, precision, cell, baseline, f"{ours:.3f}", f"{base:.3f}", f"{ratio:.3f}", f"≤ {target:.2f}"
    )
    ctx.say(f"T={length} H={hidden} {precision} {cell}: {ours:.2f} ms vs {base:.2f} ms ({ratio:.2f}x)")
    return ratio / target


def speed(ctx: Context) -> Outcome:
    lengths, sizes = ((30,), (16,)) if ctx.smoke else ((100, 1000), (128, 512, 1024))
    options = dict(embedding=32, warmup=2 if ctx.smoke else 5, steps=3 if ctx.smoke else 20)
    options |= dict(clock="cpu" if ctx.smoke else "cuda", accelerator=ctx.accelerator)
    cells = SMOKE_CELLS if ctx.smoke else SPEED_CELLS
    misses = []
    for length, hidden, precision, cell in itertools.product(lengths, sizes, ("32-true", "bf16-mixed"), cells):
        label = f"{cell} H={hidden} T={length} {precision}"
        over = ctx.attempt(label, partial(speed_row, ctx, length, hidden, precision, cell, options))
        if over is not None and over > 1:
            misses.append(label)
    clock = "process CPU time" if ctx.smoke else "CUDA events"
    ctx.table.note(
        f"Batch {BATCH}, copy task, embedding 32, Adam; median of {options['steps']} steps after {options['warmup']} "
        f"warm-up steps, {clock}; seqmem = SequenceModel under Trainer.fit with logging, checkpoints and diagnostics "
        "off (scripts/benchmarks/benchmark_speed.py), baseline = embedding + torch's module + head in a plain loop."
    )
    rows = len(ctx.table.rows)
    summary = f"{rows - len(misses)}/{rows} within target" + (f"; over: {', '.join(misses[:4])}" if misses else "")
    return Outcome(summary, None if ctx.smoke else not misses)


# ---- one main-job trial end to end ------------------------------------------------------------------------------

TRIAL_COLUMNS = ("config", "cell", "steps", "seqmem fit s", "plain loop s", "ratio", "seqmem ms/step", "plain ms/step")


def warm_up_device(ctx: Context) -> None:
    """The first CUDA call of a process creates its context and cuDNN's handles: not part of either side."""
    if not ctx.smoke:
        lstm = torch.nn.LSTM(4, 4).cuda()
        lstm(torch.zeros(3, 2, 4, device="cuda"))[0].sum().backward()
        torch.cuda.synchronize()


def trial(ctx: Context) -> Outcome:
    warm_up_device(ctx)
    config = [
        "--config",
        "agreement",
        "--trainer.accelerator",
        ctx.accelerator,
        "--trainer.enable_progress_bar",
        "false",
    ]
    if ctx.smoke:
        config += "--trainer.max_steps 10 --trainer.val_check_interval 5 --data.val_batches 1".split()
    start = time.perf_counter()
    fitted = run_cli(["fit", *config, "--trainer.default_root_dir", str(ctx.folder("fit"))])
    ctx.sync()
    fit_s = time.perf_counter() - start
    steps = fitted.trainer.global_step
    ctx.say(f"seqmem fit: {steps} steps in {fit_s:.1f} s")

    # The same model (same config, same seed) in a plain loop: forward, loss, backward, clip, step, on batches
    # made and moved to the device beforehand.
    fresh = run_cli([*config, "--trainer.default_root_dir", str(ctx.folder("plain"))], run=False)
    model = fresh.model.to(ctx.device).train()
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    clip = fresh.trainer.gradient_clip_val
    loader = itertools.cycle(fresh.datamodule.train_dataloader())
    batches = [{k: batch[k].to(ctx.device) for k in ("x", "y")} for batch in itertools.islice(loader, steps)]
    ctx.sync()
    start = time.perf_counter()
    for batch in batches:
        loss = model.loss(model(batch["x"])[0], batch["y"])
        optimizer.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    ctx.sync()
    plain_s = time.perf_counter() - start
    cell = fresh.model.hparams.cell
    ratio = fit_s / plain_s
    ctx.table.add(
        "agreement",
        cell,
        steps,
        f"{fit_s:.2f}",
        f"{plain_s:.2f}",
        f"{ratio:.2f}",
        f"{1e3 * fit_s / steps:.2f}",
        f"{1e3 * plain_s / steps:.2f}",
    )
    ctx.table.note(
        "seqmem fit: the whole `seqmem fit --config agreement` in this process (CLI, Trainer, data generated on the "
        "fly, every diagnostic at its shipped interval, validation, checkpoints); plain loop: the training steps "
        "alone. Wall time."
    )
    return Outcome(f"{cell}, {steps} steps: fit {fit_s:.1f} s end to end, plain loop {plain_s:.1f} s ({ratio:.1f}x)")


# ---- peak memory, truncated against full BPTT ---------------------------------------------------------------------

MEMORY_COLUMNS = ("code", "BPTT", "T", "peak MiB", "peak MiB, longer T", "ratio", "target")


def peak_mib(ctx: Context, run, length: int, tbptt) -> float | None:
    """torch.cuda.max_memory_allocated of one training run, less what was allocated before it (None on the CPU)."""
    gc.collect()
    if ctx.smoke:
        run(length, tbptt, True)
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run(length, tbptt, True)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def memory(ctx: Context) -> Outcome:
    short, long = (60, 120) if ctx.smoke else benchmark_memory.LENGTHS
    met = True
    for kind, run in (("seqmem", benchmark_memory.run_seqmem), ("plain PyTorch", benchmark_memory.run_plain)):
        for tbptt in (benchmark_memory.K, None):
            peaks = [peak_mib(ctx, run, length, tbptt) for length in (short, long)]
            ratio = None if None in peaks else peaks[1] / peaks[0]
            target = f"≤ 1.10 from T = {short}" if tbptt else "grows with T"
            if tbptt and ratio is not None:
                met &= ratio <= 1.10
            mode = f"k = {tbptt}" if tbptt else "full"
            ctx.table.add(kind, mode, f"{short} → {long}", fmt(peaks[0], 4), fmt(peaks[1], 4), fmt(ratio), target)
            ctx.say(f"{kind} {mode}: {fmt(peaks[0])} → {fmt(peaks[1])} MiB")
    what = (
        "no CUDA: the runs only" if ctx.smoke else "torch.cuda.max_memory_allocated over the run, less what was there"
    )
    ctx.table.note(
        f"LSTM H = {benchmark_memory.HIDDEN}, batch {benchmark_memory.BATCH}, one stream of T steps ({what})."
    )
    return Outcome(
        "runs only (no CUDA)" if ctx.smoke else f"truncated BPTT flat within 1.10: {'yes' if met else 'NO'}",
        None if ctx.smoke else met,
    )


# ---- the diagnostics' in-run share -------------------------------------------------------------------------------

DIAGNOSTICS_COLUMNS = (
    "cell",
    "steps",
    "loop s (hooks synced)",
    "inside diagnostics s",
    "in-run share",
    "fit s, diagnostics on",
    "fit s, off",
    "ratio on / off",
    "target",
)


def diagnostics_row(ctx: Context, cell: str, steps: int, extra: tuple[str, ...]) -> float:
    """One cell: the in-run share (hooks synced on a GPU), then whole fits with and without the diagnostics."""
    sync = None if ctx.smoke else torch.cuda.synchronize
    if not ctx.smoke:
        benchmark_diagnostics.timed_fit("agreement", cell, 20, True, extra=extra)  # first-use kernel setup
    loop, inside = benchmark_diagnostics.timed_fit("agreement", cell, steps, True, extra=extra, sync=sync)
    share = inside / (loop - inside)
    on, _ = benchmark_diagnostics.timed_fit("agreement", cell, steps, True, extra=extra)
    off, _ = benchmark_diagnostics.timed_fit("agreement", cell, steps, False, extra=extra)
    ctx.table.add(
        cell,
        steps,
        f"{loop:.2f}",
        f"{inside:.3f}",
        f"{100 * share:.1f} %",
        f"{on:.2f}",
        f"{off:.2f}",
        f"{on / off:.3f}",
        "≤ 5 %",
    )
    ctx.say(f"{cell}: {100 * share:.1f} % in-run, on/off {on / off:.3f}")
    return share


def diagnostics(ctx: Context) -> Outcome:
    steps = 10 if ctx.smoke else 2000  # at 2,000 steps every probe runs at its shipped rate (benchmark_diagnostics.py)
    cells = ("vanilla",) if ctx.smoke else ("vanilla", "lstm")  # the cheapest step (the largest share), and the LSTM
    extra = ("--trainer.accelerator", ctx.accelerator, "--trainer.default_root_dir", str(ctx.work / "logs"))
    shares = [ctx.attempt(cell, partial(diagnostics_row, ctx, cell, steps, extra)) for cell in cells]
    ctx.table.note(
        "agreement.yaml, every diagnostic of defaults.yaml at its shipped interval. In-run share: the time inside the "
        "diagnostics' hooks over the rest of the same fit (on a GPU each hook is bracketed by synchronisations, so it "
        "holds the device work it launched); on / off: whole fits, wall time."
    )
    worst = max((share for share in shares if share is not None), default=math.nan)
    return Outcome(f"in-run share at most {100 * worst:.1f} % (target 5 %)", None if ctx.smoke else worst <= 0.05)


PARTS = [
    Part(
        name="speed",
        title="Training-step speed against cuDNN",
        target="seqmem ≤ 1.10× cuDNN per step (orthogonal ≤ 1.30×)",
        columns=SPEED_COLUMNS,
        run=speed,
        budget_s=150,
        smoke_budget_s=90,
        timing=True,
    ),
    Part(
        name="trial",
        title="One main-job trial end to end",
        target="none: what the whole stack adds",
        columns=TRIAL_COLUMNS,
        run=trial,
        budget_s=45,
        smoke_budget_s=60,
        timing=True,
    ),
    Part(
        name="memory",
        title="Peak memory, truncated against full BPTT",
        target="k = 35 flat within 1.10",
        columns=MEMORY_COLUMNS,
        run=memory,
        budget_s=45,
        smoke_budget_s=60,
        timing=True,
    ),
    Part(
        name="diagnostics",
        title="The diagnostics' in-run share",
        target="≤ 5 % in-run",
        columns=DIAGNOSTICS_COLUMNS,
        run=diagnostics,
        budget_s=90,
        smoke_budget_s=60,
        timing=True,
    ),
]
