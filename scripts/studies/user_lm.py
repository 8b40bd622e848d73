"""Every seqmem diagnostic on a model seqmem did not write: a word-level LSTM language model written the usual
way (pytorch/examples word_language_model: seq-first nn.LSTM, ``init_hidden``, tied weights, ``log_softmax`` and
``nll_loss``, the hidden state carried from batch to batch), trained with a plain ``L.Trainer(callbacks=[...])``.

    PYTHONPATH=. .venv/bin/python scripts/studies/user_lm.py \
        --text ../shared/data/tinyshakespeare/input.txt --steps 1500

Logs every diagnostic to TensorBoard (lightning_logs/user_lm) and writes a figure (--out, default
scripts/out/user_lm.png): ‖dL_T/dh_t‖ (the loss of the window's last position, passed to TimestepGradients as
its ``loss_fn``) against the lag for both LSTM layers at initialisation and after training,
the gradient horizon and the horizon λ_1 predicts against training step, and the pre-clip gradient norm with the
fraction of steps clipped. The model class below knows nothing of seqmem.
"""

import argparse
from collections import Counter
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")  # headless: figures go to files only
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seqmem.callbacks import (
    ClippingEvents,
    GradientNorms,
    InputSensitivity,
    JacobianSpectrum,
    NonFiniteGuard,
    RecurrentSpectrum,
    TimestepGradients,
)
from seqmem.diagnose import timestep_gradients

OUT = Path(__file__).resolve().parents[1] / "out"


# ---- the user's model, as the word_language_model example writes it -------------------------------------------


