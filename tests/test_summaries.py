"""The values the diagnostics log, not only their names: closed forms of the product-of-Jacobians law read back
from TensorBoard, spectra of non-normal matrices, per-parameter gradient norms, clipping counters, the writer."""

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from matplotlib import colormaps
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from seqmem.callbacks import (
    ClippingEvents,
    Diagnostic,
    GradientNorms,
    InputSensitivity,
    RecurrentSpectrum,
    TimestepGradients,
    parameter_tags,
    probe_loss,
)
from seqmem.diagnose import loggers_of
from seqmem.measures import (
    curve_summary,
    gradient_horizon,
    gradient_norms,
    input_sensitivity,
    orthogonality_error,
    params_with_grad,
    spectral_summary,
)
from seqmem.models import MODELS
from seqmem.module import SequenceModel
from seqmem.plots import NormHeatmap
from seqmem.tasks import AddingData, CopyData
from seqmem.views import view_of


def fit_one_step(model: SequenceModel, data, root: Path, *callbacks: L.Callback) -> None:
    """One quiet optimizer step on the CPU, logging every step to TensorBoard events in ``root``."""
    trainer = L.Trainer(
        max_steps=1,
        log_every_n_steps=1,
        logger=TensorBoardLogger(str(root), name="", version=""),
        callbacks=list(callbacks),
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, data)
    trainer.logger.experiment.flush()


def scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar tag of the event files under ``log_dir``: {tag: {step: value}}."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


# ---- curve_summary on a constructed curve -----------------------------------------------------------------


def summarise(prefix: str, curve: torch.Tensor, lags: tuple[int, ...], threshold: float) -> dict[str, torch.Tensor]:
    """The tags a curve diagnostic writes under ``prefix``."""
    return {f"{prefix}/{key}": value for key, value in curve_summary(curve, lags, threshold).items()}


@pytest.mark.parametrize("threshold, horizon", [(1e-3, 19), (0.2, 4)])
def test_summarise_gives_the_final_value_the_ratio_to_it_at_each_lag_and_the_horizon(threshold, horizon):
    # A curve 3·0.7^lag, lag 0 last: ratio_lag<k> = 0.7^k; 0.7^19 ≈ 1.1e-3 ≥ 1e-3 > 0.7^20, 0.7^4 ≥ 0.2 > 0.7^5.
    T = 40
    lags = torch.arange(T - 1, -1, -1, dtype=torch.float64)  # (T,) lag of each position
    curve = 3.0 * 0.7**lags
    values = summarise("p", curve, lags=(1, 10, 39, 40, 100), threshold=threshold)
    # Lags up to T - 1 (the first position) are logged; lags T and beyond do not exist.
    assert set(values) == {"p/final", "p/ratio_lag1", "p/ratio_lag10", "p/ratio_lag39", "p/horizon"}
    assert values["p/final"].item() == pytest.approx(3.0)
    for k in (1, 10, 39):
        assert values[f"p/ratio_lag{k}"].item() == pytest.approx(0.7**k, rel=1e-12), k
    assert values["p/horizon"].item() == horizon


def test_summarise_divides_by_the_final_value_not_the_first_or_the_largest():
    curve = torch.tensor([8.0, 1.0, 4.0, 2.0])  # lag 0 is 2
    values = summarise("p", curve, lags=(1, 2, 3), threshold=0.3)
    assert [values[f"p/ratio_lag{k}"].item() for k in (1, 2, 3)] == [2.0, 0.5, 4.0]
    assert values["p/horizon"].item() == 3  # the largest lag whose ratio reaches 0.3, not the first to fall below


def test_gradient_horizon_counts_a_ratio_equal_to_the_threshold():
    # 0.5 and 0.25 are exact in binary: ratio 0.5 at lag 1 meets a threshold of 0.5; 0.25 at lag 2 does not.
    assert gradient_horizon(torch.tensor([0.25, 0.5, 1.0]), threshold=0.5).item() == 1
    assert gradient_horizon(torch.tensor([[0.25, 0.5, 1.0], [1.0, 1.0, 0.0]]), threshold=0.25).tolist() == [2, 0]


