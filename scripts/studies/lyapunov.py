"""Does the top Lyapunov exponent of the step Jacobians predict how far back the gradient reaches? Per cell.

On the stretched agreement task (T = 50, subject 30 tokens before the verb), for every cell plus the LSTM
with forget bias 3 (one layer, same seed and probe batch): λ_1, the top finite-time Lyapunov exponent of
the step Jacobians J_t = ∂s_t/∂s_{t−1} along the probe trajectories; the gradient horizon it predicts
(the largest lag k with e^{λ_1 k} ≥ 1e-3); the measured gradient horizon (the largest lag with
‖dL_T/dh_{T−k}‖ / ‖dL_T/dh_T‖ ≥ 1e-3); and, for contrast, the spectral radius ρ(W_h), which ignores φ′
and the gates — at initialisation and every ``--every`` training steps.

    PYTHONPATH=. .venv/bin/python scripts/studies/lyapunov.py --steps 1000 --every 100

Writes lyapunov.png (three panels against training step: λ_1, predicted vs measured horizon, ρ(W_h))
and lyapunov.md (the values at initialisation and after training) to --out (default scripts/out/).
"""

import argparse
import time
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")  # headless: the figure goes to a file only
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from seqmem.measures import (
    gradient_horizon,
    layer_trajectories,
    lyapunov_exponents,
    predicted_horizon,
    probe_mode,
    spectral_summary,
    timestep_grad_norms,
)
from seqmem.models import MODELS
from seqmem.module import SequenceModel
from seqmem.tasks import AgreementData

T, DISTANCE, THRESHOLD = 50, 30, 1e-3
# Every cell at its default init, plus the LSTM with its forget gate opened wider (σ(3) ≈ 0.95 per step).
RUNS = {**{cell: {"cell": cell} for cell in MODELS}, "lstm, forget bias 3": {"cell": "lstm", "forget_bias": 3.0}}
# ρ(W_h) of the block that plays the vanilla W_h's role: the GRU's candidate n, the LSTM's cell input g.
RECURRENT_BLOCK = {"gru": "layer0/n", "lstm": "layer0/g"}
OUT = Path(__file__).resolve().parents[1] / "out"


def measure(model: SequenceModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """λ_1, predicted and measured gradient horizon and ρ(W_h) of the (single-layer) model on the probe batch."""
    with probe_mode(model):
        trajectory = layer_trajectories(model.net, model.embed(x).detach())[0]
        # k = 1: the first column of the QR frame never depends on the others, so λ_1 alone costs one tangent.
        lambda_1 = lyapunov_exponents(trajectory, k=1).mean()  # ()
        norms = timestep_grad_norms(model, x, y, loss="last")[0].detach()  # (T,)
    with torch.no_grad():
        block = model.net.recurrent_matrices()[RECURRENT_BLOCK.get(model.hparams.cell, "layer0")]  # (H, H)
        rho = spectral_summary(block)["radius"]
    return {
        "lambda_1": lambda_1.item(),
        "predicted": predicted_horizon(lambda_1, THRESHOLD, T).item(),
        "measured": gradient_horizon(norms, THRESHOLD).item(),
        "rho": rho.item(),
    }


class Recorder(L.Callback):
    """Measures the model on optimizer steps 0, every, 2·every, ... (before that step's update)."""

    def __init__(self, every: int, x: torch.Tensor, y: torch.Tensor):
        self.every, self.x, self.y = every, x, y
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.accuracy = float("nan")  # probe accuracy of the trained model, set after training

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: SequenceModel, batch: dict, batch_idx: int) -> None:
        if trainer.global_step % self.every == 0:
            self.rows.append((trainer.global_step, measure(pl_module, self.x, self.y)))


def accuracy(model: SequenceModel, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x)[0].argmax(-1) == y).float().mean().item()


