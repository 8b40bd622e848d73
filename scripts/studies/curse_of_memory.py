"""The curse of memory on the LRU: how the gradient of λ's parameters grows as abs(λ) → 1, with and without γ.

One-layer LRU on a fixed batch of the adding task (T = 200), at initialisation, its eigenvalues on a narrow ring
r_min = r_max = r (so abs(λ) = r for every unit), for r in --radii, with the input normalisation
γ = sqrt(1 − abs(λ)²) on and off. Per setting: the gradient norms GradientNorms logs, ``grad_norm/layer0/nu_log``
and ``grad_norm/layer0/theta_log``, and the rest of the layer (every other ``grad_norm/layer0/*`` tag, in
quadrature), averaged over --seeds (each seed sets the initial weights; the batch is the same). Beside them the
prediction for the unnormalised recurrence (Zucchet & Orvieto 2024): the state's sensitivity to λ grows like
(1 − abs(λ)²)^(−3/2), drawn scaled to meet the unnormalised θ curve at the smallest r.

    PYTHONPATH=. .venv/bin/python scripts/studies/curse_of_memory.py

Writes curse_of_memory.png (log-log, gradient norm against 1/(1 − abs(λ))) and curse_of_memory.md (the numbers)
to --out (default scripts/out/).
"""

import argparse
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")  # headless: the figure goes to a file only
import matplotlib.pyplot as plt
import torch

from seqmem.callbacks.grad_norms import parameter_tags
from seqmem.measures import gradient_norms
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData

RADII = (0.5, 0.9, 0.99, 0.999, 0.9999)
NU, THETA = "grad_norm/layer0/nu_log", "grad_norm/layer0/theta_log"
OUT = Path(__file__).resolve().parents[1] / "out"


def measure(
    radius: float, normalized: bool, seed: int, x: torch.Tensor, y: torch.Tensor, hidden: int
) -> dict[str, float]:
    """Gradient norms of ν, θ and the rest of layer 0 of a fresh one-layer LRU with abs(λ) = radius, at init.

    Args:
        radius: r_min = r_max: every unit's abs(λ).
        normalized: the LRU's input normalisation γ on or off.
        seed: seed of the initial weights.
        x: (B, T, 2) the adding task's inputs.
        y: (B,) its targets.
        hidden: the model width H (and N, the complex units).

    Returns:
        {"nu": ..., "theta": ..., "rest": ...}: the ``grad_norm/layer0/nu_log`` and ``theta_log`` tags and the
        other ``grad_norm/layer0/*`` tags in quadrature.
    """
    spec = AddingData().spec
    L.seed_everything(seed, verbose=False)
    model = SequenceModel(
        spec, cell="lru", hidden_size=hidden, r_min=radius, r_max=radius, input_normalization=normalized
    )
    model.loss(model(x)[0], y).backward()
    norms = {tag: norm.item() for tag, norm in gradient_norms(parameter_tags(model)).items()}
    rest = [v for tag, v in norms.items() if tag.startswith("grad_norm/layer0/") and tag not in (NU, THETA)]
    return {"nu": norms[NU], "theta": norms[THETA], "rest": sum(v * v for v in rest) ** 0.5}


def sweep(radii: list[float], seeds: list[int], x: torch.Tensor, y: torch.Tensor, hidden: int) -> dict:
    """{(normalized, r): {"nu", "theta", "rest"}} averaged over the seeds."""
    results = {}
    for normalized in (False, True):
        for radius in radii:
            runs = [measure(radius, normalized, seed, x, y, hidden) for seed in seeds]
            results[normalized, radius] = {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}
    return results


def prediction(radii: list[float], anchor: float) -> list[float]:
    """(1 − r²)^(−3/2), scaled to equal ``anchor`` at the first radius."""
    shape = [(1 - r * r) ** -1.5 for r in radii]
    return [anchor * s / shape[0] for s in shape]


def plot(results: dict, radii: list[float], seq_len: int, path: Path) -> None:
    """Log-log: gradient norm against 1/(1 − r); ν, θ and the rest with γ (solid) and without (dashed); a grey line
    at 1/(1 − r) = T, past which the memory outlasts the sequence."""
    memory = [1 / (1 - r) for r in radii]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for key, colour, label in (("nu", "C0", "ν (nu_log)"), ("theta", "C1", "θ (theta_log)"), ("rest", "C2", "rest")):
        for normalized, style in ((False, "--"), (True, "-")):
            values = [results[normalized, r][key] for r in radii]
            suffix = "with γ" if normalized else "without γ"
            ax.plot(memory, values, style, marker="o", color=colour, label=f"{label}, {suffix}")
    predicted = prediction(radii, results[False, radii[0]]["theta"])
    ax.plot(memory, predicted, ":", color="black", label="(1 − r²)^(−3/2), met at the smallest r")
    ax.axvline(seq_len, color="grey", linewidth=1, label=f"1/(1 − r) = T = {seq_len}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("1 / (1 − |λ|)")
    ax.set_ylabel("gradient norm at initialisation (layer 0)")
    ax.set_title(f"Curse of memory: one-layer LRU at init, adding task T = {seq_len}, |λ| = r for every unit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict, radii: list[float]) -> str:
    """Markdown table: one row per r, the three norms with and without γ and the scaled prediction."""
    predicted = prediction(radii, results[False, radii[0]]["theta"])
    lines = [
        "| abs(λ) = r | 1/(1 − r) | ν without γ | ν with γ | θ without γ | θ with γ | rest without γ | rest with γ "
        "| prediction (1 − r²)^(−3/2) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, p in zip(radii, predicted, strict=True):
        off, on = results[False, r], results[True, r]
        lines.append(
            f"| {r:g} | {1 / (1 - r):.0f} | {off['nu']:.3g} | {on['nu']:.3g} | {off['theta']:.3g} | {on['theta']:.3g} "
            f"| {off['rest']:.3g} | {on['rest']:.3g} | {p:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for curse_of_memory.png and .md")
    parser.add_argument("--radii", type=float, nargs="+", default=list(RADII), help="ring radii r, ascending")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the initial weights")
    parser.add_argument("--seq-len", type=int, default=200, help="adding task length T")
    parser.add_argument("--batch", type=int, default=64, help="sequences in the fixed batch")
    parser.add_argument("--hidden", type=int, default=64, help="model width H (and complex units N)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = AddingData(seq_len=args.seq_len, batch_size=args.batch, train_batches=1, seed=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))  # the same batch for every setting and seed
    results = sweep(args.radii, args.seeds, batch["x"], batch["y"], args.hidden)

    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.radii, args.seq_len, args.out / "curse_of_memory.png")
    settings = (
        f"One-layer LRU (H = N = {args.hidden}) at initialisation, abs(λ) = r for every unit, on one fixed adding "
        f"batch (T = {args.seq_len}, {args.batch} sequences, data seed 0); gradient norms averaged over seeds "
        f"{', '.join(map(str, args.seeds))}. ν, θ: `{NU}`, `{THETA}`; rest: every other `grad_norm/layer0/*` tag in "
        "quadrature. Prediction: scaled to the θ-without-γ value at the smallest r.\n\n"
    )
    markdown = settings + table(results, args.radii)
    (args.out / "curse_of_memory.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out / 'curse_of_memory.png'} and {args.out / 'curse_of_memory.md'}")


if __name__ == "__main__":
    main()