def test_the_heatmap_colours_log_ratios_to_the_max_and_a_kept_figure_shows_only_the_latest_data():
    heatmap = NormHeatmap(decades=8.0, xlabel="t", ylabel="", quantity="q")
    first = heatmap.render(torch.tensor([[1.0, 1e-8]]))  # log10 ratios 0 and −8: the two ends of the scale
    assert first.shape == (156, 560, 3)
    # The axes span 60..444 px across and 28..116 px down (fixed margins): sample the middle of each column.
    viridis = colormaps["viridis"]
    for column, end in ((150, 1.0), (350, 0.0)):
        expected = torch.tensor(viridis(end)[:3], dtype=torch.float32) * 255
        assert torch.allclose(torch.tensor(first[72, column], dtype=torch.float32), expected, atol=2)
    other = heatmap.render(torch.tensor([[1e-8, 1.0]]))
    assert not np.array_equal(other, first)
    assert np.array_equal(heatmap.render(torch.tensor([[1.0, 1e-8]])), first)  # nothing of the last draw left
    assert heatmap.render(torch.ones(2, 5)).shape == (184, 560, 3)  # another shape: a figure of its own


def test_the_probe_loss_last_is_the_loss_at_the_final_step_alone():
    # Readout "all" (copy): "last" is L_T, the cross-entropy of the final step only; "task" is the training loss.
    torch.manual_seed(0)
    model = SequenceModel(CopyData(seq_len=3).spec, cell="gru", hidden_size=4)
    pred = torch.randn(4, 23, 9)  # (B, T, C)
    y = torch.randint(0, 9, (4, 23))  # (B, T)
    last = F.cross_entropy(pred[:, -1], y[:, -1])
    assert probe_loss(model, pred, y, "last").item() == pytest.approx(last.item(), rel=1e-6)
    assert probe_loss(model, pred, y, "task").item() == pytest.approx(
        F.cross_entropy(pred.reshape(-1, 9), y.reshape(-1)).item(), rel=1e-6
    )
    # Readout "last" (adding): the two coincide.
    adding = SequenceModel(AddingData(seq_len=3).spec, cell="gru", hidden_size=4)
    p, t = torch.randn(4), torch.randn(4)
    assert probe_loss(adding, p, t, "last").item() == probe_loss(adding, p, t, "task").item() == F.mse_loss(p, t).item()


# ---- closed forms through a real fit, read back from TensorBoard ---------------------------------------------

T, H, A, B = 40, 6, 0.5, 0.7  # sequence length, hidden units, W_h of layer 0 and of layer 1


def two_scales_model() -> SequenceModel:
    """A 2-layer tanh RNN on the adding task (loss on h_T) with W_h = A·I in layer 0 and B·I in layer 1, zero
    biases and tiny input weights: every tanh works in its linear regime (tanh' = 1 - O(1e-8))."""
    torch.manual_seed(0)
    model = SequenceModel(AddingData(seq_len=T).spec, cell="vanilla", hidden_size=H, num_layers=2)
    with torch.no_grad():
        for layer, scale in enumerate((A, B)):
            w_in, w_h, b_in, b_h = model.net.layer_weights(layer)
            w_h.copy_(scale * torch.eye(H))
            b_in.zero_()
            b_h.zero_()
        model.net.layer_weights(0)[0].mul_(1e-4)
    return model


def closed_form_ratios() -> dict[str, list[float]]:
    """Ratio to lag 0 at every lag k of the linearised network.

    Layer 1: dL/dh¹_{T−k} = g·B^k. Layer 0: the gradient climbs to layer 1 at some lag j ≤ k, so
    dL/dh⁰_{T−k} = Σ_j g·B^j·W¹·A^(k−j) = g·W¹·(B^(k+1) − A^(k+1)) / (B − A). The input sensitivity of h¹_T to
    x_{T−1−k} is the same sum times W¹·W_in⁰.
    """
    lags = range(T)
    return {"layer1": [B**k for k in lags], "layer0": [(B ** (k + 1) - A ** (k + 1)) / (B - A) for k in lags]}


