"""Gradient-flow diagnostics: per-timestep norms against an explicit autograd loop, closed forms of
the product-of-Jacobians law, clip counting, spectra, horizons, and the TensorBoard events of a fit."""

import copy
import csv
import io
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn
from torch.nn.utils import parametrize

from seqmem.callbacks import (
    ClippingEvents,
    GradientNorms,
    InputSensitivity,
    JacobianSpectrum,
    NonFiniteGuard,
    RecurrentSpectrum,
    TimestepGradients,
    parameter_tags,
    probe_loss,
)
from seqmem.measures import (
    gradient_horizon,
    gradient_norms,
    input_sensitivity,
    orthogonality_error,
    spectral_summary,
    timestep_grad_norms,
)
from seqmem.models import GRU, LSTM, MODELS
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData, CopyData, adding_problem, copy_memory
from seqmem.views import view_of

LIGHTNING_TAGS = {"train/loss", "epoch", "hp_metric"}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def events(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def steps(accumulator: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Scalars(tag)]


# ---- per-timestep gradients against an explicit autograd loop --------------------------------


def torch_cell(net: nn.Module, layer: int, input_size: int) -> nn.Module:
    """torch's own cell (RNNCell / GRUCell / LSTMCell) holding detached copies of one layer's weights."""
    w_in, w_h, b_in, b_h = (w.detach().clone() for w in net.layer_weights(layer)[:4])
    if isinstance(net, LSTM):
        cell = nn.LSTMCell(input_size, net.hidden_size)
    elif isinstance(net, GRU):
        cell = nn.GRUCell(input_size, net.hidden_size)
    else:  # vanilla, irnn and orthogonal (tanh) are Elman cells with the matching activation
        cell = nn.RNNCell(input_size, net.hidden_size, nonlinearity=getattr(net, "nonlinearity", "tanh"))
    cell.load_state_dict({"weight_ih": w_in, "weight_hh": w_h, "bias_ih": b_in, "bias_hh": b_h})
    return cell.double()


def explicit_hidden_grad_norms(model: SequenceModel, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """‖dL/dh_t‖ (L, T) from torch cells run step by step with ``retain_grad`` on every h_t."""
    net = model.net
    layer_input = model.embed(x).detach()  # (B, T, E)
    batch, length = x.shape[:2]
    hiddens = []
    for layer in range(net.num_layers):
        cell = torch_cell(net, layer, layer_input.shape[-1])
        h = torch.zeros(batch, net.hidden_size, dtype=torch.float64)
        c = torch.zeros_like(h)
        hs = []
        for t in range(length):
            if isinstance(net, LSTM):
                h, c = cell(layer_input[:, t], (h, c))
            else:
                h = cell(layer_input[:, t], h)
            h.retain_grad()
            hs.append(h)
        hiddens.append(hs)
        layer_input = torch.stack(hs, dim=1)  # (B, T, H)
    probe_loss(model, model.readout(layer_input), y, loss).backward()
    return torch.tensor([[h.grad.norm().item() for h in hs] for hs in hiddens], dtype=torch.float64)


@pytest.mark.parametrize("loss", ["last", "task"])
# torch's cells are the reference of the cells whose layer output is their state; the LRU's (a block around a
# diagonal recurrence) is its own float64 unroll, in tests/test_lru.py.
@pytest.mark.parametrize("cell", sorted(set(MODELS) - {"lru"}))
def test_timestep_grad_norms_match_explicit_autograd_loop(cell: str, loss: str, device: torch.device) -> None:
    # Copy reads out at every step, so "task" and "last" differ and both paths are exercised.
    torch.manual_seed(0)
    model = SequenceModel(CopyData(seq_len=6).spec, cell=cell, hidden_size=8, num_layers=2, embedding_size=5)
    model = model.double().eval()
    batch = copy_memory(4, 6, gen())
    expected = explicit_hidden_grad_norms(copy.deepcopy(model), batch["x"], batch["y"], loss)  # on the CPU
    model = model.to(device)
    norms = timestep_grad_norms(model, batch["x"].to(device), batch["y"].to(device), loss)  # (2, 26)
    assert all(p.grad is None for p in model.parameters()), "the probe must not write training gradients"
    assert norms.shape == (2, 26)
    torch.testing.assert_close(norms.cpu(), expected, rtol=1e-5, atol=0.0)


def test_probe_leaves_existing_training_gradients_untouched(device: torch.device) -> None:
    torch.manual_seed(0)
    model = SequenceModel(AddingData(seq_len=10).spec, cell="lstm", hidden_size=8).to(device)
    batch = {key: value.to(device) for key, value in adding_problem(4, 10, gen()).items()}
    model.loss(model(batch["x"])[0], batch["y"]).backward()
    before = [p.grad.clone() for p in model.parameters()]
    timestep_grad_norms(model, batch["x"], batch["y"])
    input_sensitivity(model, batch["x"], projections=2)
    for grad, p in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, grad, rtol=0, atol=0)


# ---- closed forms ------------------------------------------------------------------------------


def identity_step(weights, x_proj, state):
    """Elman step with the identity activation: h_t = W_h h_{t-1} + W_in x_t + b (a linear RNN)."""
    return (x_proj + F.linear(state[0], weights[1], weights[3]),)


def linear_model(cell: str, seq_len: int, w_h: torch.Tensor | None, monkeypatch, device: torch.device) -> SequenceModel:
    """A one-layer double model on ``device`` on the adding task (loss on h_T only) with the identity activation."""
    options = {"orthogonal_init": "random"} if cell == "orthogonal" else {}
    model = SequenceModel(AddingData(seq_len=seq_len).spec, cell=cell, hidden_size=6, **options)
    model = model.double().eval().to(device)
    monkeypatch.setattr(model.net, "step", identity_step)
    if w_h is not None:
        with torch.no_grad():
            model.net.layer_weights(0)[1].copy_(w_h)
    return model


@pytest.mark.parametrize("lam", [0.8, 1.1])
def test_linear_rnn_gradient_scales_as_lambda_to_the_lag(lam: float, monkeypatch, device: torch.device) -> None:
    torch.manual_seed(0)
    q = nn.init.orthogonal_(torch.empty(6, 6, dtype=torch.float64))
    model = linear_model("vanilla", 30, lam * q, monkeypatch, device)
    batch = adding_problem(5, 30, gen())
    norms = timestep_grad_norms(model, batch["x"].double().to(device), batch["y"].double().to(device))[0].cpu()
    lags = torch.arange(29, -1, -1, dtype=torch.float64)  # (T,)
    torch.testing.assert_close(norms / norms[-1], lam**lags, rtol=1e-6, atol=0.0)


def test_vanilla_tanh_with_w_07_identity_decays_as_07_pow_lag(device: torch.device) -> None:
    model = SequenceModel(AddingData(seq_len=40).spec, cell="vanilla", hidden_size=6).double().eval().to(device)
    w_in, w_h, b_in, b_h = model.net.layer_weights(0)
    with torch.no_grad():
        w_h.copy_(0.7 * torch.eye(6))
        w_in.mul_(1e-4)  # tiny inputs: tanh stays in its linear regime, tanh' ≈ 1
        b_in.zero_()
        b_h.zero_()
    batch = adding_problem(5, 40, gen())
    norms = timestep_grad_norms(model, batch["x"].double().to(device), batch["y"].double().to(device))[0]  # (T,)
    ratio = norms[-1 - 20] / norms[-1]
    assert ratio.item() == pytest.approx(0.7**20, rel=1e-3)  # ≈ 8e-4
    # 0.7^19 ≈ 1.1e-3 ≥ 1e-3 > 0.7^20: the horizon is lag 19.
    assert gradient_horizon(norms).item() == 19


def test_orthogonal_cell_with_identity_activation_preserves_the_gradient_norm(
    monkeypatch, device: torch.device
) -> None:
    torch.manual_seed(0)
    model = linear_model("orthogonal", 30, None, monkeypatch, device)
    batch = adding_problem(5, 30, gen())
    norms = timestep_grad_norms(model, batch["x"].double().to(device), batch["y"].double().to(device))[0].cpu()
    # Exact up to the float32 orthogonality of the stored base matrix (≈1e-7 per step).
    torch.testing.assert_close(norms / norms[-1], torch.ones(30, dtype=torch.float64), rtol=1e-5, atol=0.0)


def test_input_sensitivity_of_a_linear_rnn_is_lambda_to_the_lag_times_w_in(monkeypatch, device: torch.device) -> None:
    # h_T = Σ_ℓ (λQ)^{T-1-ℓ} W_in x_ℓ + ...: ‖∂h_T/∂x_ℓ‖_F = λ^{T-1-ℓ} ‖W_in‖_F exactly.
    torch.manual_seed(0)
    lam = 0.8
    q = nn.init.orthogonal_(torch.empty(6, 6, dtype=torch.float64))
    model = linear_model("vanilla", 8, lam * q, monkeypatch, device)
    x = adding_problem(4, 8, gen())["x"].double().to(device)
    estimate = input_sensitivity(model, x, projections=1000).cpu()  # (T,)
    exact = lam ** torch.arange(7, -1, -1, dtype=torch.float64) * model.net.layer_weights(0)[0].norm().cpu()
    torch.testing.assert_close(estimate, exact.detach(), rtol=0.05, atol=0.0)


# ---- horizon, spectra, clipping ----------------------------------------------------------------


def test_gradient_horizon_of_constructed_curves(device: torch.device) -> None:
    halving = 0.5 ** torch.arange(29, -1, -1.0)  # (30,) ratio 0.5^lag: 0.5^9 ≥ 1e-3 > 0.5^10
    spike = halving.clone()
    spike[29 - 15] = 2e-3  # a late bump at lag 15 still counts: the horizon is the *largest* lag
    dead_end = halving.clone()
    dead_end[-1] = 0.0  # no final gradient: nothing to be relative to
    curves = torch.stack([halving, spike, dead_end]).to(device)  # (3, 30)
    assert gradient_horizon(curves).tolist() == [9, 15, 0]
    assert gradient_horizon(halving.to(device), threshold=0.2).item() == 2
    assert gradient_horizon(torch.ones(30, device=device)).item() == 29


def test_spectral_summary_of_a_matrix_with_known_eigenvalues(device: torch.device) -> None:
    # Eigenvalues 1.25·e^{±iθ}, 0.5, −0.9, conjugated by a well-conditioned basis change.
    block = 1.25 * torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    diagonal = torch.block_diag(block, torch.diag(torch.tensor([0.5, -0.9])))
    basis = torch.eye(4) + 0.3 * torch.randn(4, 4, generator=gen())
    matrix = (basis @ diagonal @ torch.linalg.inv(basis)).to(device)
    assert spectral_summary(matrix)["radius"].item() == pytest.approx(1.25, rel=1e-4)
    # Singular values 3, 2, 0.5, 0.1 by construction.
    u, v = (nn.init.orthogonal_(torch.empty(4, 4)).to(device) for _ in range(2))
    summary = spectral_summary(u @ torch.diag(torch.tensor([3.0, 2.0, 0.5, 0.1], device=device)) @ v.T)
    assert summary["sigma_max"].item() == pytest.approx(3.0, rel=1e-5)
    assert summary["sigma_min"].item() == pytest.approx(0.1, rel=1e-4)
    assert orthogonality_error(u).item() == pytest.approx(0.0, abs=1e-5)
    assert orthogonality_error(2 * u).item() == pytest.approx(3 * math.sqrt(4), rel=1e-5)  # ‖4I − I‖_F


def stub_trainer(root: Path, log_every_n_steps: int) -> SimpleNamespace:
    """What the clipping callback reads from a Trainer, with a real TensorBoard logger."""
    return SimpleNamespace(
        global_step=0,
        log_every_n_steps=log_every_n_steps,
        is_global_zero=True,
        loggers=[TensorBoardLogger(str(root), name="", version="")],
    )


def run_clipping(
    root: Path, grads: list[torch.Tensor], clip: float, algorithm: str, log_every: int
) -> EventAccumulator:
    """Feed one known gradient per optimizer step to ClippingEvents and read its events back."""
    param = nn.Parameter(torch.zeros_like(grads[0]))
    optimizer = torch.optim.SGD([param], lr=0.1)
    trainer = stub_trainer(root, log_every)
    trainer.gradient_clip_val, trainer.gradient_clip_algorithm = clip, algorithm  # a Trainer's clipping
    callback = ClippingEvents()
    module = nn.Linear(1, 1)  # any model: the clipping in force is the Trainer's
    callback.setup(trainer, module, "fit")
    for step, grad in enumerate(grads):
        trainer.global_step = step
        param.grad = grad.clone()
        callback.on_before_optimizer_step(trainer, module, optimizer)
    trainer.loggers[0].experiment.flush()
    return events(root)


def test_norm_clipping_is_counted_on_every_step_and_read_on_logging_steps(tmp_path: Path, device: torch.device) -> None:
    # Gradients of norm 0.5, 2, 3, 0.1, 5 (a 3-4-5 direction scaled); clip at 1: steps 1, 2, 4 clip.
    norms = [0.5, 2.0, 3.0, 0.1, 5.0]
    grads = [n * torch.tensor([0.6, 0.8], device=device) for n in norms]
    acc = run_clipping(tmp_path, grads, clip=1.0, algorithm="norm", log_every=5)
    value = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    assert set(value) == {
        "clip/pre_norm",
        "clip/post_norm",
        "clip/clipped",
        "clip/clipped_steps",
        "clip/clipped_fraction",
    }
    assert all([e.step for e in events_] == [4] for events_ in value.values()), "only step 4 is a logging step"
    assert value["clip/pre_norm"][0].value == pytest.approx(5.0)
    assert value["clip/post_norm"][0].value == pytest.approx(1.0)
    assert value["clip/clipped"][0].value == 1.0
    assert value["clip/clipped_steps"][0].value == 3.0  # counted on the four unlogged steps too
    assert value["clip/clipped_fraction"][0].value == pytest.approx(3 / 5)


def test_value_clipping_counts_clipped_entries(tmp_path: Path, device: torch.device) -> None:
    grads = [torch.tensor([0.5, -2.0, 3.0, 0.1]).to(device), torch.tensor([0.2, 0.3, -0.4, 0.5]).to(device)]
    acc = run_clipping(tmp_path, grads, clip=1.0, algorithm="value", log_every=1)
    value = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert value["clip/entries_clipped"] == pytest.approx([2 / 4, 0.0])
    assert value["clip/entries_clipped_all"] == pytest.approx([2 / 4, 2 / 8])
    assert value["clip/clipped"] == [1.0, 0.0]
    assert value["clip/clipped_steps"] == [1.0, 1.0]
    assert value["clip/pre_norm"][0] == pytest.approx(math.sqrt(0.25 + 4 + 9 + 0.01), rel=1e-6)
    assert value["clip/post_norm"][0] == pytest.approx(math.sqrt(0.25 + 1 + 1 + 0.01), rel=1e-6)


# ---- a real fit, read back from TensorBoard ----------------------------------------------------


def all_diagnostics(every_n_steps: int) -> list[L.Callback]:
    return [
        GradientNorms(),
        ClippingEvents(),
        RecurrentSpectrum(every_n_steps=every_n_steps),
        TimestepGradients(every_n_steps=every_n_steps, probe_batch_size=8),
        InputSensitivity(every_n_steps=every_n_steps, probe_batch_size=8),
    ]


def fit(
    root: Path,
    callbacks: list[L.Callback],
    max_steps: int = 20,
    clip: float = 1e-3,
    devices: int = 1,
    log_every_n_steps: int = 5,
    accelerator: str = "cpu",
    logger: Any = True,
    **model,
) -> SequenceModel:
    """A short real fit on copy (T = 30) with a 2-layer model, logging every 5 steps under ``root``."""
    L.seed_everything(0)
    data = CopyData(seq_len=10, batch_size=16)
    module = SequenceModel(data.spec, hidden_size=12, num_layers=2, embedding_size=6, **model)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=max_steps,
        log_every_n_steps=log_every_n_steps,
        gradient_clip_val=clip,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(root),
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    return module


def expected_tags(logged: list[int], periodic: list[int]) -> dict[str, list[int]]:
    """Every tag of a 2-layer GRU fit on copy (T = 10 + 20 = 30): per-step tags at the ``logged``
    steps, spectra and probes at the ``periodic`` ones."""
    tags = {"grad_norm/total": logged, "grad_norm/embedding/weight": logged}
    tags |= {f"grad_norm/head/{p}": logged for p in ("weight", "bias")}
    tags |= {f"grad_norm/layer{l}/{p}": logged for l in (0, 1) for p in ("W_in", "W_h", "b_in", "b_h")}
    tags |= {f"clip/{k}": logged for k in ("pre_norm", "post_norm", "clipped", "clipped_steps", "clipped_fraction")}
    for l in (0, 1):
        tags |= {f"spectral/layer{l}/{g}/{k}": periodic for g in "rzn" for k in ("radius", "sigma_max", "sigma_min")}
        tags |= {f"grad_time/layer{l}/{k}": periodic for k in ("final", "ratio_lag1", "ratio_lag10", "horizon")}
    tags |= {f"sensitivity/{k}": periodic for k in ("final", "ratio_lag1", "ratio_lag10", "horizon")}
    return tags  # lags 30 and 100 are not < T = 30, so they are left out


def test_fit_writes_every_tag_at_the_expected_steps(tmp_path: Path, device: torch.device) -> None:
    # On CUDA too: the same tags at the same steps, the same measurement order (pre-clip).
    fit(tmp_path, all_diagnostics(10), cell="gru", accelerator=device.type)
    acc = events(tmp_path / "lightning_logs" / "version_0")
    expected = expected_tags(logged=[4, 9, 14, 19], periodic=[0, 10])
    assert set(acc.Tags()["scalars"]) - LIGHTNING_TAGS == set(expected)
    for tag, tag_steps in expected.items():
        assert steps(acc, tag) == tag_steps, tag
    assert steps(acc, "train/loss") == [4, 9, 14, 19], "per-step diagnostics share train/loss's x-axis"
    for image in ("grad_time/heatmap", "sensitivity/heatmap"):
        assert [e.step for e in acc.Images(image)] == [0, 10]
    # Figures with axes and a colour bar: 7 × (1.6 + 0.35 per row) inches at 80 dpi, one row per layer.
    assert {(e.width, e.height) for e in acc.Images("grad_time/heatmap")} == {(560, 184)}
    assert {(e.width, e.height) for e in acc.Images("sensitivity/heatmap")} == {(560, 156)}

    at = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in expected}
    # Measured before clipping (clip 1e-3 clips every step), and the per-parameter tags partition the total.
    assert all(at["clip/pre_norm"][s] == pytest.approx(at["grad_norm/total"][s]) for s in (4, 19))
    assert all(at["clip/pre_norm"][s] > 1e-3 and at["clip/post_norm"][s] == pytest.approx(1e-3) for s in (4, 19))
    assert at["clip/clipped_steps"][19] == 20 and at["clip/clipped_fraction"][19] == 1.0
    parts = [tag for tag in expected if tag.startswith("grad_norm/") and tag != "grad_norm/total"]
    assert math.sqrt(sum(at[tag][9] ** 2 for tag in parts)) == pytest.approx(at["grad_norm/total"][9], rel=1e-5)

    (layout_event,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
    assert {c.title for c in layout.category} == {"grad_norm", "clip", "spectral", "grad_time", "sensitivity"}
    # TensorBoard searches each regex in the tag names: anchored, a chart plots exactly its own tags.
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert all(p.startswith("^") and p.endswith("$") for patterns in charts.values() for p in patterns)
    logged = acc.Tags()["scalars"]
    plotted = {title: {t for t in logged if any(re.search(p, t) for p in pats)} for title, pats in charts.items()}
    assert plotted["fraction of steps clipped"] == {"clip/clipped", "clip/clipped_fraction"}
    assert plotted["steps clipped so far"] == {"clip/clipped_steps"}
    assert plotted["total"] == {"grad_norm/total"}
    assert plotted["layer1 spectral radius"] == {f"spectral/layer1/{gate}/radius" for gate in "rzn"}


def test_a_fit_writes_every_scalar_tag_to_csv_and_tensorboard_alike(tmp_path: Path) -> None:
    csv_logger, tensorboard = CSVLogger(str(tmp_path), name="csv"), TensorBoardLogger(str(tmp_path), name="tb")
    callbacks = [*all_diagnostics(every_n_steps=4), JacobianSpectrum(every_n_steps=4, probe_batch_size=4, k=2)]
    fit(tmp_path, callbacks, max_steps=10, logger=[csv_logger, tensorboard], cell="gru")
    accumulator = events(Path(tensorboard.log_dir))
    in_tensorboard = {
        tag: {event.step: event.value for event in accumulator.Scalars(tag)}
        for tag in accumulator.Tags()["scalars"]
        if tag not in LIGHTNING_TAGS
    }
    in_csv: dict[str, dict[int, float]] = {}
    with open(Path(csv_logger.log_dir) / "metrics.csv") as file:
        for row in csv.DictReader(file):
            for tag, value in row.items():
                if value and tag not in LIGHTNING_TAGS | {"step"}:
                    in_csv.setdefault(tag, {})[int(row["step"])] = float(value)
    expected = expected_tags(logged=[4, 9], periodic=[0, 4, 8])
    assert set(expected) <= set(in_tensorboard)
    assert any(tag.startswith("lyapunov/") for tag in in_tensorboard)
    assert set(in_csv) == set(in_tensorboard)
    for tag, values in in_tensorboard.items():
        # TensorBoard keeps float32; the CSV file keeps the float32 value read on the host, printed in full.
        assert {step: float(np.float32(value)) for step, value in in_csv[tag].items()} == values, tag
    # The images: TensorBoard's, and the same pixels as PNG files beside the CSV file.
    for tag in accumulator.Tags()["images"]:
        for event in accumulator.Images(tag):
            png = Path(csv_logger.log_dir, "images", *tag.split("/"), f"step_{event.step}.png")
            tensorboard_pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
            assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), tensorboard_pixels), (tag, event.step)


