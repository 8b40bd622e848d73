"""Per-timestep diagnostics on ragged batches: a classifier that packs its batch (``pack_padded_sequence`` into
torch's nn.LSTM / nn.GRU / nn.RNN).

The reference unrolls each sequence on its own, over its true length, as a batch of one in float64 with torch's own
cell kernels (``torch.lstm_cell``, ``torch.gru_cell``, ``torch.rnn_tanh_cell``), and aggregates as the diagnostics
document: at lag k (counted from each sequence's own end) over the sequences that reach it.
"""

import copy
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from seqmem.callbacks import InputSensitivity, JacobianSpectrum, TimestepGradients
from seqmem.diagnose import Diagnostics, lyapunov_spectrum, timestep_gradients
from seqmem.errors import ConfigError, RaggedBatchError
from seqmem.measures import hidden_grad_norms, sensitivity_norms
from seqmem.views import view_of

LENGTHS = torch.tensor([4, 7, 1, 5, 7])  # unsorted, two of the longest, one of a single step
KINDS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
KERNELS = {"LSTM": torch.lstm_cell, "GRU": torch.gru_cell, "RNN": torch.rnn_tanh_cell}


class PackedClassifier(L.LightningModule):
    """Classifies each sequence from the recurrence's final states, its batch packed by length.

    Args:
        kind: LSTM, GRU or RNN (tanh).
        bidirectional: a bidirectional stack.
        packed: pack the batch (else the padded batch runs whole, its lengths ignored).
    """

    def __init__(self, kind: str = "LSTM", bidirectional: bool = False, packed: bool = True):
        super().__init__()
        self.rnn = KINDS[kind](3, 5, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(5 * (1 + bidirectional), 3)
        self.packed = packed

    def logits(self, h_n: Tensor) -> Tensor:
        """(L·D, B, H) final states -> (B, 3): the top layer's, both directions."""
        directions = 1 + self.rnn.bidirectional
        return self.head(torch.cat(list(h_n[-directions:]), dim=-1))

    def run(self, x: Tensor, lengths: Tensor):
        if self.packed:
            return self.rnn(pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False))
        return self.rnn(x)

    def training_step(self, batch, batch_idx=0):
        x, lengths, y = batch
        _, state = self.run(x, lengths)
        h_n = state[0] if isinstance(state, tuple) else state
        return F.cross_entropy(self.logits(h_n), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def ragged_batch(lengths: Tensor = LENGTHS, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), int(lengths.max()), 3, generator=g)  # (B, T, I), padded
    x = x * (torch.arange(x.shape[1]) < lengths[:, None])[..., None]  # zeros past each end, as a loader pads
    return x, lengths, torch.randint(0, 3, (len(lengths),), generator=g)


