"""Truncated BPTT: equal to full BPTT when k >= T, no gradient across a boundary, state flows on uncut."""

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from seqmem.module import SequenceModel
from seqmem.tasks import AddingData, LMData, TaskSpec

CELLS = ["vanilla", "orthogonal", "gru", "lstm"]
# Float inputs and a loss at every step: the gradient reaching each input can be read directly.
PROBE = TaskSpec(name="probe", input_size=3, output_size=4, loss="ce", readout="all", baseline=0.0)
ADDING = AddingData(seq_len=12, batch_size=5).spec


def twin_models(cell: str, spec: TaskSpec, k: int, device: torch.device) -> tuple[SequenceModel, SequenceModel]:
    """A full-BPTT model and a truncated one holding the same weights, on ``device``."""
    torch.manual_seed(0)
    full = SequenceModel(spec, cell=cell, hidden_size=6, num_layers=2)
    cut = SequenceModel(spec, cell=cell, hidden_size=6, num_layers=2, tbptt_steps=k)
    cut.load_state_dict(full.state_dict())
    return full.to(device), cut.to(device)


def probe_batch(spec: TaskSpec, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs (a leaf that requires grad) and targets, drawn on the CPU and moved to ``device``."""
    torch.manual_seed(1)
    x = torch.randn(5, T, spec.input_size).to(device).requires_grad_()  # (B, T, I)
    y = torch.randint(0, spec.output_size, (5, T)) if spec.readout == "all" else torch.rand(5)  # (B, T) / (B,)
    return x, y.to(device)


@pytest.mark.parametrize("spec", [PROBE, ADDING], ids=["readout_all", "readout_last"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("k", [12, 50])
def test_k_at_least_T_gives_the_full_bptt_gradient(cell, spec, k, device):
    full, cut = twin_models(cell, spec, k, device)
    x, y = probe_batch(spec, 12, device)
    full.loss(full(x)[0], y).backward()
    updates = list(cut.tbptt_chunks(x, y))
    assert len(updates) == 1
    updates[0][0].backward()
    for (name, p), q in zip(full.named_parameters(), cut.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_no_gradient_crosses_a_chunk_boundary(cell, device):
    _, cut = twin_models(cell, PROBE, 4, device)
    x, y = probe_batch(PROBE, 10, device)
    starts = []
    for start, (loss, _) in zip(range(0, 10, 4), cut.tbptt_chunks(x, y), strict=True):
        (grad,) = torch.autograd.grad(loss, x)  # (B, T, I)
        per_step = grad.abs().sum(dim=(0, 2))  # (T,)
        end = min(start + 4, 10)
        assert torch.all(per_step[:start] == 0), f"gradient leaked before step {start}: {per_step}"
        assert torch.all(per_step[end:] == 0)  # causality: a loss never reaches a later input
        assert torch.all(per_step[start:end] > 0), f"every step inside the chunk is trained: {per_step}"
        starts.append(start)
    assert starts == [0, 4, 8]


@pytest.mark.parametrize("cell", CELLS)
def test_readout_last_trains_only_the_last_k_steps(cell, device):
    _, cut = twin_models(cell, ADDING, 5, device)
    x, y = probe_batch(ADDING, 12, device)
    (loss, _), *rest = cut.tbptt_chunks(x, y)
    assert rest == []  # one loss, one update per batch
    (grad,) = torch.autograd.grad(loss, x)  # (B, T, I)
    per_step = grad.abs().sum(dim=(0, 2))  # (T,)
    assert torch.all(per_step[:7] == 0) and torch.all(per_step[7:] > 0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("spec", [PROBE, ADDING], ids=["readout_all", "readout_last"])
def test_carried_state_equals_the_uncut_forward(cell, spec, device):
    full, cut = twin_models(cell, spec, 4, device)
    x, y = probe_batch(spec, 10, device)
    *_, (_, state) = cut.tbptt_chunks(x, y)
    _, expected = full(x)
    for got, want in zip(*(s if isinstance(s, tuple) else (s,) for s in (state, expected)), strict=True):
        torch.testing.assert_close(got, want)


def lm_text(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    generator = torch.Generator().manual_seed(0)
    path.write_text("".join(chr(97 + int(i)) for i in torch.randint(0, 6, (2000,), generator=generator)))
    return path


def test_lm_state_flows_across_batches_and_global_step_counts_chunks(tmp_path):
    """With a zero learning rate the weights stay put, so the state carried after two windows of a
    stateful stream must equal one uncut forward over both windows."""
    L.seed_everything(0, verbose=False)
    data = LMData(path=str(lm_text(tmp_path)), seq_len=10, batch_size=3, cache_dir=str(tmp_path / "cache"))
    model = SequenceModel(
        data.spec, cell="gru", hidden_size=8, tbptt_steps=4, optimizer=partial(torch.optim.SGD, lr=0.0)
    )
    trainer = L.Trainer(
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(model, data)
    assert trainer.global_step == 6  # 2 windows x 3 chunks (4 + 4 + 2 steps)
    streams = data.streams("train")  # (B, M)
    _, expected = model(streams[:, :20])  # the two windows, uncut
    torch.testing.assert_close(model.carried.get("train"), expected)


def test_clipping_applies_to_every_chunk_update(tmp_path):
    """SGD with lr 1 moves the weights by exactly the clipped gradient: its norm is the clip value."""
    L.seed_everything(0, verbose=False)
    data = AddingData(seq_len=30, batch_size=8, train_batches=4, val_batches=1)
    model = SequenceModel(
        data.spec,
        cell="vanilla",
        hidden_size=8,
        tbptt_steps=10,
        gradient_clip_val=1e-3,
        optimizer=partial(torch.optim.SGD, lr=1.0),
    )
    assert model.clip_settings() == (1e-3, "norm")
    pre_clip = []

    class PreClip(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            pre_clip.append(torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters()]))

    before = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[PreClip()],
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(model, data)
    moved = torch.nn.utils.get_total_norm([p.detach() - b for p, b in zip(model.parameters(), before, strict=True)])
    assert len(pre_clip) == 1 and pre_clip[0] > 1e-2  # the callback saw the gradient before clipping
    torch.testing.assert_close(moved, torch.tensor(1e-3), rtol=1e-4, atol=0)