@pytest.mark.parametrize("cell", sorted(MODELS))
def test_every_trainable_parameter_has_a_tag_by_role(cell: str) -> None:
    model = SequenceModel(CopyData(seq_len=4).spec, cell=cell, hidden_size=4, num_layers=2, embedding_size=3)
    tags = parameter_tags(model)
    assert len(tags) == sum(p.requires_grad for p in model.parameters())
    groups = ("grad_norm/layer0/", "grad_norm/layer1/", "grad_norm/embedding/", "grad_norm/head/")
    assert all(tag.startswith(groups) for tag in tags), "no parameter falls back to its module path"
    roles = {tag.split("/")[2] for tag in tags if tag.startswith("grad_norm/layer")}
    # The orthogonal cell has one bias (b_h of its fused kernel is a constant zero); W_h's parameter is A_skew. The
    # LRU's layer0 also holds the input encoder; λ's parameters are ν and θ, complex B and C are real pairs.
    expected = {
        "orthogonal": {"W_in", "A_skew", "b_in"},
        "lru": {"W_enc", "b_enc", "norm_w", "norm_b", "nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re"}
        | {"C_im", "D", "W_glu", "b_glu"},
    }
    assert roles == expected.get(cell, {"W_in", "W_h", "b_in", "b_h"})