def train_and_record(
    options: dict, data: AgreementData, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> Recorder:
    """Train one seeded model for ``args.steps`` steps, measuring every ``args.every`` and at the end."""
    L.seed_everything(args.seed, verbose=False)
    model = SequenceModel(
        data.spec, **options, hidden_size=args.hidden, embedding_size=32, gradient_clip_val=1.0,
        optimizer=lambda params: torch.optim.Adam(params, lr=args.lr),
    )  # fmt: skip
    recorder = Recorder(args.every, x, y)
    trainer = L.Trainer(
        max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[recorder],
    )  # fmt: skip
    trainer.fit(model, data)
    if recorder.rows[-1][0] != args.steps:
        recorder.rows.append((args.steps, measure(model, x, y)))  # the trained model
    recorder.accuracy = accuracy(model, x, y)
    return recorder


def plot(records: dict[str, Recorder], steps: int, path: Path) -> None:
    """Three panels against training step: λ_1, predicted (solid) vs measured (dashed) horizon, ρ(W_h)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for index, (name, record) in enumerate(records.items()):
        colour = f"C{index}"
        at = [s for s, _ in record.rows]
        values = {key: [row[key] for _, row in record.rows] for key in ("lambda_1", "predicted", "measured", "rho")}
        axes[0].plot(at, values["lambda_1"], marker="o", markersize=3, color=colour, label=name)
        axes[1].plot(at, values["predicted"], marker="o", markersize=3, color=colour)
        axes[1].plot(at, values["measured"], marker="x", markersize=4, color=colour, linestyle="--")
        axes[2].plot(at, values["rho"], marker="o", markersize=3, color=colour)
    axes[0].axhline(0.0, color="grey", linestyle=":", linewidth=1)
    axes[0].set_ylabel("λ_1 (mean ln growth per step)")
    axes[0].set_title("top Lyapunov exponent of the step Jacobians")
    axes[1].axhline(DISTANCE - 1, color="grey", linestyle=":", linewidth=1)  # the subject sits at lag 29
    axes[1].set_ylabel(f"gradient horizon (lags, threshold {THRESHOLD:g})")
    axes[1].set_title("horizon: predicted from λ_1 (solid) vs measured (dashed)")
    axes[1].set_ylim(-1, T)
    axes[2].axhline(1.0, color="grey", linestyle=":", linewidth=1)
    axes[2].set_ylabel("ρ(W_h) (GRU: block n, LSTM: block g)")
    axes[2].set_title("spectral radius of the recurrent matrix")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(records), frameon=False)
    fig.suptitle(
        f"Step-Jacobian spectrum vs gradient reach on agreement (T = {T}, subject–verb distance {DISTANCE}, "
        f"{steps} training steps; dotted line in the middle panel: the subject's lag)"
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend below the panels
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(records: dict[str, Recorder]) -> str:
    """Markdown table of the first and last measurement of every run."""
    header = (
        "| run | λ_1 init | λ_1 trained | predicted horizon init → trained | measured horizon init → trained "
        "| ρ(W_h) init → trained | probe acc |"
    )
    lines = [header, "|---|---:|---:|---|---|---|---:|"]
    for name, record in records.items():
        first, last = record.rows[0][1], record.rows[-1][1]
        lines.append(
            f"| {name} | {first['lambda_1']:.3f} | {last['lambda_1']:.3f} "
            f"| {first['predicted']} → {last['predicted']} | {first['measured']} → {last['measured']} "
            f"| {first['rho']:.2f} → {last['rho']:.2f} | {record.accuracy:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for lyapunov.png and lyapunov.md")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
    parser.add_argument("--every", type=int, default=100, help="measure every this many steps")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units")
    parser.add_argument("--probe", type=int, default=32, help="probe sequences (from a held-out batch)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (the shipped agreement config)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run's init and data")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned, so timings compare)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = AgreementData(min_len=T, max_len=T, distance=DISTANCE, batch_size=64, train_batches=args.steps)
    probe = data.val_dataloader().dataset[0]  # a held-out batch, the same for every run and step
    x, y = probe["x"][: args.probe], probe["y"][: args.probe]  # (P, 50), (P,)
    records = {}
    for name, options in RUNS.items():
        start = time.perf_counter()
        records[name] = train_and_record(options, data, x, y, args)
        last = records[name].rows[-1][1]
        print(f"[{name}] {args.steps} steps in {time.perf_counter() - start:.1f}s: λ_1 {last['lambda_1']:.3f}, "
              f"horizon predicted {last['predicted']} / measured {last['measured']}", flush=True)  # fmt: skip

    args.out.mkdir(parents=True, exist_ok=True)
    plot(records, args.steps, args.out / "lyapunov.png")
    markdown = table(records)
    (args.out / "lyapunov.md").write_text(markdown)
    print("\n" + markdown)
    print(f"wrote {args.out / 'lyapunov.png'} and {args.out / 'lyapunov.md'}")


if __name__ == "__main__":
    main()