def horizon_of(ratios: list[float], threshold: float = 1e-3) -> int:
    return max(k for k, r in enumerate(ratios) if r >= threshold)


def explicit_final_gradients(model: SequenceModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """‖dL/dh⁰_T‖ and ‖dL/dh¹_T‖ from the fused forward: the readout's gradient at the last output, and its
    way down through layer 1's last step (tanh' and W¹ written out)."""
    out, _ = model.net(x)  # (B, T, H) layer 1
    out.retain_grad()
    model.loss(model.head(out[:, -1]).squeeze(-1), y).backward()
    top = out.grad[:, -1]  # (B, H) dL/dh¹_T
    w1 = model.net.layer_weights(1)[0]  # (H, H) layer 1's input weights
    bottom = (top * (1 - out[:, -1] ** 2)) @ w1  # (B, H) dL/dh⁰_T
    return bottom.norm().item(), top.norm().item()


@pytest.fixture(scope="module")
def probed_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, SequenceModel, dict]:
    """One optimizer step of the two-scales model with both probes on step 0: logged scalars, the model as the
    probes saw it (before the update) and the probe batch."""
    root = tmp_path_factory.mktemp("probes")
    data = AddingData(seq_len=T, batch_size=16, train_batches=1, val_batches=1)
    model = two_scales_model()
    before = SequenceModel(data.spec, cell="vanilla", hidden_size=H, num_layers=2)
    before.load_state_dict(model.state_dict())
    lags = (1, 10, 30, 39, 40)
    fit_one_step(
        model,
        data,
        root,
        TimestepGradients(every_n_steps=1, probe_batch_size=8, lags=lags),
        InputSensitivity(every_n_steps=1, probe_batch_size=8, projections=500, lags=lags),
    )
    first = next(iter(data.train_dataloader()))
    probe = {key: first[key][:8] for key in ("x", "y")}  # the probe: the first rows of the first training batch
    return scalars(root), before, probe


def test_logged_gradient_ratios_and_horizons_follow_the_product_of_jacobians(probed_fit):
    logged, model, probe = probed_fit
    expected = closed_form_ratios()
    for layer in ("layer0", "layer1"):
        ratios = expected[layer]
        for k in (1, 10, 30, 39):
            got = logged[f"grad_time/{layer}/ratio_lag{k}"]
            assert list(got) == [0]
            assert got[0] == pytest.approx(ratios[k], rel=1e-4), (layer, k)
        assert f"grad_time/{layer}/ratio_lag40" not in logged  # no lag T in a sequence of T steps
        assert logged[f"grad_time/{layer}/horizon"][0] == horizon_of(ratios)
    assert (horizon_of(expected["layer0"]), horizon_of(expected["layer1"])) == (22, 19)  # the layers differ
    final0, final1 = explicit_final_gradients(model, probe["x"], probe["y"])
    assert logged["grad_time/layer0/final"][0] == pytest.approx(final0, rel=1e-4)
    assert logged["grad_time/layer1/final"][0] == pytest.approx(final1, rel=1e-4)


def test_logged_input_sensitivity_follows_the_product_of_jacobians(probed_fit):
    logged, model, _ = probed_fit
    ratios = closed_form_ratios()["layer0"]  # ∂h¹_T/∂x_{T−1−k} = ratio_k · W¹ W_in⁰
    for k in (1, 10, 30, 39):
        assert logged[f"sensitivity/ratio_lag{k}"][0] == pytest.approx(ratios[k], rel=1e-4), k
    assert "sensitivity/ratio_lag40" not in logged
    assert logged["sensitivity/horizon"][0] == horizon_of(ratios)
    # final: ‖∂h¹_T/∂x_{T−1}‖_F = ‖W¹ W_in⁰‖_F, estimated from 500 × 8 random projections (about 1 % noise).
    jacobian = model.net.layer_weights(1)[0] @ model.net.layer_weights(0)[0]  # (H, 2)
    assert logged["sensitivity/final"][0] == pytest.approx(jacobian.norm().item(), rel=0.05)


