"""Recurrent families, the details the equivalence tests cannot see: the initial weights each cell promises, the
smallest sizes it accepts, dropout between layers on the step path, and the exact words of its errors."""

import math

import pytest
import torch
from torch import nn

from seqmem.errors import ConfigError
from seqmem.models import GRU, IRNN, MODELS, OrthogonalRNN, VanillaRNN, build_model, detach_state
from seqmem.models.orthogonal import cayley_init_matrix, henaff_matrix, modrelu

I, H = 5, 64


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: VanillaRNN(I, 8, 2), lambda: nn.RNN(I, 8, 2, batch_first=True)),
        (lambda: GRU(I, 8, 2), lambda: nn.GRU(I, 8, 2, batch_first=True)),
    ],
    ids=["vanilla", "gru"],
)
def test_default_init_is_torchs_bit_for_bit(ours, theirs):
    torch.manual_seed(0)
    net = ours()
    torch.manual_seed(0)
    reference = theirs().state_dict()
    assert net.rnn.state_dict().keys() == reference.keys()
    for name, value in net.rnn.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0, msg=name)


def test_irnn_defaults_are_identity_recurrence_and_inputs_drawn_around_zero():
    # Le et al.: W_h = I, b = 0, W_in ~ N(0, 0.001²) (the defaults).
    torch.manual_seed(0)
    net = IRNN(I, H, 2)
    for layer in range(2):
        w_in, w_h, b_in, b_h = net.layer_weights(layer)
        torch.testing.assert_close(w_h, torch.eye(H), rtol=0, atol=0)
        assert not b_in.any() and not b_h.any()
        n = w_in.numel()  # 320 or 4096 draws: the sample mean is within 4 standard errors of 0
        assert abs(w_in.mean().item()) < 4 * 1e-3 / math.sqrt(n)
        assert w_in.std().item() == pytest.approx(1e-3, rel=0.2)


def test_orthogonal_cell_init_input_weights_like_nn_rnn_zero_biases_small_modrelu_bias():
    torch.manual_seed(0)
    net = OrthogonalRNN(I, H, 2, activation="modrelu")
    bound = 1 / math.sqrt(H)  # nn.RNN's U(-1/sqrt(H), 1/sqrt(H))
    for layer, fan_in in enumerate((I, H)):
        w_in = net.weight_ih[layer]
        assert w_in.shape == (H, fan_in)
        assert w_in.abs().max().item() <= bound and w_in.abs().max().item() > 0.9 * bound
        assert abs(w_in.mean().item()) < 4 * bound / math.sqrt(3 * w_in.numel())
        assert not net.bias[layer].any()
        b = net.modrelu_bias[layer]
        assert b.abs().max().item() <= 0.01 and b.abs().max().item() > 0.009 and (b < 0).any() and (b > 0).any()
    # The fused kernel's second bias is a constant zero, neither trained nor saved.
    assert not net.zero_bias.any() and "zero_bias" not in net.state_dict()
    assert all(p is not net.zero_bias for p in net.parameters())


def rotation_angles(w: torch.Tensor) -> torch.Tensor:
    """Angles of the 2×2 rotation blocks on the diagonal of w."""
    return torch.stack([torch.atan2(w[k + 1, k], w[k, k]) for k in range(0, w.shape[0] - 1, 2)])


def uniform_ks_distance(samples: torch.Tensor, low: float, high: float) -> float:
    """Largest gap between the empirical distribution function of samples and that of U(low, high)."""
    x = ((samples.sort().values - low) / (high - low)).double()  # (n,) in [0, 1]
    n = len(x)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - x
    below = x - torch.arange(0, n, dtype=torch.float64) / n
    return max(above.max().item(), below.max().item())


def test_cayley_init_angles_are_uniform_over_the_first_quadrant():
    # scoRNN: a rotation by θ ~ U(0, π/2) in every block, the last one included (none is left at the identity).
    torch.manual_seed(0)
    angles = rotation_angles(cayley_init_matrix(256))  # (128,)
    assert angles.min() > 0 and angles.max() <= math.pi / 2 + 1e-6
    assert uniform_ks_distance(angles, 0.0, math.pi / 2) < 1.95 / math.sqrt(128)  # KS test at the 0.1 % level


def test_henaff_init_angles_are_uniform_over_the_circle():
    torch.manual_seed(0)
    angles = rotation_angles(henaff_matrix(256))  # (128,)
    assert (angles != 0).all()  # every block rotates, the last one included
    assert uniform_ks_distance(angles, -math.pi, math.pi) < 1.95 / math.sqrt(128)


def test_modrelu_keeps_the_sign_and_shifts_the_magnitude():
    z = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5])
    bias = torch.tensor([-1.0, 1.0, 0.5, -0.5, 0.25])
    torch.testing.assert_close(modrelu(z, bias), torch.tensor([-1.0, -1.5, 0.0, 0.0, 1.75]))


@pytest.mark.parametrize("cell", sorted(MODELS))
def test_the_smallest_sizes_are_accepted(cell):
    net = build_model(cell, input_size=1, hidden_size=1, num_layers=1, dropout=0.0)
    out, _ = net(torch.randn(2, 3, 1))  # (B, T, I)
    assert out.shape == (2, 3, 1)
    build_model(cell, input_size=1, hidden_size=1, num_layers=2, dropout=0.99)  # dropout below 1 is allowed
    if cell == "irnn":
        build_model(cell, 1, 1, irnn_scale=1e-6)