def test_orthogonal_w_h_tag_is_the_gradient_of_the_computed_matrix() -> None:
    torch.manual_seed(0)
    model = SequenceModel(CopyData(seq_len=6).spec, cell="orthogonal", hidden_size=8, num_layers=2, embedding_size=5)
    batch = copy_memory(4, 6, gen())

    def backward() -> dict[str, torch.Tensor]:
        model.loss(model(batch["x"])[0], batch["y"]).backward()
        return gradient_norms(parameter_tags(model), view_of(model).derived_tags())

    # Autograd's own dL/dW_h: with the parametrisation cached, every use of W_h in the forward is one tensor.
    with parametrize.cached():
        w_h = [model.net.recurrent[layer].weight for layer in (0, 1)]
        for w in w_h:
            w.retain_grad()
        norms = backward()
    for layer, w in enumerate(w_h):
        skew = model.net.recurrent[layer].parametrizations.weight.original
        assert norms[f"grad_norm/layer{layer}/W_h"].item() == pytest.approx(w.grad.norm().item(), rel=1e-6)
        assert norms[f"grad_norm/layer{layer}/A_skew"].item() == pytest.approx(skew.grad.norm().item(), rel=1e-6)
        assert norms[f"grad_norm/layer{layer}/W_h"].item() != pytest.approx(skew.grad.norm().item(), rel=1e-3)
    # The total covers the parameters' gradients: the parameter tags add up to it, W_h (derived) stays outside.
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norms["grad_norm/total"].item() == pytest.approx(total.item(), rel=1e-6)
    parts = [v for tag, v in norms.items() if tag != "grad_norm/total" and not tag.endswith("/W_h")]
    assert math.hypot(*(v.item() for v in parts)) == pytest.approx(total.item(), rel=1e-5)
    # Accumulated over backward passes as .grad is (gradient accumulation), fresh after zero_grad.
    once = norms["grad_norm/layer0/W_h"].item()
    assert backward()["grad_norm/layer0/W_h"].item() == pytest.approx(2 * once, rel=1e-5)
    model.zero_grad()
    assert backward()["grad_norm/layer0/W_h"].item() == pytest.approx(once, rel=1e-5)