class WordLM(L.LightningModule):
    def __init__(self, ntoken, ninp=128, nhid=128, nlayers=2, dropout=0.2, lr=20.0):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight  # tie weights
        self.nhid, self.nlayers, self.lr = nhid, nlayers, lr
        self.hidden = None
        self.init_weights()

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def training_step(self, batch, batch_idx):
        data, targets = batch
        if self.hidden is None or self.hidden[0].size(1) != data.size(1):
            self.hidden = self.init_hidden(data.size(1))
        self.hidden = tuple(h.detach() for h in self.hidden)  # starting each batch, detach the hidden state
        output, self.hidden = self(data, self.hidden)
        loss = F.nll_loss(output, targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Batches(Dataset):
    """bptt-long windows of the batchified corpus, in order: (data (bptt, B), targets (bptt·B,))."""

    def __init__(self, ids, bsz, bptt):
        nbatch = ids.size(0) // bsz
        self.data = ids[: nbatch * bsz].view(bsz, -1).t().contiguous()  # (N, B)
        self.bptt = bptt

    def __len__(self):
        return (self.data.size(0) - 1) // self.bptt

    def __getitem__(self, i):
        start = i * self.bptt
        return self.data[start : start + self.bptt], self.data[start + 1 : start + 1 + self.bptt].reshape(-1)


def corpus(path: Path, vocab: int) -> torch.Tensor:
    """Word ids of the text (an <eos> per line), the ``vocab`` commonest words kept, the rest <unk>."""
    words = [w for line in path.read_text(encoding="utf-8").splitlines() for w in line.split() + ["<eos>"]]
    kept = {w: i for i, (w, _) in enumerate(Counter(words).most_common(vocab - 1))}
    return torch.tensor([kept.get(w, vocab - 1) for w in words])


def diagnostics(every: int) -> list[L.Callback]:
    """seqmem's diagnostics, the probes every ``every`` steps; the per-timestep one on the last position's loss."""
    return [
        GradientNorms(),
        ClippingEvents(),
        RecurrentSpectrum(every_n_steps=every),
        TimestepGradients(every_n_steps=every, loss_fn=last_position_loss),
        InputSensitivity(every_n_steps=every),
        JacobianSpectrum(every_n_steps=every),
        NonFiniteGuard(),
    ]


# ---- the figure ------------------------------------------------------------------------------------------------


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def last_position_loss(model: WordLM, batch) -> torch.Tensor:
    """The loss of the window's last position alone, from a zero state: every dL/dh_t with t < T then comes
    through the recurrence (the training loss reads every position out, so its dL/dh_t is flat in t)."""
    data, targets = batch
    output, _ = model(data, model.init_hidden(data.size(1)))  # (T·B, V), seq-first: the last B rows are t = T
    return F.nll_loss(output[-data.size(1) :], targets[-data.size(1) :])


def figure(out: Path, initial: dict, trained: dict, logged: dict) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, color in (("layer0", "tab:blue"), ("layer1", "tab:orange")):
        for curves, style, when in ((initial, ":", "init"), (trained, "-", "trained")):
            curve = curves[f"rnn/{name}"]
            lags = torch.arange(len(curve) - 1, -1, -1)
            axes[0].semilogy(lags, (curve / curve[-1]).tolist(), style, color=color, label=f"{name}, {when}")
    axes[0].axhline(1e-3, color="grey", linestyle=":", linewidth=1)
    axes[0].set(xlabel="lag T − t", ylabel="‖dL_T/dh_t‖ / ‖dL_T/dh_T‖", title="gradient through time, last position")
    axes[0].legend(fontsize="small")
    for tag, label in (
        ("grad_time/rnn/layer0/horizon", "measured horizon, layer 0"),
        ("lyapunov/rnn/layer0/predicted_horizon", "predicted from λ_1, layer 0"),
        ("grad_time/rnn/layer1/horizon", "measured horizon, layer 1"),
        ("lyapunov/rnn/layer1/predicted_horizon", "predicted from λ_1, layer 1"),
    ):
        steps, values = zip(*logged[tag], strict=True)
        axes[1].plot(steps, values, marker="o", label=label)
    axes[1].set(xlabel="training step", ylabel="lag", title="gradient horizon (1e-3)")
    axes[1].legend(fontsize="small")
    steps, norms = zip(*logged["grad_norm/total"], strict=True)
    axes[2].semilogy(steps, norms, label="grad_norm/total (before clipping)")
    axes[2].set(xlabel="training step", ylabel="gradient norm", title="pre-clip norm and clipping")
    right = axes[2].twinx()
    steps, fraction = zip(*logged["clip/clipped_fraction"], strict=True)
    right.plot(steps, fraction, color="tab:red", label="clip/clipped_fraction")
    right.set(ylabel="fraction of steps clipped", ylim=(0, 1.05))
    axes[2].legend(loc="upper left", fontsize="small")
    right.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, required=True, help="a text file (e.g. Tiny Shakespeare's input.txt)")
    parser.add_argument("--vocab", type=int, default=5000, help="words kept (the rest are <unk>)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--every", type=int, default=250, help="probe every N steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and the dropout masks")
    parser.add_argument("--out", type=Path, default=OUT / "user_lm.png", help="PNG to write")
    parser.add_argument("--logs", type=Path, default=Path("lightning_logs") / "user_lm", help="TensorBoard folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(args.seed)
    ids = corpus(args.text, args.vocab)
    loader = DataLoader(Batches(ids, bsz=20, bptt=35), batch_size=None)  # pytorch/examples' sizes
    model = WordLM(args.vocab)
    probe = next(iter(loader))
    initial = timestep_gradients(model, probe, last_position_loss)
    trainer = L.Trainer(
        max_steps=args.steps,
        gradient_clip_val=0.25,
        callbacks=diagnostics(args.every),
        logger=TensorBoardLogger(str(args.logs), name="", version=""),
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    trained = timestep_gradients(model, probe, last_position_loss)
    logged = scalars(args.logs)
    figure(args.out, initial, trained, logged)
    last = {tag: logged[tag][-1][1] for tag in ("train_loss", "grad_time/rnn/layer0/horizon")}
    print(f"train_loss {last['train_loss']:.3f} (perplexity {torch.tensor(last['train_loss']).exp():.0f}), "
          f"layer-0 horizon {last['grad_time/rnn/layer0/horizon']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