def test_input_sensitivity_is_the_rms_of_seeded_gaussian_projections_of_each_jacobian():
    """The estimator written out: v ~ N(0, I) of the state's dtype from a generator seeded ``seed``, drawn as one
    (P, B, H) tensor; for every sample b and position ℓ the full Jacobian ∂h_T/∂x_ℓ (an explicit autograd loop
    over the H state units); the root mean square of ‖v_pbᵀ J_bℓ‖ over projections and samples."""
    torch.manual_seed(0)
    model = SequenceModel(AddingData(seq_len=5).spec, cell="gru", hidden_size=3, num_layers=2).double().eval()
    x = torch.randn(2, 5, 2, dtype=torch.float64)  # (B, T, I)
    P = 4
    estimate = input_sensitivity(model, x, projections=P, seed=7)  # (T,)
    xs = x.clone().requires_grad_()
    h_final = model.net.forward_steps(xs)[2][-1][-1]  # (B, H)
    rows = [torch.autograd.grad(h_final[:, unit].sum(), xs, retain_graph=True)[0] for unit in range(3)]
    jacobian = torch.stack(rows, dim=1)  # (B, H, T, I): samples are independent, so the sum picks each one's own
    v = torch.randn((P, 2, 3), generator=torch.Generator().manual_seed(7), dtype=torch.float64)  # (P, B, H)
    projected = torch.einsum("pbh,bhti->pbti", v, jacobian)  # (P, B, T, I)
    expected = projected.square().sum(dim=-1).mean(dim=(0, 1)).sqrt()  # (T,)
    torch.testing.assert_close(estimate, expected, rtol=1e-12, atol=0)


# ---- spectra of non-normal matrices ------------------------------------------------------------------------


def two_by_two(matrix: torch.Tensor) -> dict[str, float]:
    """Spectral radius and singular values of a real 2×2 matrix in closed form: eigenvalues from the trace and
    determinant; σ_max² + σ_min² = ‖M‖_F², σ_max·σ_min = |det M|."""
    (p, q), (r, s) = matrix.tolist()
    trace, det = p + s, p * s - q * r
    disc = trace**2 - 4 * det
    radius = (abs(trace) + math.sqrt(disc)) / 2 if disc >= 0 else math.sqrt(det)
    frob2 = p**2 + q**2 + r**2 + s**2
    sigma_max = math.sqrt((frob2 + math.sqrt(frob2**2 - 4 * det**2)) / 2)
    return {"radius": radius, "sigma_max": sigma_max, "sigma_min": abs(det) / sigma_max}


# Non-normal blocks: the spectral radius is far below σ_max (an orthogonal matrix could not tell them apart).
BLOCKS = {
    "r": torch.tensor([[0.5, 3.0], [0.0, 0.5]]),  # radius 0.5, σ_max ≈ 3.08
    "z": torch.tensor([[-0.9, 0.0], [2.0, 0.2]]),  # radius 0.9 (a negative eigenvalue), σ_max ≈ 2.19
    "n": torch.tensor([[0.0, 1.5], [-0.6, 0.0]]),  # complex pair ±i·0.95, σ = 1.5 and 0.6
}


def test_spectral_summary_of_a_non_normal_matrix():
    summary = spectral_summary(BLOCKS["r"])
    assert summary["radius"].item() == pytest.approx(0.5, rel=1e-5)
    assert summary["sigma_max"].item() == pytest.approx(math.sqrt((9.5 + math.sqrt(90.0)) / 2), rel=1e-5)
    assert summary["sigma_min"].item() == pytest.approx(0.25 / summary["sigma_max"].item(), rel=1e-5)


def test_spectral_measures_stay_on_the_weights_device():
    # The meta device stands in for a GPU: every measure is computed where W_h lives, none on the CPU.
    w = torch.eye(3, device="meta")
    assert orthogonality_error(w).device.type == "meta"