def unrolled(rnn: nn.RNNBase, x: Tensor) -> tuple[dict[int, list[Tensor]], Tensor]:
    """One sequence x (T, I) through ``rnn`` by torch's cell kernels: h_t of every layer index in its own step
    order (retain_grad), and h_n (L·D, 1, H)."""
    kernel, directions = KERNELS[rnn.mode if rnn.mode in KERNELS else "RNN"], 1 + rnn.bidirectional
    hiddens, finals, layer_input = {}, [], x[None]  # (1, T, I)
    for layer in range(rnn.num_layers):
        outputs = []
        for reverse in range(directions):
            suffix = f"_l{layer}{'_reverse' if reverse else ''}"
            weights = [getattr(rnn, f"{name}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h = c = x.new_zeros(1, rnn.hidden_size)
            steps = layer_input.flip(1) if reverse else layer_input
            own = []
            for x_t in steps.unbind(1):
                if rnn.mode == "LSTM":
                    h, c = kernel(x_t, (h, c), *weights)
                else:
                    h = kernel(x_t, h, *weights)
                h.retain_grad()
                own.append(h)
            hiddens[layer * directions + reverse] = own
            finals.append(h)
            out = torch.stack(own, dim=1)  # (1, T, H)
            outputs.append(out.flip(1) if reverse else out)
        layer_input = torch.cat(outputs, dim=-1)
    return hiddens, torch.stack(finals)


def lag_aggregate(per_sequence: list[Tensor], lengths: Tensor, scale: bool) -> Tensor:
    """Per-sequence squared norms, each (len_b,) indexed by lag from its end, -> (T,) curve, last entry lag 0:
    √(Σ over the n_k sequences reaching lag k, × B/n_k when ``scale`` else / n_k)."""
    length = int(lengths.max())
    curve = []
    for k in reversed(range(length)):
        reached = [s[k] for s in per_sequence if len(s) > k]
        total = sum(reached)
        curve.append((total * len(per_sequence) / len(reached) if scale else total / len(reached)).sqrt())
    return torch.stack(curve)


def reference_grad_norms(model: PackedClassifier, batch) -> Tensor:
    """(L·D, T) ‖dL/dh‖ by lag from each sequence's end, each sequence unrolled alone; L the batch mean of CE."""
    model = copy.deepcopy(model).double()
    x, lengths, y = batch
    per_layer = {}
    for b, length in enumerate(lengths.tolist()):
        hiddens, h_n = unrolled(model.rnn, x[b, :length].double())
        (F.cross_entropy(model.logits(h_n), y[b : b + 1]) / len(lengths)).backward()
        for index, own in hiddens.items():  # lag k is own step length - 1 - k
            per_layer.setdefault(index, []).append(torch.stack([h.grad.square().sum() for h in own]).flip(0))
    return torch.stack([lag_aggregate(per_layer[i], lengths, scale=True) for i in sorted(per_layer)])


def reference_sensitivity(model: PackedClassifier, batch, projections: int) -> Tensor:
    """(D, T) RMS of vᵀ ∂h_final/∂x by lag from each sequence's end, with the measure's own projections v."""
    model = copy.deepcopy(model).double()
    x, lengths, _ = batch
    directions = 1 + model.rnn.bidirectional
    shape = (projections, len(lengths), model.rnn.hidden_size)
    v = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (P, B, H)
    rows = [[] for _ in range(directions)]
    for b, length in enumerate(lengths.tolist()):
        x_b = x[b, :length].double().requires_grad_()
        _, h_n = unrolled(model.rnn, x_b)
        for d in range(directions):
            final = h_n[len(h_n) - directions + d, 0]  # (H,)
            grads = torch.stack([torch.autograd.grad(u @ final, x_b, retain_graph=True)[0] for u in v[:, b]])
            squares = grads.square().sum(dim=-1).mean(dim=0)  # (len,) by position
            rows[d].append(squares if d else squares.flip(0))  # by lag: the reverse direction ends at position 0
    return torch.stack([lag_aggregate(row, lengths, scale=False) for row in rows])


CASES = [("LSTM", False), ("GRU", True), ("RNN", False), ("LSTM", True)]


@pytest.mark.parametrize("kind, bidirectional", CASES)
def test_the_stepped_packed_forward_is_the_fused_one(kind: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    model, batch = PackedClassifier(kind, bidirectional).eval(), ragged_batch()
    view = view_of(model)
    x, lengths, _ = batch
    for packed in (
        pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False),
        pack_padded_sequence(x[lengths.argsort(descending=True)], lengths.sort(descending=True).values, True),
    ):
        fused_out, fused_state = model.rnn(packed)
        with view.recurrences["rnn/"].intercept(lambda runs, x: None, leaf_inputs=False):
            out, state = model.rnn(packed)
        assert torch.equal(out.batch_sizes, fused_out.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            ours, torchs = getattr(out, name), getattr(fused_out, name)
            assert (ours is None and torchs is None) or torch.equal(ours, torchs)
        torch.testing.assert_close(out.data, fused_out.data, rtol=1e-5, atol=1e-6)
        for part, fused in zip(*((s if isinstance(s, tuple) else (s,)) for s in (state, fused_state)), strict=True):
            torch.testing.assert_close(part, fused, rtol=1e-5, atol=1e-6)  # h_n (and c_n) at each sequence's end
    loss, runs = view.runs(batch)
    torch.testing.assert_close(loss, model.training_step(batch), rtol=1e-6, atol=1e-7)
    assert view.ragged == {"rnn/"} and torch.equal(runs["rnn/"][0][0].lengths, lengths)


def test_a_sequence_first_projected_lstm_from_a_given_state_steps_as_it_runs_packed() -> None:
    torch.manual_seed(5)
    lstm = nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4)  # (T, B, I) inputs
    x, lengths, _ = ragged_batch()
    packed = pack_padded_sequence(x.transpose(0, 1), lengths, enforce_sorted=False)
    state = (torch.randn(4, 5, 4), torch.randn(4, 5, 6))  # (L·D, B, P), (L·D, B, H)
    fused_out, fused_state = lstm(packed, state)
    seen = []
    with view_of(nn.ModuleDict({"lstm": lstm})).recurrences["lstm/"].intercept(lambda r, x: seen.append(r), False):
        out, stepped_state = lstm(packed, state)
    torch.testing.assert_close(out.data, fused_out.data, rtol=1e-5, atol=1e-6)
    for part, fused in zip(stepped_state, fused_state, strict=True):
        torch.testing.assert_close(part, fused, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(run.lengths, lengths) for run in seen[0])


@pytest.mark.parametrize("kind, bidirectional", CASES)
def test_each_curve_is_the_per_sequence_unroll_aggregated_by_lag_from_each_end(kind: str, bidirectional: bool) -> None:
    torch.manual_seed(1)
    model, batch = PackedClassifier(kind, bidirectional).double().eval(), ragged_batch()
    batch = (batch[0].double(), *batch[1:])
    grads = hidden_grad_norms(view_of(model), batch)["rnn/"]  # (L·D, T)
    torch.testing.assert_close(grads, reference_grad_norms(model, batch), rtol=1e-9, atol=1e-12)
    rows = sensitivity_norms(view_of(model), batch, projections=3)["rnn/"]  # (D, T)
    torch.testing.assert_close(rows, reference_sensitivity(model, batch, projections=3), rtol=1e-9, atol=1e-12)


def test_a_packed_batch_of_equal_lengths_gives_the_padded_numbers_and_tags(tmp_path: Path) -> None:
    torch.manual_seed(2)
    packed = PackedClassifier("LSTM", bidirectional=True).eval()
    padded = copy.deepcopy(packed)
    padded.packed = False
    batch = ragged_batch(torch.full((5,), 6))
    for measure in (lambda m: hidden_grad_norms(view_of(m), batch), lambda m: sensitivity_norms(view_of(m), batch, 2)):
        assert torch.equal(measure(packed)["rnn/"], measure(padded)["rnn/"])
    measured = []
    for model in (packed, padded):
        probes = [TimestepGradients(lags=(1, 3)), InputSensitivity(lags=(1, 3))]
        for probe in probes:
            probe.attach(view_of(model))
        measured.append({tag: v for probe in probes for tag, v in probe.measure(0, batch).scalars.items()})
        assert probes[0].view.ragged == frozenset()
    assert measured[0].keys() == measured[1].keys()
    assert {"grad_time/rnn/layer1_reverse/horizon", "sensitivity/rnn/reverse/ratio_lag3"} <= measured[0].keys()
    assert all(torch.equal(measured[0][tag], measured[1][tag]) for tag in measured[0])


def test_the_lyapunov_exponents_of_a_ragged_batch_are_refused_in_one_line() -> None:
    model, batch = PackedClassifier("GRU").eval(), ragged_batch()
    with pytest.raises(RaggedBatchError) as refusal:
        lyapunov_spectrum(model, batch, lambda m, b: m.training_step(b), k=2)
    message = str(refusal.value)
    assert "\n" not in message
    assert message.startswith("the Lyapunov exponents of rnn are not measured on a ragged batch (a PackedSequence")


def test_a_packed_layer_called_twice_by_the_probe_loss_is_refused_in_one_line() -> None:
    model, batch = PackedClassifier("GRU").eval(), ragged_batch()
    with pytest.raises(ConfigError) as refusal:
        hidden_grad_norms(view_of(model, lambda m, b: m.training_step(b) + m.training_step(b)), batch)
    assert str(refusal.value) == (
        "the per-timestep diagnostics measure a PackedSequence in one call of its layer, and this layer was called "
        "2 times on the probe batch: pack each probe batch into one call"
    )


def events(root: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(root), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_a_fit_on_packed_batches_writes_the_ragged_tags_and_leaves_the_spectrum_out(tmp_path: Path) -> None:
    torch.manual_seed(3)
    x, lengths, y = ragged_batch(torch.tensor([3, 7, 2, 5, 7, 6, 1, 4]))
    callbacks = [
        TimestepGradients(every_n_steps=1, lags=(1, 3)),
        InputSensitivity(every_n_steps=1, lags=(1, 3)),
        JacobianSpectrum(every_n_steps=1, k=2),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        log_every_n_steps=1,
        callbacks=callbacks,
        logger=TensorBoardLogger(str(tmp_path), name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = PackedClassifier("LSTM")
    with pytest.warns(UserWarning, match="JacobianSpectrum is left out: the Lyapunov exponents of rnn") as caught:
        trainer.fit(model, DataLoader(TensorDataset(x, lengths, y), batch_size=8))
    assert sum("JacobianSpectrum is left out" in str(w.message) for w in caught) == 1  # said once
    logged = events(tmp_path)
    scalars = set(logged.Tags()["scalars"])
    for key in ("final", "ratio_lag1", "ratio_lag3", "horizon"):
        assert {f"grad_time/rnn/layer0/{key}_ragged", f"sensitivity/rnn/{key}_ragged"} <= scalars
    assert not any(tag.startswith(("lyapunov/", "jacobian/")) for tag in scalars)
    assert not scalars & {"grad_time/rnn/layer0/horizon", "sensitivity/rnn/horizon"}
    assert {"grad_time/rnn/heatmap_ragged", "sensitivity/rnn/heatmap_ragged"} <= set(logged.Tags()["images"])
    (layout,) = logged.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    plotted = {title: {t for t in scalars if any(re.search(p, t) for p in pats)} for title, pats in charts.items()}
    assert plotted["gradient horizon"] == {"grad_time/rnn/layer0/horizon_ragged", "grad_time/rnn/layer1/horizon_ragged"}
    assert plotted["rnn/layer1 ratio at lags"] == {f"grad_time/rnn/layer1/ratio_lag{k}_ragged" for k in (1, 3)}
    assert plotted["final input"] == {"sensitivity/rnn/final_ragged"}


def test_a_plain_loop_with_a_packed_model_is_diagnosed(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model, batch = PackedClassifier("RNN"), ragged_batch()
    loss_fn = lambda m, b: m.training_step(b)  # noqa: E731
    writer = SummaryWriter(str(tmp_path))
    Diagnostics(model, loss_fn, writer).probe(batch, step=0)
    writer.flush()
    scalars = set(events(tmp_path).Tags()["scalars"])
    assert {"grad_time/rnn/layer1/horizon_ragged", "sensitivity/rnn/final_ragged"} <= scalars
    assert not any(tag.startswith("lyapunov/") for tag in scalars)
    curve = timestep_gradients(model, batch, loss_fn)["rnn/layer1"]  # (T,)
    reference = reference_grad_norms(model, (batch[0].double(), *batch[1:]))[1]
    torch.testing.assert_close(curve.double(), reference, rtol=1e-4, atol=1e-7)
