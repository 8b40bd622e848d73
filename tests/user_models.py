"""Models as their users write them — not adapted to seqmem — on which every seqmem diagnostic must work.

- ``WordLM``: the word-level language model of pytorch/examples (seq-first nn.LSTM with dropout, ``init_hidden``,
  tied encoder/decoder weights, ``log_softmax`` + ``nll_loss``, the hidden state carried across batches).
- ``Seq2Seq``: a bidirectional nn.GRU encoder and an nn.LSTMCell decoder stepped in a Python loop (teacher
  forcing, input feeding of the encoder's summary), as attention decoders are written.
- ``Tagger``: a stacked bidirectional batch-first nn.LSTM with ``proj_size``, a label per step.
- ``ReluRegressor``: an nn.RNN with ``nonlinearity="relu"``, read out at the last step.
- ``MGU``: a cell of one's own (the minimal gated unit, Zhou et al. 2016) written against seqmem's cell protocol.
"""

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from seqmem.models import RecurrentNet


class WordLM(L.LightningModule):
    def __init__(self, ntoken: int = 20, ninp: int = 8, nhid: int = 8, nlayers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight  # tied (Press & Wolf 2016): ninp == nhid
        self.nhid, self.nlayers, self.ntoken = nhid, nlayers, ntoken
        self.hidden = None

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output))
        return F.log_softmax(decoded.view(-1, self.ntoken), dim=1), hidden

    def training_step(self, batch, batch_idx):
        data, targets = batch[0].t(), batch[1].t()  # seq-first (T, B)
        if self.hidden is None:
            self.hidden = self.init_hidden(data.size(1))
        self.hidden = tuple(h.detach() for h in self.hidden)  # truncated BPTT across batches
        output, self.hidden = self(data, self.hidden)
        loss = F.nll_loss(output, targets.reshape(-1))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class Seq2Seq(L.LightningModule):
    def __init__(self, vocab: int = 12, emb: int = 6, hidden: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.encoder = nn.GRU(emb, hidden, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * hidden, hidden)
        self.decoder = nn.LSTMCell(emb + 2 * hidden, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, src, tgt_in):
        enc, _ = self.encoder(self.embed(src))  # (B, S, 2H)
        context = enc.mean(dim=1)  # (B, 2H)
        h = torch.tanh(self.bridge(context))
        c = torch.zeros_like(h)
        logits = []
        for t in range(tgt_in.size(1)):
            h, c = self.decoder(torch.cat([self.embed(tgt_in[:, t]), context], dim=1), (h, c))
            logits.append(self.out(h))
        return torch.stack(logits, dim=1)

    def training_step(self, batch, batch_idx):
        src, tgt = batch
        logits = self(src, tgt[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class Tagger(L.LightningModule):
    def __init__(self, features: int = 4, hidden: int = 6, proj: int = 3, tags: int = 5):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True, bidirectional=True, proj_size=proj)
        self.head = nn.Linear(2 * proj, tags)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out, _ = self.lstm(x)
        return F.cross_entropy(self.head(out).transpose(1, 2), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class ReluRegressor(L.LightningModule):
    def __init__(self, features: int = 3, hidden: int = 6):
        super().__init__()
        self.rnn = nn.RNN(features, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out, _ = self.rnn(x)
        return F.mse_loss(self.head(out[:, -1]).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-2)


class MGU(RecurrentNet):
    """Minimal gated unit: f = σ(W_f x + U_f h + b_f), n = tanh(W_n x + U_n (f ⊙ h) + b_n), h' = (1 − f) ⊙ h + f ⊙ n.

    Args:
        input_size: features per step.
        hidden_size: units per layer.
        num_layers: stacked layers.
        dropout: dropout between layers.
        forget_init: initial bias of the gate f.
    """

    gate_names = ("f", "n")

    def __init__(self, input_size, hidden_size, num_layers=1, dropout=0.0, forget_init: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.w_in = nn.ParameterList(nn.Parameter(torch.randn(2 * hidden_size, n) / n**0.5) for n in sizes)
        self.w_h = nn.ParameterList(
            nn.Parameter(torch.randn(2 * hidden_size, hidden_size) / hidden_size**0.5) for _ in sizes
        )
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(2 * hidden_size)) for _ in sizes)
        with torch.no_grad():
            for b in self.bias:
                b[:hidden_size] = forget_init

    def layer_weights(self, layer):
        return self.w_in[layer], self.w_h[layer], self.bias[layer], None

    def step(self, weights, x_proj, state):
        h = state[0]
        x_f, x_n = x_proj.chunk(2, dim=1)
        u_f, u_n = weights[1].chunk(2, dim=0)
        f = torch.sigmoid(x_f + h @ u_f.T)
        n = torch.tanh(x_n + (f * h) @ u_n.T)
        return ((1 - f) * h + f * n,)

    def layer_parameters(self, layer):
        return {"W_in": self.w_in[layer], "W_h": self.w_h[layer], "b": self.bias[layer]}


def loader(*tensors: Tensor, batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size)


def lm_data(ntoken: int = 20, batch: int = 4, length: int = 7, batches: int = 3, seed: int = 0) -> DataLoader:
    """Contiguous streams, batchified: row b of batch i continues row b of batch i − 1."""
    stream = torch.randint(0, ntoken, (batch * batches * length + 1,), generator=torch.Generator().manual_seed(seed))
    x, y = stream[:-1].view(batch, -1), stream[1:].view(batch, -1)  # (batch, batches*length)
    windows = [(x[:, i * length : (i + 1) * length], y[:, i * length : (i + 1) * length]) for i in range(batches)]
    return loader(torch.cat([w[0] for w in windows]), torch.cat([w[1] for w in windows]), batch_size=batch)


def seq2seq_data(vocab: int = 12, n: int = 8, src: int = 6, tgt: int = 5, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return loader(torch.randint(0, vocab, (n, src), generator=g), torch.randint(0, vocab, (n, tgt), generator=g))


def tagger_data(n: int = 8, length: int = 7, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return loader(torch.randn(n, length, 4, generator=g), torch.randint(0, 5, (n, length), generator=g))


def regression_data(n: int = 8, length: int = 9, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return loader(torch.rand(n, length, 3, generator=g), torch.rand(n, generator=g))


def final_loss_times_two(model, batch):
    """A probe loss given by import path: twice a SequenceModel's loss (its dL/dh_t are twice the default's)."""
    pred, _ = model(batch["x"])
    return 2 * model.loss(pred, batch["y"])