def test_recurrent_spectrum_logs_each_gate_block_of_each_layer(tmp_path: Path):
    # A 2-layer GRU, hidden 2: W_h of layer l stacks the blocks r, z, n, scaled by l + 1 so that layers differ.
    model = SequenceModel(CopyData(seq_len=4).spec, cell="gru", hidden_size=2, num_layers=2)
    with torch.no_grad():
        for layer in range(2):
            model.net.layer_weights(layer)[1].copy_((layer + 1) * torch.cat(list(BLOCKS.values())))  # (3H, H)
    writer = SummaryWriter(str(tmp_path))
    spectrum = RecurrentSpectrum(every_n_steps=1)
    spectrum.attach(view_of(model))
    spectrum.write(loggers_of(writer), step=7)
    writer.flush()
    logged = scalars(tmp_path)
    expected = {
        f"spectral/layer{layer}/{gate}/{key}": (layer + 1) * value
        for layer in range(2)
        for gate, block in BLOCKS.items()
        for key, value in two_by_two(block).items()
    }
    assert set(logged) == set(expected)
    for tag, value in expected.items():
        assert list(logged[tag]) == [7]
        assert logged[tag][7] == pytest.approx(value, rel=1e-5), tag


def test_recurrent_spectrum_of_an_orthogonal_cell_logs_its_distance_from_orthogonality(tmp_path: Path):
    torch.manual_seed(0)
    model = SequenceModel(CopyData(seq_len=4).spec, cell="orthogonal", hidden_size=4, num_layers=2)
    writer = SummaryWriter(str(tmp_path))
    spectrum = RecurrentSpectrum(every_n_steps=1)
    spectrum.attach(view_of(model))
    spectrum.write(loggers_of(writer), step=0)
    writer.flush()
    logged = scalars(tmp_path)
    for layer in range(2):
        w = model.net.recurrent[layer].weight.detach()  # (H, H)
        assert logged[f"spectral/layer{layer}/orthogonality_error"][0] == pytest.approx(
            torch.linalg.matrix_norm(w.T @ w - torch.eye(4)).item(), abs=1e-6
        )
        for key in ("radius", "sigma_max", "sigma_min"):
            assert logged[f"spectral/layer{layer}/{key}"][0] == pytest.approx(1.0, rel=1e-5)


# ---- per-parameter gradient norms ----------------------------------------------------------------------------

ROLES = {"W_in": "weight_ih", "W_h": "weight_hh", "b_in": "bias_ih", "b_h": "bias_hh"}


@pytest.mark.parametrize("cell", ["vanilla", "irnn", "gru", "lstm"])
def test_parameter_tags_name_each_torch_weight_by_its_role(cell):
    model = SequenceModel(CopyData(seq_len=4).spec, cell=cell, hidden_size=3, num_layers=2)
    tags = parameter_tags(model)
    expected = {
        f"grad_norm/layer{layer}/{role}": getattr(model.net.rnn, f"{name}_l{layer}")
        for layer in range(2)
        for role, name in ROLES.items()
    }
    expected |= {
        "grad_norm/embedding/weight": model.embed.weight,
        "grad_norm/head/weight": model.head.weight,
        "grad_norm/head/bias": model.head.bias,
    }
    assert tags.keys() == expected.keys()
    assert all(tags[tag] is param for tag, param in expected.items())


@pytest.mark.parametrize("activation", ["tanh", "modrelu"])
def test_parameter_tags_of_the_orthogonal_cell(activation):
    model = SequenceModel(CopyData(seq_len=4).spec, cell="orthogonal", hidden_size=4, activation=activation)
    tags = parameter_tags(model)
    net = model.net
    assert tags["grad_norm/layer0/W_in"] is net.weight_ih[0]
    assert tags["grad_norm/layer0/A_skew"] is net.recurrent[0].parametrizations.weight.original  # the trained skew part
    assert tags["grad_norm/layer0/b_in"] is net.bias[0]
    assert ("grad_norm/layer0/b_modrelu" in tags) == (activation == "modrelu")
    if activation == "modrelu":
        assert tags["grad_norm/layer0/b_modrelu"] is net.modrelu_bias[0]
    assert len(tags) == len([p for p in model.parameters() if p.requires_grad])  # each trainable tensor once


