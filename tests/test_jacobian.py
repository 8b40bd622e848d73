"""Step-Jacobian spectra: closed forms of the Lyapunov exponents and σ_max(J_t), a brute-force reference
from explicit Jacobians for every cell, the predicted horizon, and the TensorBoard events of a real fit."""

import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from seqmem.callbacks import JacobianSpectrum, TimestepGradients
from seqmem.errors import ConfigError
from seqmem.measures import gradient_horizon, initial_frame, jacobian_spectrum, layer_trajectories, predicted_horizon
from seqmem.models import MODELS, RecurrentNet, build_model
from seqmem.module import SequenceModel
from seqmem.plots import SpectrumPlot
from seqmem.tasks import CopyData

LIGHTNING_TAGS = {"train/loss", "epoch", "hp_metric"}


def identity_step(weights, x_proj, state):
    """Elman step with the identity activation: h_t = W_h h_{t-1} + W_in x_t + b, so J_t = W_h exactly."""
    return (x_proj + F.linear(state[0], weights[1], weights[3]),)


def linear_net(w_h: Tensor, monkeypatch: pytest.MonkeyPatch) -> RecurrentNet:
    """A one-layer float64 Elman net with the identity activation and the given W_h."""
    net = build_model("vanilla", 3, w_h.shape[0]).double().eval()
    monkeypatch.setattr(net, "step", identity_step)
    with torch.no_grad():
        net.layer_weights(0)[1].copy_(w_h)
    return net


def inputs(batch: int, length: int, size: int = 3, seed: int = 0) -> Tensor:
    return torch.randn(batch, length, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- closed forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.8, 1.1])