def test_orthogonal_w_h_tag_is_unscaled_under_fp16_loss_scaling(tmp_path: Path) -> None:
    # The W_h hook sees the loss-scaled gradient; Lightning unscales the parameters' before the diagnostics run.
    torch.manual_seed(0)
    model = SequenceModel(CopyData(seq_len=6).spec, cell="orthogonal", hidden_size=8, embedding_size=5)
    batch = copy_memory(4, 6, gen())
    model.loss(model(batch["x"])[0], batch["y"]).backward()
    true_norm = model.net.derived_gradients(0)["W_h"].norm().item()
    model.zero_grad()
    (1024.0 * model.loss(model(batch["x"])[0], batch["y"])).backward()
    trainer = stub_trainer(tmp_path, log_every_n_steps=1)
    trainer.precision_plugin = SimpleNamespace(scaler=SimpleNamespace(get_scale=lambda: 1024.0))
    callback = GradientNorms()
    callback.setup(trainer, model, "fit")
    callback.on_before_optimizer_step(trainer, model, torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.loggers[0].experiment.flush()
    (event,) = events(tmp_path).Scalars("grad_norm/layer0/W_h")
    assert event.value == pytest.approx(true_norm, rel=1e-5)


def test_orthogonal_fit_logs_its_distance_from_orthogonality(tmp_path: Path) -> None:
    fit(tmp_path, [RecurrentSpectrum(every_n_steps=10)], max_steps=11, cell="orthogonal")
    acc = events(tmp_path / "lightning_logs" / "version_0")
    for layer in (0, 1):
        errors = acc.Scalars(f"spectral/layer{layer}/orthogonality_error")
        assert [e.step for e in errors] == [0, 10] and all(e.value < 1e-4 for e in errors)
        assert all(e.value == pytest.approx(1.0, rel=1e-4) for e in acc.Scalars(f"spectral/layer{layer}/radius"))


def test_probes_do_not_change_training(tmp_path: Path) -> None:
    # Dropout between the layers: a probe that left the model in eval mode, consumed the global random
    # stream or wrote into .grad would change the trained weights.
    probes = [
        TimestepGradients(every_n_steps=1, probe_batch_size=4),
        InputSensitivity(every_n_steps=1, probe_batch_size=4),
    ]
    with_probes = fit(tmp_path / "on", probes, max_steps=6, cell="lstm", dropout=0.3)
    without = fit(tmp_path / "off", [], max_steps=6, cell="lstm", dropout=0.3)
    for a, b in zip(with_probes.parameters(), without.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert events(tmp_path / "on" / "lightning_logs" / "version_0").Scalars("grad_time/layer0/final")


def test_log_every_n_steps_0_silences_every_per_step_tag_but_not_the_periodic_ones(tmp_path: Path) -> None:
    # One rule for logging steps: 0 logs nothing per step (as in Lightning), for the guard too.
    fit(tmp_path, [*all_diagnostics(10), NonFiniteGuard()], max_steps=11, cell="lstm", log_every_n_steps=0)
    tags = set(events(tmp_path / "lightning_logs" / "version_0").Tags()["scalars"])
    assert not any(tag.startswith(("grad_norm/", "clip/", "nonfinite/", "train/")) for tag in tags), tags
    assert {"spectral/layer0/f/radius", "grad_time/layer0/horizon", "sensitivity/horizon"} <= tags


def test_the_step_total_norm_is_taken_once_per_step_and_afresh_for_new_gradients():
    from seqmem.callbacks.base import step_total_norm

    weights = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2))]
    optimizer = torch.optim.SGD(weights, lr=0.1)
    trainer = SimpleNamespace(global_step=7)
    assert step_total_norm(trainer, optimizer) is None  # no gradient yet
    weights[0].grad, weights[1].grad = torch.full((3,), 2.0), torch.full((2, 2), 1.0)
    first = step_total_norm(trainer, optimizer)
    assert first.item() == pytest.approx(math.sqrt(3 * 4 + 4 * 1))
    assert step_total_norm(trainer, optimizer) is first  # the guard and the clipping counters share one pass
    weights[1].grad = torch.zeros(2, 2)  # a gradient replaced within the step is measured afresh
    assert step_total_norm(trainer, optimizer).item() == pytest.approx(math.sqrt(12))
    trainer.global_step = 8
    weights[0].grad = None  # the next step: only the gradients the optimizer will apply
    assert step_total_norm(trainer, optimizer).item() == 0.0