def test_parameters_outside_the_known_groups_keep_their_path_and_frozen_ones_are_left_out():
    model = SequenceModel(AddingData(seq_len=4).spec, cell="gru", hidden_size=3)
    model.extra = nn.Module()
    model.extra.scale = nn.Parameter(torch.ones(2))  # a parameter of no known group
    model.net.rnn.bias_hh_l0.requires_grad_(False)
    tags = parameter_tags(model)
    assert tags["grad_norm/extra/scale"] is model.extra.scale
    assert "grad_norm/layer0/b_h" not in tags
    assert not any(tag.startswith("grad_norm/embedding/") for tag in tags)  # adding has no embedding


def test_gradient_norms_are_the_norm_of_each_gradient_and_of_all_of_them():
    a, b, c = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(3))
    a.grad = torch.tensor([3.0, 4.0])
    b.grad = torch.tensor([[1.0, 2.0], [2.0, 4.0]])  # norm 5
    values = gradient_norms({"x/a": a, "x/b": b, "x/c": c})  # c has no gradient: norm 0
    assert set(values) == {"x/a", "x/b", "x/c", "grad_norm/total"}
    assert [values[k].item() for k in ("x/a", "x/b", "x/c")] == pytest.approx([5.0, 5.0, 0.0])
    assert values["grad_norm/total"].item() == pytest.approx(math.sqrt(50.0))


def test_gradient_norms_stay_on_the_parameters_device():
    # The meta device stands in for a GPU: a parameter without a gradient counts as a zero on its own device.
    values = gradient_norms({"x/a": nn.Parameter(torch.zeros(2, device="meta"))})
    assert values["x/a"].device.type == "meta" and values["grad_norm/total"].device.type == "meta"