def test_linear_rnn_with_w_lambda_q_has_every_exponent_ln_lambda(lam: float, monkeypatch) -> None:
    # J_t = λQ maps an orthonormal frame to λ times an orthonormal frame: every R_t = ±λI.
    torch.manual_seed(0)
    q = nn.init.orthogonal_(torch.empty(6, 6, dtype=torch.float64))
    net = linear_net(lam * q, monkeypatch)
    exponents, sigma = jacobian_spectrum(net, inputs(3, 20), k=4, power_iterations=3)  # (1, 4), (1, 20, 3)
    torch.testing.assert_close(exponents, torch.full((1, 4), math.log(lam), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(sigma, torch.full((1, 20, 3), lam, dtype=torch.float64), rtol=1e-12, atol=0)


def test_diagonal_linear_rnn_has_the_sorted_log_moduli_as_exponents(monkeypatch) -> None:
    d = torch.tensor([0.5, -1.2, 0.1, 0.9, -0.3, 0.05], dtype=torch.float64)
    net = linear_net(torch.diag(d), monkeypatch)
    length = 100
    # k = 10 > D = 6: capped at the full spectrum.
    exponents, sigma = jacobian_spectrum(net, inputs(2, length), k=10, power_iterations=60, seed=3)
    order = d.abs().argsort(descending=True)
    log_moduli = d.abs()[order].log()  # (6,) ln 1.2, ln 0.9, ln 0.5, ln 0.3, ln 0.1, ln 0.05
    # Exactly, for J_t = D: the i-volume of the first i columns of D^T Q_0 grows as Π_{j≤i}|d_j|^T times the
    # leading i×i minor of Q_0 (rows sorted by |d|), up to (|d_{i+1}|/|d_i|)^{2T} ≤ 0.75^200. Hence
    # λ_i = ln|d_(i)| + (1/T) ln(|minor_i| / |minor_{i−1}|): the seeded frame's transient, vanishing as 1/T.
    frame = initial_frame(6, 6, seed=3, like=d)[order]  # (6, 6)
    minors = torch.stack([torch.linalg.det(frame[:i, :i]).abs() for i in range(1, 7)])  # (6,)
    transient = torch.cat([minors[:1], minors[1:] / minors[:-1]]).log() / length  # (6,)
    torch.testing.assert_close(exponents[0], log_moduli + transient, rtol=0, atol=1e-10)
    assert (exponents[0] - log_moduli).abs().max() < 0.05, "already close to the asymptotic spectrum at T = 100"
    torch.testing.assert_close(sigma, torch.full_like(sigma, 1.2), rtol=1e-10, atol=0)


def test_irnn_at_initialisation_with_active_units_has_lambda_1_zero() -> None:
    # W_h = I and every unit on (positive bias, h ≥ 0, tiny input weights): J_t = I exactly.
    torch.manual_seed(0)
    net = build_model("irnn", 3, 8, num_layers=2).eval()
    with torch.no_grad():
        for layer in range(2):
            net.layer_weights(layer)[2].fill_(0.1)  # b_in
    x = torch.rand(4, 30, 3, generator=torch.Generator().manual_seed(0))  # (B, T, I)
    exponents, sigma = jacobian_spectrum(net, x, k=8)  # (2, 8), (2, 30, 4)
    torch.testing.assert_close(exponents, torch.zeros(2, 8), rtol=0, atol=1e-6)
    torch.testing.assert_close(sigma, torch.ones(2, 30, 4), rtol=1e-6, atol=0)
    assert predicted_horizon(exponents[:, 0], 1e-3, 30).tolist() == [29, 29]


def test_lstm_with_zero_recurrence_and_constant_forget_gate_has_exponents_ln_f() -> None:
    # W_hh = 0 and zero input weights into f, g, o: f = σ(b), o = σ(b_o), g = 0, so c_t = f c_{t−1} = 0 and
    # tanh'(c_t) = 1. In the joint state (h, c) every step has the same Jacobian
    #     J = [[0, o·f·I], [0, f·I]]   (∂h_t/∂h_{t−1} = ∂c_t/∂h_{t−1} = 0, ∂h_t/∂c_{t−1} = o·tanh'(c_t)·f):
    # eigenvalues f (H times, the c-directions) and 0 (H times), singular values f·√(1 + o²) and 0.
    # On its range {(o w, w)} J acts as f·I, so after the first step every R_t = ±f on the first H
    # columns; the first step maps Q_0 into that range with R_1 = f·√(1 + o²)·R', R' the R factor of
    # Q_0's c-rows. Hence λ_i = ln f + (½ ln(1 + o²) + ln|R'_ii|)/T for i ≤ H (→ ln σ(b) as T grows),
    # and the other H exponents are −∞: the h-directions are annihilated in one step.
    hidden, b, b_o, length = 4, 1.0, 0.5, 30
    torch.manual_seed(0)
    net = build_model("lstm", 3, hidden, forget_bias=None).double().eval()
    w_in, w_h, b_in, b_h = net.layer_weights(0)
    f_rows, g_rows, o_rows = (slice(j * hidden, (j + 1) * hidden) for j in (1, 2, 3))
    with torch.no_grad():
        w_h.zero_()
        b_h.zero_()
        for rows, bias in ((f_rows, b), (g_rows, 0.0), (o_rows, b_o)):
            w_in[rows] = 0.0
            b_in[rows] = bias
    f, o = torch.sigmoid(torch.tensor(b, dtype=torch.float64)), torch.sigmoid(torch.tensor(b_o, dtype=torch.float64))
    exponents, sigma = jacobian_spectrum(net, inputs(3, length), k=2 * hidden, power_iterations=2)  # (1, 8), (1, T, 3)

    c_rows = initial_frame(2 * hidden, 2 * hidden, seed=0, like=f)[hidden:, :hidden]  # (H, H): Q_0's c-rows
    r_diag = torch.linalg.qr(c_rows).R.diagonal().abs()  # (H,)
    expected = f.log() + (0.5 * torch.log1p(o**2) + r_diag.log()) / length  # (H,)
    torch.testing.assert_close(exponents[0, :hidden], expected, rtol=0, atol=1e-12)
    assert (exponents[0, :hidden] - f.log()).abs().max() < 0.1, "the top H exponents are ≈ ln σ(b)"
    assert (exponents[0, hidden:] < f.log() - 20).all(), "the h-directions are annihilated (λ = −∞ up to roundoff)"
    torch.testing.assert_close(sigma, torch.full_like(sigma, (f * torch.sqrt(1 + o**2)).item()), rtol=1e-12, atol=0)


def test_predicted_horizon_is_the_measured_horizon_of_a_pure_exponential() -> None:
    length = 400
    lams = torch.tensor([-0.03, -0.1, -math.log(2), -1.0, -5.0], dtype=torch.float64)
    lags = torch.arange(length - 1, -1, -1, dtype=torch.float64)  # (T,) lag of each position
    curves = torch.exp(lams[:, None] * lags)  # (5, T) e^{λ k}, lag 0 last
    assert (
        predicted_horizon(lams, 1e-3, length).tolist() == gradient_horizon(curves, 1e-3).tolist() == [230, 69, 9, 6, 1]
    )
    # ln(1e-3) / ln(0.5) = 9.97: lag 9 is the last one at or above the threshold.
    assert predicted_horizon(torch.tensor(-math.log(2)), 1e-3, 50).item() == 9
    # Capped at T − 1; λ_1 ≥ 0 never decays; λ_1 = −∞ (a step that annihilates every direction) reaches lag 0.
    lams = torch.tensor([-1e-4, -1e-30, 0.0, 0.2, -math.inf])
    assert predicted_horizon(lams, 1e-3, 50).tolist() == [49, 49, 49, 49, 0]
    assert predicted_horizon(torch.tensor(-0.5), 0.1, 50).item() == 4  # floor(2.303 / 0.5)


# ---- brute force: explicit Jacobians for every cell --------------------------------------------


def random_cell(cell: str, **options) -> RecurrentNet:
    """A 2-layer float64 net (I = 3, H = 6), seeded, every parameter redrawn: matrices N(0, 0.4²) (the
    orthogonal cell's are the parameters behind W_h, which stays orthogonal), vectors N(0.5, 0.5²) — so
    some ReLU / modReLU units switch off along the way (the masks are exercised) while the product of
    Jacobians keeps rank ≥ k (a zero R_t[i, i] would leave nothing to compare)."""
    torch.manual_seed(1)
    net = build_model(cell, 3, 6, num_layers=2, **options).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.5, 0.5) if p.ndim == 1 else p.normal_(0.0, 0.4)
    return net


def one_step(net: RecurrentNet, weights: tuple[Tensor, ...], x_proj: Tensor):
    """One sequence's step on its joint state: (D,) -> (D,), for ``torch.autograd.functional.jacobian``."""
    return lambda s: torch.cat(net.step(weights, x_proj, s[None].chunk(net.state_size, dim=-1)), dim=-1)[0]


def explicit_reference(net: RecurrentNet, x: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """Exponents from the QR of the explicit product J_T ⋯ J_1 Q_0 and σ_max from ``matrix_norm(J_t, 2)``,
    each J_t (D × D) from ``torch.autograd.functional.jacobian`` of one sequence's step; (L, k), (L, T, B)."""
    batch, length = x.shape[:2]
    dim = net.state_size * net.hidden_size
    frame = initial_frame(dim, k, seed, like=x)  # (D, k)
    layer_input, exponents, sigmas = x, [], []
    for layer in range(net.num_layers):
        weights = tuple(w.detach() for w in net.layer_weights(layer))
        x_proj = net.project_input(weights, layer_input).detach()  # (B, T, gates*H)
        state = torch.zeros(batch, dim, dtype=x.dtype)  # (B, D) joint state (h, c)
        products, norms, outputs = frame.expand(batch, dim, k), [], []
        for t in range(length):
            jacobians = [jacobian(one_step(net, weights, x_proj[b : b + 1, t]), state[b]) for b in range(batch)]
            jacobians = torch.stack(jacobians)  # (B, D, D)
            products = jacobians @ products  # (B, D, k)
            norms.append(torch.linalg.matrix_norm(jacobians, 2))  # (B,)
            state = torch.cat(net.step(weights, x_proj[:, t], state.chunk(net.state_size, dim=-1)), -1).detach()
            outputs.append(state[:, : net.hidden_size])  # (B, H)
        r_diag = torch.linalg.qr(products).R.diagonal(dim1=-2, dim2=-1)  # (B, k)
        exponents.append(r_diag.abs().log().mean(dim=0) / length)  # (k,)
        sigmas.append(torch.stack(norms))  # (T, B)
        layer_input = torch.stack(outputs, dim=1)  # (B, T, H)
    return torch.stack(exponents), torch.stack(sigmas)


# The explicit reference reads each layer's output off its state; the LRU's (a block around its recurrence) is not,
# and its exponents have a closed form instead (tests/test_lru.py).
CELLS = [(cell, {}) for cell in sorted(set(MODELS) - {"lru"})] + [("orthogonal", {"activation": "modrelu"})]


@pytest.mark.parametrize(("cell", "options"), CELLS, ids=[c if not o else f"{c}-modrelu" for c, o in CELLS])
def test_jacobian_spectrum_matches_explicit_jacobian_products(cell: str, options: dict) -> None:
    net = random_cell(cell, **options)
    x = inputs(3, 10)  # (B, T, I)
    exponents, sigma = jacobian_spectrum(net, x, k=3, power_iterations=200, seed=5)  # (2, 3), (2, T, B)
    expected_exponents, expected_sigma = explicit_reference(net, x, k=3, seed=5)
    assert (expected_exponents > -15).all(), "a degenerate product (dead units) would not test much"
    torch.testing.assert_close(exponents, expected_exponents, rtol=1e-8, atol=1e-10)
    # Power iteration approaches σ_max from below, at the rate of the gap between the top two singular
    # values: ≤ 2e-7 here for the other cells, 1.8e-3 for the orthogonal tanh cell, whose J_t = diag(tanh′) W_h
    # has the singular values tanh′(·) of its units, some nearly equal.
    assert (sigma <= expected_sigma * (1 + 1e-12)).all(), "a Rayleigh quotient never exceeds σ_max"
    torch.testing.assert_close(sigma, expected_sigma, rtol=3e-3, atol=0)
    # The trajectory helper runs the same network as forward_steps (last layer's h_t).
    h_last = torch.stack([s[0] for s in layer_trajectories(net, x)[-1].states[1:]], dim=1)  # (B, T, H)
    torch.testing.assert_close(h_last, net.forward_steps(x)[0], rtol=1e-12, atol=1e-12)


# ---- the probe leaves training alone -----------------------------------------------------------


def test_probe_leaves_gradients_and_the_global_random_stream_untouched() -> None:
    torch.manual_seed(0)
    net = build_model("lstm", 3, 8, num_layers=2)
    x = torch.randn(4, 12, 3)
    net(x)[0].square().mean().backward()
    before = [p.grad.clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    jacobian_spectrum(net.eval(), x, k=4)
    assert torch.equal(torch.get_rng_state(), rng), "the frames come from their own generators"
    for grad, p in zip(before, net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("every_n_steps", 0),
        ("probe_batch_size", 0),
        ("k", 0),
        ("power_iterations", 0),
        ("threshold", 1.0),
        ("seed", -1),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_option(option: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{option} of JacobianSpectrum must be"):
        JacobianSpectrum(**{option: value})


# ---- a real fit, read back from TensorBoard ----------------------------------------------------


def fit(
    root: Path, callbacks: list[L.Callback], max_steps: int, ckpt_path: str | None = None, **model
) -> SequenceModel:
    """A short real fit on copy (T = 10 + 20 = 30) with a 2-layer model, logging every 5 steps under ``root``."""
    L.seed_everything(0)
    data = CopyData(seq_len=10, batch_size=16)
    module = SequenceModel(data.spec, hidden_size=12, num_layers=2, embedding_size=6, **model)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, log_every_n_steps=5, callbacks=callbacks,
        default_root_dir=str(root), limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module


def events(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_fit_writes_every_tag_at_the_expected_steps(tmp_path: Path) -> None:
    probes = [
        TimestepGradients(every_n_steps=5, probe_batch_size=4),
        JacobianSpectrum(every_n_steps=5, probe_batch_size=4, k=3),
    ]
    fit(tmp_path, probes, max_steps=11, cell="lstm")
    acc = events(tmp_path / "lightning_logs" / "version_0")
    expected = set()
    for layer in (0, 1):
        expected |= {
            f"lyapunov/layer{layer}/{name}" for name in ("lambda_1", "lambda_2", "lambda_3", "sum", "predicted_horizon")
        }
        expected |= {f"jacobian/layer{layer}/sigma_max_{name}" for name in ("median", "max")}
    written = {tag for tag in acc.Tags()["scalars"] if not tag.startswith("grad_time/")} - LIGHTNING_TAGS
    assert written == expected
    value = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in expected}
    assert all(sorted(steps) == [0, 5, 10] for steps in value.values())
    assert [e.step for e in acc.Images("lyapunov/spectrum")] == [0, 5, 10]
    for layer in (0, 1):
        at = {name: value[f"lyapunov/layer{layer}/{name}"][10] for name in ("lambda_1", "lambda_2", "lambda_3", "sum")}
        assert at["sum"] == pytest.approx(at["lambda_1"] + at["lambda_2"] + at["lambda_3"], rel=1e-5)
        assert 0 <= value[f"lyapunov/layer{layer}/predicted_horizon"][10] <= 29
        median, top = (value[f"jacobian/layer{layer}/sigma_max_{name}"][10] for name in ("median", "max"))
        assert 0 < median <= top

    (layout_event,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for c in layout.category for chart in c.chart}
    all_tags = acc.Tags()["scalars"]

    def plotted(title: str) -> set[str]:
        # TensorBoard plots in a chart every tag that one of its regexes searches out.
        return {tag for tag in all_tags if any(re.search(regex, tag) for regex in charts[title])}

    # Predicted and measured horizon share one chart.
    assert plotted("layer0 gradient horizon: predicted from λ_1 vs measured") == {
        "lyapunov/layer0/predicted_horizon",
        "grad_time/layer0/horizon",
    }
    assert plotted("layer1 exponents") == {f"lyapunov/layer1/lambda_{i}" for i in (1, 2, 3)}
    assert plotted("layer0 σ_max(J_t): median and max over t") == {
        "jacobian/layer0/sigma_max_median",
        "jacobian/layer0/sigma_max_max",
    }


def test_jacobian_probe_does_not_change_training(tmp_path: Path) -> None:
    # Dropout between the layers: a probe that left the model in eval mode, consumed the global random
    # stream or wrote into .grad would change the trained weights.
    with_probe = fit(
        tmp_path / "on", [JacobianSpectrum(every_n_steps=2, probe_batch_size=4, k=2)], 6, cell="lstm", dropout=0.3
    )
    without = fit(tmp_path / "off", [], 6, cell="lstm", dropout=0.3)
    for a, b in zip(with_probe.parameters(), without.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(events(tmp_path / "on" / "lightning_logs" / "version_0").Scalars("lyapunov/layer0/lambda_1")) == 3


def test_the_spectrum_history_survives_a_resume(tmp_path: Path) -> None:
    # The image at a step after resuming still shows the exponents from before the checkpoint.
    fit(tmp_path, [JacobianSpectrum(every_n_steps=3, probe_batch_size=4, k=2)], 5, cell="gru")
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    resumed = JacobianSpectrum(every_n_steps=3, probe_batch_size=4, k=2)
    fit(tmp_path, [resumed], 10, ckpt_path=str(checkpoint), cell="gru")
    assert [step for step, _ in resumed.history[""]] == [0, 3, 6, 9]
    assert all(exponents.shape == (2, 2) for _, exponents in resumed.history[""])


def test_the_kept_spectrum_plot_shows_every_probe_so_far_and_rescales_to_them():
    plot = SpectrumPlot(num_layers=2, k=3, length=50)
    first = plot.render([0], torch.tensor([[[0.1, -0.2, -0.5], [0.0, -0.1, -0.3]]]))  # (P=1, L=2, k=3)
    history = torch.tensor([[[0.1, -0.2, -0.5], [0.0, -0.1, -0.3]], [[2.0, -1.0, -4.0], [0.5, -0.4, -0.9]]])
    image = plot.render([0, 1000], history)  # a later probe with larger exponents
    assert image.shape == first.shape and not (image == first).all()
    for layer, (axes, lines) in enumerate(zip(plot.axes, plot.lines, strict=True)):
        for i, line in enumerate(lines):
            assert list(line.get_xdata()) == [0, 1000]
            assert line.get_ydata() == pytest.approx(history[:, layer, i].tolist())
        low, high = axes.get_ylim()
        assert low <= -4.0 and high >= 2.0  # the shared y axis grew to the new extremes, kept figure or not
        assert axes.get_xlim()[0] < 0 < 1000 < axes.get_xlim()[1]