# The LRU's dropout is inside every block and its hiddens are states, not outputs: tests/test_lru.py checks it.
@pytest.mark.parametrize("cell", sorted(set(MODELS) - {"lru"}))
def test_step_path_drops_out_between_layers_but_not_after_the_last(cell):
    torch.manual_seed(0)
    net = build_model(cell, I, 8, num_layers=2, dropout=0.5).train()
    x = torch.randn(3, 6, I)  # (B, T, I)
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out, _, hiddens = net.forward_steps(x)
        torch.testing.assert_close(out, torch.stack(hiddens[-1], dim=1), rtol=0, atol=0)  # the top layer as is
        runs.append((out, hiddens))
    # The bottom layer sees no dropout on its input; the top one does, so two draws differ only there.
    for h1, h2 in zip(runs[0][1][0], runs[1][1][0], strict=True):
        torch.testing.assert_close(h1, h2, rtol=0, atol=0)
    assert not torch.equal(runs[0][0], runs[1][0])
    net.eval()  # eval: no dropout at all, the step path equals the fused one
    torch.testing.assert_close(net.forward_steps(x)[0], net(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", sorted(MODELS))
def test_fused_path_drops_out_between_layers_in_training_only(cell):
    torch.manual_seed(0)
    net = build_model(cell, I, 8, num_layers=2, dropout=0.5).train()
    x = torch.randn(3, 6, I)  # (B, T, I)
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        draws.append(net(x)[0])
    assert not torch.equal(draws[0], draws[1])
    net.eval()
    torch.testing.assert_close(net(x)[0], net(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("cell", sorted(MODELS))
def test_every_cell_keeps_its_sizes(cell):
    net = build_model(cell, 3, 5, num_layers=2, dropout=0.25)
    assert (net.input_size, net.hidden_size, net.num_layers, net.dropout) == (3, 5, 2, 0.25)


def test_step_path_of_one_layer_ignores_dropout():
    torch.manual_seed(0)
    net = build_model("lstm", I, 8, num_layers=1, dropout=0.0).train()
    x = torch.randn(3, 6, I)
    torch.manual_seed(1)
    first = net.forward_steps(x)[0]
    torch.manual_seed(2)
    torch.testing.assert_close(net.forward_steps(x)[0], first, rtol=0, atol=0)


def test_modrelu_cell_trains_on_the_step_path_with_dropout():
    # No fused kernel: forward is forward_steps, dropout between layers included.
    torch.manual_seed(0)
    net = build_model("orthogonal", I, 8, num_layers=2, dropout=0.5, activation="modrelu").train()
    x = torch.randn(3, 6, I)
    torch.manual_seed(1)
    fused = net(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(net.forward_steps(x)[0], fused, rtol=0, atol=0)


def test_detach_state_cuts_the_history_of_every_part():
    h = torch.randn(1, 2, 3, requires_grad=True)
    single = detach_state(h * 2)
    pair = detach_state((h * 2, h + 1))
    assert single.grad_fn is None and all(p.grad_fn is None for p in pair)
    torch.testing.assert_close(pair[1], (h + 1).detach())


def test_orthogonal_forward_accepts_a_given_state():
    torch.manual_seed(0)
    net = build_model("orthogonal", I, 8, num_layers=2).eval()
    x, state = torch.randn(3, 6, I), torch.randn(2, 3, 8)
    out, final = net(x, state)
    step_out, step_final, _ = net.forward_steps(x, state)
    torch.testing.assert_close(out, step_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, step_final, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, net(x)[0])  # the state matters


ERRORS = [
    (lambda: VanillaRNN(I, 0), "model.hidden_size must be >= 1, got 0"),
    (lambda: GRU(I, 4, num_layers=0), "model.num_layers must be >= 1, got 0"),
    (lambda: VanillaRNN(I, 4, dropout=1.0), "model.dropout must be in [0, 1), got 1.0"),
    (lambda: VanillaRNN(I, 4, dropout=-0.1), "model.dropout must be in [0, 1), got -0.1"),
    (lambda: IRNN(I, 4, irnn_scale=0.0), "model.irnn_scale must be > 0, got 0.0"),
    (lambda: OrthogonalRNN(I, 4, activation="relu"), "model.activation must be one of tanh, modrelu; got 'relu'"),
    (
        lambda: OrthogonalRNN(I, 4, orthogonal_init="qr"),
        "model.orthogonal_init must be one of henaff, cayley, random; got 'qr'",
    ),
    (
        lambda: OrthogonalRNN(I, 4, orthogonal_map="exp"),
        "model.orthogonal_map must be one of cayley, matrix_exp; got 'exp'",
    ),
    (lambda: build_model("gru", I, 4, forget_bias=1.0), "model.forget_bias applies only to cell lstm, not 'gru'"),
    (
        lambda: build_model("vanilla", I, 4, activation="tanh"),
        "model.activation applies only to cell orthogonal, not 'vanilla'",
    ),
    (
        lambda: build_model("transformer", I, 4),
        "model.cell must be one of vanilla, orthogonal, irnn, gru, lstm, lru, or the import path of a RecurrentNet "
        "subclass (package.module.Class); got 'transformer'",
    ),
]


@pytest.mark.parametrize("make, message", ERRORS, ids=[message.split(" ")[0] for _, message in ERRORS])
def test_errors_name_the_option_the_rule_and_the_value(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert str(err.value) == message


def test_every_cell_takes_and_returns_torchs_state_format():
    for cell, cls in MODELS.items():
        torch.manual_seed(0)
        net = build_model(cell, I, 4, num_layers=2).eval()
        _, state = net(torch.randn(3, 2, I))
        parts = state if isinstance(state, tuple) else (state,)
        width = 8 if cell == "lru" else 4  # the LRU's state: its 4 complex units as real pairs
        assert len(parts) == cls.state_size and all(p.shape == (2, 3, width) for p in parts), cell
        _, steps_state, _ = net.forward_steps(torch.randn(3, 2, I))
        assert type(steps_state) is type(state), cell