def test_gradient_norms_callback_logs_the_gradient_of_each_role(tmp_path: Path):
    """The logged per-role norms are those of the gradients the optimizer applies (lr 0: every step sees the
    same weights, so the gradient of the first batch is recomputed here by hand)."""
    L.seed_everything(0, verbose=False)
    data = AddingData(seq_len=5, batch_size=4, train_batches=2, val_batches=1)
    model = SequenceModel(data.spec, cell="lstm", hidden_size=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    fit_one_step(model, data, tmp_path, GradientNorms())
    logged = scalars(tmp_path)
    batch = next(iter(data.train_dataloader()))
    model.zero_grad()
    model.loss(model(batch["x"])[0], batch["y"]).backward()
    rnn = model.net.rnn
    for role, name in ROLES.items():
        assert logged[f"grad_norm/layer0/{role}"][0] == pytest.approx(getattr(rnn, f"{name}_l0").grad.norm().item())
    total = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert logged["grad_norm/total"][0] == pytest.approx(total, rel=1e-5)


def test_params_with_grad_is_what_the_optimizer_will_apply():
    with_grad, without = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    with_grad.grad = torch.ones(2)
    optimizer = torch.optim.SGD([{"params": [without]}, {"params": [with_grad]}], lr=0.1)
    assert params_with_grad(optimizer) == [with_grad]


# ---- the writer and W_h's blocks --------------------------------------------------------------------------


def test_the_horizon_stays_on_the_norms_device():
    # The meta device stands in for a GPU: nothing is computed on the CPU behind the caller's back.
    assert gradient_horizon(torch.ones(2, 3, device="meta")).device.type == "meta"


def test_a_diagnostic_writes_to_the_runs_loggers_on_global_rank_zero_only(tmp_path: Path):
    written = []

    class Spy(Diagnostic):
        def write(self, loggers, step, batch=None):
            written.append((loggers, step))

    loggers = [CSVLogger(str(tmp_path / "csv")), TensorBoardLogger(str(tmp_path / "tb"))]
    spy = Spy(every_n_steps=1)
    spy.on_before_optimizer_step(SimpleNamespace(is_global_zero=False, loggers=loggers, global_step=3), None, None)
    assert written == []  # another rank skips the work entirely
    spy.on_before_optimizer_step(SimpleNamespace(is_global_zero=True, loggers=[], global_step=3), None, None)
    assert written == []  # nowhere to write: nothing measured
    spy.on_before_optimizer_step(SimpleNamespace(is_global_zero=True, loggers=loggers, global_step=3), None, None)
    assert written == [(loggers, 3)]


# The LRU has no W_h among its weights: its matrix is built from λ, and tests/test_lru.py checks it against its step.
@pytest.mark.parametrize("cell", sorted(set(MODELS) - {"lru"}))
def test_recurrent_matrices_split_w_h_into_its_gate_blocks_in_order(cell):
    model = SequenceModel(CopyData(seq_len=4).spec, cell=cell, hidden_size=3, num_layers=2)
    net = model.net
    gates = net.gate_names
    matrices = net.recurrent_matrices()
    names = [f"layer{layer}/{gate}" if gate else f"layer{layer}" for layer in range(2) for gate in gates]
    assert list(matrices) == names
    for layer in range(2):
        w_h = net.layer_weights(layer)[1]  # (gates*H, H)
        for index, gate in enumerate(gates):
            block = matrices[f"layer{layer}/{gate}" if gate else f"layer{layer}"]
            assert torch.equal(block, w_h[index * 3 : (index + 1) * 3])


# ---- clipping counters ------------------------------------------------------------------------------------------


class SelfClipping(nn.Module):
    """A model that clips its own gradients: ClippingEvents reads the clipping in force from its clip_settings()."""

    def __init__(self, clip: float, algorithm: str):
        super().__init__()
        self.settings = (clip, algorithm)

    def clip_settings(self) -> tuple[float, str]:
        return self.settings


def clip_steps(callback: ClippingEvents, grads: list[torch.Tensor], clip: float, algorithm: str, root: Path) -> dict:
    """Feed one known gradient per optimizer step (logging every step); the logged scalars."""
    param = nn.Parameter(torch.zeros_like(grads[0]))
    optimizer = torch.optim.SGD([param], lr=0.1)
    module = SelfClipping(clip, algorithm)
    logger = TensorBoardLogger(str(root), name="", version="")
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=1, is_global_zero=True, loggers=[logger])
    callback.setup(trainer, module, "fit")
    for step, grad in enumerate(grads):
        trainer.global_step = step
        param.grad = grad.clone()
        callback.on_before_optimizer_step(trainer, module, optimizer)
    logger.experiment.flush()
    return scalars(root)


def test_value_clipping_counts_entries_beyond_the_bound_not_at_it(tmp_path: Path):
    # Clamping to [-1, 1] leaves an entry of exactly ±1 as it was: it is not clipped.
    logged = clip_steps(ClippingEvents(), [torch.tensor([1.0, -1.0, 0.5, -1.5])], 1.0, "value", tmp_path)
    assert logged["clip/entries_clipped"][0] == pytest.approx(1 / 4)
    assert logged["clip/post_norm"][0] == pytest.approx(math.sqrt(1 + 1 + 0.25 + 1))


def test_clipping_counters_survive_a_resume(tmp_path: Path):
    grads = [torch.tensor([3.0, 0.0, 0.5]), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([-2.0, 2.0, 0.0])]
    first = ClippingEvents()
    clip_steps(first, grads[:2], 1.0, "value", tmp_path / "first")
    resumed = ClippingEvents()
    resumed.load_state_dict(first.state_dict())
    logged = clip_steps(resumed, grads[2:], 1.0, "value", tmp_path / "resumed")
    # Over the three steps: steps 0 and 2 clipped, 3 of 9 entries.
    assert logged["clip/clipped_steps"][0] == 2.0
    assert logged["clip/clipped_fraction"][0] == pytest.approx(2 / 3)
    assert logged["clip/entries_clipped_all"][0] == pytest.approx(3 / 9)
