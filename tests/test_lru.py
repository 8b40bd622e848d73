"""The LRU: its parametrisation and init, the scan against a complex float64 unroll, and every diagnostic against
the closed forms its diagonal recurrence gives (Lyapunov exponents ln|λ_i|, spectral radius max|λ|, gradient
ratios |λ_i|^k at lag k)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.diagnose import spectral_radii
from seqmem.errors import ConfigError
from seqmem.measures import jacobian_spectrum, timestep_grad_norms
from seqmem.models import LRU, build_model
from seqmem.models.lru import diagonal_scan
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData, adding_problem


def randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def lru_net(seed: int = 0, **options) -> LRU:
    torch.manual_seed(seed)
    return build_model("lru", 3, 6, **{"num_layers": 2, "complex_units": 5, **options}).double().eval()


def eigenvalues(net: LRU, layer: int) -> Tensor:
    """λ of one layer as a complex tensor, from ν and θ as the paper writes it: exp(−exp(ν) + i·exp(θ))."""
    block = net.layers[layer]
    return torch.exp(-torch.exp(block.nu_log.detach()) + 1j * torch.exp(block.theta_log.detach()))  # (N,)


def complex_reference(net: LRU, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """The deep LRU in complex float64 arithmetic, one step at a time: outputs (B, T, H), final state (L, B, 2N)."""
    u = F.linear(x, net.encoder.weight, net.encoder.bias)  # (B, T, H)
    finals = []
    for index, block in enumerate(net.layers):
        z = F.layer_norm(u, u.shape[-1:], block.norm.weight, block.norm.bias, block.norm.eps)  # (B, T, H)
        gamma = torch.exp(block.gamma_log) if hasattr(block, "gamma_log") else torch.ones_like(block.D[:1])
        b = torch.complex(block.B_re, block.B_im) * gamma[:, None]  # (N, H)
        c = torch.complex(block.C_re, block.C_im)  # (H, N)
        lam = torch.exp(-torch.exp(block.nu_log) + 1j * torch.exp(block.theta_log))  # (N,)
        h = torch.complex(state[index, :, 0::2], state[index, :, 1::2])  # (B, N)
        ys = []
        for t in range(x.shape[1]):
            h = lam * h + z[:, t].to(b.dtype) @ b.T  # (B, N)
            ys.append((h @ c.T).real + block.D * z[:, t])  # (B, H)
        y = F.gelu(torch.stack(ys, dim=1))  # (B, T, H)
        w_value, w_gate = block.glu.weight.chunk(2)  # (H, H) each
        b_value, b_gate = block.glu.bias.chunk(2)  # (H,) each
        u = u + F.linear(y, w_value, b_value) * torch.sigmoid(F.linear(y, w_gate, b_gate))
        finals.append(torch.stack([h.real, h.imag], dim=-1).flatten(-2))  # (B, 2N)
    return u, torch.stack(finals)


# ---- parametrisation and init --------------------------------------------------------------------


def test_ring_init_draws_lambda_uniformly_by_area_within_the_phase_bound() -> None:
    torch.manual_seed(0)
    net = LRU(2, 4, complex_units=4000, r_min=0.4, r_max=0.9, max_phase=1.0)
    lam = eigenvalues(net, 0)  # (N,)
    assert lam.abs().min() >= 0.4 and lam.abs().max() <= 0.9
    assert lam.angle().min() >= 0 and lam.angle().max() <= 1.0
    # |λ|² ~ U[r_min², r_max²]: mean (0.16 + 0.81) / 2, standard error 0.14 / sqrt(4000) = 0.0022.
    assert lam.abs().square().mean().item() == pytest.approx(0.485, abs=0.01)
    assert lam.angle().mean().item() == pytest.approx(0.5, abs=0.015)
    # γ starts at sqrt(1 − |λ|²): white noise in, the state's variance that of B z.
    gamma = torch.exp(net.layers[0].gamma_log.detach())
    torch.testing.assert_close(gamma, torch.sqrt(1 - lam.abs().square()).float())


def test_layer_weights_are_the_real_and_imaginary_parts_of_lambda() -> None:
    net = lru_net()
    lam_re, lam_im = net.layer_weights(1)
    torch.testing.assert_close(torch.complex(lam_re, lam_im), eigenvalues(net, 1).to(torch.complex128))


def test_every_parameter_is_a_real_tensor() -> None:
    # Optimizers, DDP buckets and checkpoints see plain real tensors; the gradient norms too.
    assert all(not p.is_complex() for p in LRU(3, 4).parameters())


def test_input_normalization_off_has_no_gamma() -> None:
    net = lru_net(input_normalization=False)
    assert not any("gamma" in name for name, _ in net.named_parameters())
    x, state = randn(2, 9, 3, seed=1), randn(2, 2, 10, seed=2)
    out, final = net(x, state)
    expected_out, expected_final = complex_reference(net, x, state)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, expected_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"r_min": 0.9, "r_max": 0.5}, r"^model\.r_min and model\.r_max need 0 <= r_min <= r_max <= 1"),
        ({"r_max": 1.5}, r"^model\.r_min and model\.r_max need"),
        ({"max_phase": 0.0}, r"^model\.max_phase must be > 0"),
        ({"complex_units": 0}, r"^model\.complex_units must be >= 1"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_option(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LRU(3, 4, **options)


# ---- the scan against the recurrence ---------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 7, 8, 9, 64, 300])  # within one chunk of 8, at and past its edge, many
def test_diagonal_scan_equals_the_complex_recurrence(length: int) -> None:
    lam = 0.99 * torch.exp(1j * randn(8, seed=0))  # (N,)
    p = torch.complex(randn(3, length, 8, seed=1), randn(3, length, 8, seed=2))  # (B, T, N)
    h, expected = torch.zeros(3, 8, dtype=p.dtype), []
    for t in range(length):
        h = lam * h + p[:, t]
        expected.append(h)
    re, im = diagonal_scan(lam.real, lam.imag, p.real, p.imag)  # (B, T, N) each
    torch.testing.assert_close(torch.complex(re, im), torch.stack(expected, dim=1), rtol=1e-12, atol=1e-12)


def test_scan_and_step_paths_equal_the_complex_reference_with_gradients() -> None:
    net = lru_net()
    x, state = randn(2, 37, 3, seed=1), randn(2, 2, 10, seed=2)  # an initial state of 2 layers, 2N = 10
    expected_out, expected_final = complex_reference(net, x, state)
    for path in (net.forward, net.forward_steps):
        out, final = path(x, state)[:2]
        torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final, expected_final, rtol=1e-12, atol=1e-12)
    grads = [
        torch.autograd.grad(path(x, state)[0].square().sum(), list(net.parameters()))
        for path in (net, net.forward_steps)
    ]
    for scan, step in zip(*grads, strict=True):
        torch.testing.assert_close(scan, step, rtol=1e-10, atol=1e-12)


def test_dropout_draws_the_same_masks_on_both_paths_and_none_in_eval() -> None:
    net = lru_net(dropout=0.5).train()
    x = randn(2, 9, 3, seed=1)
    draws = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        scan = net(x)[0]
        torch.manual_seed(seed)
        torch.testing.assert_close(net.forward_steps(x)[0], scan, rtol=1e-12, atol=1e-12)
        draws.append(scan)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    net.eval()
    torch.testing.assert_close(net(x)[0], complex_reference(net, x, torch.zeros(2, 2, 10, dtype=x.dtype))[0])


def test_recurrent_matrix_is_the_step_on_real_pairs() -> None:
    net = lru_net()
    state = randn(4, 10, seed=1)  # (B, 2N)
    for layer, matrix in enumerate(net.recurrent_matrices().values()):
        weights = net.layer_weights(layer)
        stepped = net.step(weights, torch.zeros_like(state), (state,))[0]  # (B, 2N): λ ⊙ x with no input
        torch.testing.assert_close(state @ matrix.T, stepped, rtol=1e-12, atol=1e-12)


def test_float32_scan_stays_on_the_float64_run_at_a_thousand_steps() -> None:
    net = lru_net(r_min=0.99, r_max=0.999)
    x = randn(2, 1000, 3, seed=1)
    expected = net(x)[0]  # (B, T, H) float64
    torch.testing.assert_close(net.float()(x.float())[0], expected.float(), rtol=1e-4, atol=1e-4)


# ---- every diagnostic against its closed form -------------------------------------------------------


def set_moduli(net: LRU, r: float) -> None:
    """|λ| = r for every unit of every layer, exactly in float64 (the init draws ν in float32), phases kept."""
    with torch.no_grad():
        for block in net.layers:
            block.nu_log.fill_(math.log(-math.log(r)))


def test_equal_moduli_give_every_lyapunov_exponent_ln_r_and_sigma_max_r() -> None:
    # |λ_i| = r: J_t = r × (a rotation per pair), so every R_t of the QR is ±r I.
    net = lru_net()
    set_moduli(net, 0.8)
    exponents, sigma = jacobian_spectrum(net, randn(3, 20, 3, seed=1), k=10, power_iterations=3)  # (2, 10), (2, 20, 3)
    torch.testing.assert_close(exponents, torch.full((2, 10), math.log(0.8), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(sigma, torch.full_like(sigma, 0.8), rtol=1e-12, atol=0)


def test_lyapunov_exponents_are_the_log_moduli_each_twice() -> None:
    net = lru_net(r_min=0.3, r_max=0.95, max_phase=math.pi)
    length = 150
    exponents, sigma = jacobian_spectrum(net, randn(2, length, 3, seed=1), k=10, power_iterations=100, seed=3)
    for layer in range(2):
        log_moduli = eigenvalues(net, layer).abs().log().sort(descending=True).values  # (N,)
        # Each complex unit is a 2×2 rotation-scaling block: its ln|λ| twice, for the pair.
        expected = log_moduli.repeat_interleave(2)  # (2N,)
        # Exactly: with the full frame, Σ_i ln|R_t[i, i]| = ln|det J_t| = Σ_i 2 ln|λ_i| at every step.
        assert exponents[layer].sum().item() == pytest.approx(expected.sum().item(), rel=1e-12)
        # Each exponent up to the seeded frame's transient, which fades as 1/T.
        torch.testing.assert_close(exponents[layer], expected, rtol=0, atol=0.02)  # 0.013 at T = 150
        assert torch.allclose(sigma[layer], eigenvalues(net, layer).abs().max().double(), rtol=1e-9, atol=0)


def test_spectral_radius_is_max_modulus_and_singular_values_the_moduli() -> None:
    net = lru_net(r_min=0.2, r_max=0.97, max_phase=math.pi)
    model = SequenceModel(AddingData(seq_len=5).spec, cell="lru", hidden_size=6, num_layers=2)
    model.net = net
    for layer, summary in enumerate(spectral_radii(model).values()):
        moduli = eigenvalues(net, layer).abs().float()
        torch.testing.assert_close(summary["radius"], moduli.max(), rtol=1e-6, atol=0)
        torch.testing.assert_close(summary["sigma_max"], moduli.max(), rtol=1e-6, atol=0)
        torch.testing.assert_close(summary["sigma_min"], moduli.min(), rtol=1e-6, atol=0)


def adding_model(seed: int = 0, **options) -> tuple[SequenceModel, dict]:
    """A one-layer float64 LRU on adding (T = 30; the loss reads the last step only) and a batch."""
    torch.manual_seed(seed)
    model = SequenceModel(AddingData(seq_len=30).spec, cell="lru", hidden_size=6, complex_units=4, **options)
    return model.double().eval(), adding_problem(5, 30, torch.Generator().manual_seed(1))


def test_gradient_ratio_at_lag_k_is_r_to_the_k_for_equal_moduli() -> None:
    model, batch = adding_model(max_phase=math.pi)
    set_moduli(model.net, 0.9)
    norms = timestep_grad_norms(model, batch["x"].double(), batch["y"].double())[0]  # (T,)
    # dL/ds_{t−1} = Jᵀ dL/ds_t with Jᵀ = 0.9 × (a rotation per pair) before the last step: exactly 0.9^k at lag k.
    lags = torch.arange(30, dtype=torch.float64)
    torch.testing.assert_close(norms.flip(0) / norms[-1], 0.9**lags, rtol=1e-12, atol=0)


def test_gradient_at_lag_k_decays_unit_by_unit_as_the_moduli_to_the_k() -> None:
    model, batch = adding_model(r_min=0.5, r_max=0.99, max_phase=math.pi)
    x, y = batch["x"].double(), batch["y"].double()
    norms = timestep_grad_norms(model, x, y)[0]  # (T,)
    # An explicit float64 unroll of the state, with retain_grad on every s_t: the reference of dL/ds_t.
    net, block = model.net, model.net.layers[0]
    u = net.encoder(x)  # (B, T, H)
    z = block.norm(u)
    p_re, p_im = block.project(z)  # (B, T, N) each
    lam_re, lam_im = net.layer_weights(0)
    s_re, s_im = torch.zeros_like(p_re[:, 0]), torch.zeros_like(p_im[:, 0])
    states = []
    for t in range(30):
        s_re, s_im = lam_re * s_re - lam_im * s_im + p_re[:, t], lam_re * s_im + lam_im * s_re + p_im[:, t]
        s_re.retain_grad(), s_im.retain_grad()
        states.append((s_re, s_im))
    x_re, x_im = torch.stack([s[0] for s in states], 1), torch.stack([s[1] for s in states], 1)
    model.loss(model.readout(u + block.block(z, x_re, x_im)), y).backward()
    grads = [torch.stack([s[0].grad, s[1].grad], dim=-1) for s in states]  # (B, N, 2) each
    torch.testing.assert_close(norms, torch.stack([g.norm() for g in grads]), rtol=1e-10, atol=0)
    # Closed form: ‖dL/ds_{T−k}‖² = Σ_i |λ_i|^{2k} ‖dL/ds_{T,i}‖², the last step's gradient per unit i.
    moduli = eigenvalues(model.net, 0).abs().double()  # (N,)
    last = grads[-1].square().sum(dim=(0, 2))  # (N,)
    expected = torch.stack([(moduli ** (2 * k) * last).sum().sqrt() for k in range(30)])  # (T,)
    torch.testing.assert_close(norms.flip(0), expected, rtol=1e-10, atol=0)
    assert norms[0] / norms[-1] < 0.99**29, "the spread of moduli, not only the largest, sets the decay"
