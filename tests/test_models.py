"""Recurrent families: fused == step-by-step, equality with torch's own cells, inits, orthogonality."""

import pytest
import torch
from torch import nn

from seqmem.errors import ConfigError
from seqmem.models import GRU, IRNN, LSTM, MODELS, OrthogonalRNN, VanillaRNN, build_model
from seqmem.models.orthogonal import cayley_init_matrix, henaff_matrix

B, T, I, H, LAYERS = 3, 7, 5, 6, 2
CPU = torch.device("cpu")

# Every cell in the table, plus the orthogonal cell's modReLU variant (its own step function).
VARIANTS = [(cell, {}) for cell in MODELS] + [("orthogonal", {"activation": "modrelu"})]
VARIANT_IDS = [cell + "-".join([""] + list(options.values())) for cell, options in VARIANTS]


def make_net(cell: str, options: dict, device: torch.device = CPU, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cell, I, H, LAYERS, dropout=0.3, **options).eval().to(device)


def randn(*shape: int, seed: int, device: torch.device) -> torch.Tensor:
    """Seeded normal samples drawn on the CPU (the same numbers on every device), then moved to ``device``."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def random_state(net, seed: int = 1):
    """A non-zero initial state in torch's format on the net's device: (L, B, H) ((L, B, 2N) for the LRU), or (h, c)
    for the LSTM."""
    device = next(net.parameters()).device
    parts = tuple(randn(LAYERS, B, net.state_width, seed=seed + i, device=device) for i in range(net.state_size))
    return parts[0] if net.state_size == 1 else parts


def state_tensors(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


def randomise(net: nn.Module, seed: int = 2) -> None:
    """Move every parameter off its structured init (W_h = I, zero biases) so equalities are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g).to(p.device))


@pytest.mark.parametrize("cell, options", VARIANTS, ids=VARIANT_IDS)
def test_fused_path_equals_step_path_with_gradients(cell, options, device):
    net = make_net(cell, options, device)
    randomise(net)
    # The LRU's scan sums in another order than its steps, and its randomised gradients reach ~100: float32's
    # rounding alone exceeds the tolerance there (both paths are within 1e-6 relative of float64), so it compares
    # in float64.
    dtype = torch.float64 if cell == "lru" else torch.float32
    net = net.to(dtype)
    x = randn(B, T, I, seed=3, device=device).to(dtype)  # (B, T, I)
    target = randn(B, T, H, seed=4, device=device).to(dtype)  # (B, T, H)

    def run(path):
        xs = x.clone().requires_grad_()
        state = tuple(s.to(dtype).clone().requires_grad_() for s in state_tensors(random_state(net)))
        out, final = path(xs, state if net.state_size == 2 else state[0])[:2]  # (B, T, H)
        # Use every output and the final state so that each path's whole graph is differentiated.
        loss = (out * target).sum() + sum((f**2).sum() for f in state_tensors(final))
        grads = torch.autograd.grad(loss, [xs, *state, *net.parameters()])
        return out, state_tensors(final), grads

    fused_out, fused_final, fused_grads = run(net.forward)
    step_out, step_final, step_grads = run(net.forward_steps)
    torch.testing.assert_close(step_out, fused_out, atol=1e-5, rtol=1e-5)
    for step, fused in zip(step_final, fused_final, strict=True):
        torch.testing.assert_close(step, fused, atol=1e-5, rtol=1e-5)
    for step, fused in zip(step_grads, fused_grads, strict=True):
        torch.testing.assert_close(step, fused, atol=1e-5, rtol=1e-5)


def test_step_path_hiddens_are_every_layers_outputs(device):
    # hiddens[l] must be layer l's h_t: the top layer equals the outputs, the bottom one equals a
    # one-layer net over the same weights.
    net = make_net("gru", {}, device)
    randomise(net)
    x = randn(B, T, I, seed=3, device=device)  # (B, T, I)
    out, _, hiddens = net.forward_steps(x)
    hiddens = torch.stack([torch.stack(hs, dim=1) for hs in hiddens])  # (L, B, T, H)
    assert hiddens.shape == (LAYERS, B, T, H)
    torch.testing.assert_close(hiddens[-1], out)
    bottom = nn.GRU(I, H, 1, batch_first=True).to(device)
    bottom.load_state_dict({k: v for k, v in net.rnn.state_dict().items() if k.endswith("l0")})
    torch.testing.assert_close(hiddens[0], bottom(x)[0], atol=1e-5, rtol=1e-5)


REFERENCES = {
    "vanilla": lambda: nn.RNN(I, H, LAYERS, nonlinearity="tanh", batch_first=True),
    "irnn": lambda: nn.RNN(I, H, LAYERS, nonlinearity="relu", batch_first=True),
    "gru": lambda: nn.GRU(I, H, LAYERS, batch_first=True),
    "lstm": lambda: nn.LSTM(I, H, LAYERS, batch_first=True),
}


@pytest.mark.parametrize("cell", sorted(REFERENCES))
def test_step_path_equals_a_fresh_torch_module_with_copied_weights(cell, device):
    net = make_net(cell, {}, device)
    randomise(net)
    reference = REFERENCES[cell]().eval().to(device)
    reference.load_state_dict(net.rnn.state_dict())
    x = randn(B, T, I, seed=3, device=device)  # (B, T, I)
    state = random_state(net)
    ref_out, ref_final = reference(x, state)
    out, final, _ = net.forward_steps(x, state)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(state_tensors(final), state_tensors(ref_final), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_orthogonal_step_path_equals_nn_rnn_with_its_matrices(device):
    net = make_net("orthogonal", {}, device)
    randomise(net)
    reference = nn.RNN(I, H, LAYERS, nonlinearity="tanh", batch_first=True).eval().to(device)
    with torch.no_grad():
        for layer in range(LAYERS):
            getattr(reference, f"weight_ih_l{layer}").copy_(net.weight_ih[layer])
            getattr(reference, f"weight_hh_l{layer}").copy_(net.recurrent[layer].weight)
            getattr(reference, f"bias_ih_l{layer}").copy_(net.bias[layer])
            getattr(reference, f"bias_hh_l{layer}").zero_()
    x = randn(B, T, I, seed=3, device=device)  # (B, T, I)
    state = random_state(net)
    out, final, _ = net.forward_steps(x, state)
    ref_out, ref_final = reference(x, state)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, ref_final, atol=1e-5, rtol=1e-5)


def test_orthogonal_modrelu_equals_a_hand_written_recurrence(device):
    # modReLU has no fused kernel (forward runs the step path), so check it against the formula itself:
    # h_t = sign(z) · relu(|z| + b), z = W_in x_t + b_in + W_h h_{t-1}, layer by layer.
    net = make_net("orthogonal", {"activation": "modrelu"}, device)
    randomise(net)
    x = randn(B, T, I, seed=3, device=device)  # (B, T, I)
    state = random_state(net)
    out, final = net(x, state)
    layer_input = x
    with torch.no_grad():
        for layer in range(LAYERS):
            w_in, b_in = net.weight_ih[layer], net.bias[layer]
            w_h, b_mod = net.recurrent[layer].weight, net.modrelu_bias[layer]
            h, hs = state[layer], []
            for t in range(T):
                z = layer_input[:, t] @ w_in.T + b_in + h @ w_h.T  # (B, H)
                h = torch.sign(z) * torch.clamp(z.abs() + b_mod, min=0)
                hs.append(h)
            layer_input = torch.stack(hs, dim=1)  # (B, T, H)
            torch.testing.assert_close(final[layer], h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, layer_input, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["forward", "forward_steps"])
def test_orthogonal_matrix_is_computed_once_per_forward_not_per_step(path):
    net = make_net("orthogonal", {})
    calls = []
    for linear in net.recurrent:
        linear.parametrizations.weight[0].register_forward_hook(lambda *_: calls.append(1))
    getattr(net, path)(torch.randn(B, 50, I))
    assert len(calls) == LAYERS  # once per layer, whatever T


def test_irnn_init_is_scaled_identity_zero_bias_small_inputs():
    torch.manual_seed(0)
    net = IRNN(I, 64, LAYERS, irnn_scale=0.5, input_init_std=1e-3)
    for layer in range(LAYERS):
        w_in, w_h, b_in, b_h = net.layer_weights(layer)
        torch.testing.assert_close(w_h, 0.5 * torch.eye(64), atol=0, rtol=0)
        assert torch.count_nonzero(b_in) == 0 and torch.count_nonzero(b_h) == 0
        assert 0.5e-3 < w_in.std().item() < 2e-3
    assert net.nonlinearity == "relu"


@pytest.mark.parametrize("radius", [0.5, 1.5])
def test_vanilla_spectral_radius_rescales_pytorchs_init(radius):
    torch.manual_seed(0)
    default = VanillaRNN(I, 32, LAYERS)
    torch.manual_seed(0)
    scaled = VanillaRNN(I, 32, LAYERS, spectral_radius=radius)
    for layer in range(LAYERS):
        w_h, w_default = scaled.layer_weights(layer)[1], default.layer_weights(layer)[1]
        assert torch.linalg.eigvals(w_h).abs().max().item() == pytest.approx(radius, rel=1e-5)
        ratio = w_h / w_default  # the same matrix, scaled: one ratio everywhere
        torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0, 0].item()))
        torch.testing.assert_close(scaled.layer_weights(layer)[0], default.layer_weights(layer)[0])  # W_in kept


@pytest.mark.parametrize("forget_bias", [1.0, 2.5, -0.5])
def test_lstm_forget_bias_total_equals_the_option(forget_bias):
    torch.manual_seed(0)
    net = LSTM(I, H, LAYERS, forget_bias=forget_bias)
    forget = slice(H, 2 * H)  # torch's gate order (i, f, g, o)
    for layer in range(LAYERS):
        _, _, b_in, b_h = net.layer_weights(layer)
        torch.testing.assert_close(b_in[forget] + b_h[forget], torch.full((H,), forget_bias), atol=0, rtol=0)
        # The other gates keep torch's uniform init.
        others = torch.cat([b_in[:H], b_in[2 * H :]])  # (3H,)
        assert others.std() > 0 and others.abs().max() <= 1 / H**0.5


def test_lstm_forget_bias_none_keeps_torchs_init():
    # Same seed, same draws: every tensor equals a plain nn.LSTM's, bit for bit.
    torch.manual_seed(0)
    net = LSTM(I, H, LAYERS, forget_bias=None)
    torch.manual_seed(0)
    reference = nn.LSTM(I, H, LAYERS, batch_first=True)
    ours, theirs = net.rnn.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("forget_bias", [1.0, 3.0])
def test_lstm_forget_bias_changes_the_forget_block_of_the_biases_and_nothing_else(forget_bias):
    torch.manual_seed(0)
    net = LSTM(I, H, LAYERS, forget_bias=forget_bias)
    torch.manual_seed(0)
    reference = nn.LSTM(I, H, LAYERS, batch_first=True).state_dict()
    forget = torch.zeros(4 * H, dtype=torch.bool)
    forget[H : 2 * H] = True  # torch's gate order (i, f, g, o)
    for name, value in net.rnn.state_dict().items():
        if name.startswith("bias_"):
            expected = torch.where(forget, forget_bias if name.startswith("bias_ih") else 0.0, reference[name])
        else:
            expected = reference[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)


def orthogonality_error(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.T @ w - torch.eye(w.shape[0], device=w.device)).item()


@pytest.mark.parametrize("orthogonal_map", ["matrix_exp", "cayley"])
@pytest.mark.parametrize("orthogonal_init", ["henaff", "cayley", "random"])
def test_orthogonal_w_h_stays_orthogonal_under_large_steps(orthogonal_init, orthogonal_map, device):
    torch.manual_seed(0)
    net = OrthogonalRNN(I, 16, 1, orthogonal_init=orthogonal_init, orthogonal_map=orthogonal_map).to(device)
    before = net.recurrent[0].weight.detach().clone()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    x = randn(4, 10, I, seed=3, device=device)  # (B, T, I)
    target = randn(4, 10, 16, seed=4, device=device)  # (B, T, H)
    for _ in range(100):
        optimizer.zero_grad()
        out, _ = net(x)  # (B, T, H)
        ((out - target) ** 2).mean().backward()
        optimizer.step()
    w = net.recurrent[0].weight.detach()
    assert (w - before).abs().max() > 0.1  # it really moved
    assert orthogonality_error(w) < 1e-5


def block_diagonal_2x2(w: torch.Tensor) -> list[torch.Tensor]:
    """The 2×2 diagonal blocks of w, after checking that everything off those blocks is zero."""
    n = w.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool)
    for k in range(0, n - 1, 2):
        mask[k : k + 2, k : k + 2] = True
    if n % 2:
        mask[-1, -1] = True
    assert torch.count_nonzero(w[~mask]) == 0
    return [w[k : k + 2, k : k + 2] for k in range(0, n - 1, 2)]


@pytest.mark.parametrize("n", [64, 65])
def test_henaff_init_is_block_rotations_with_uniform_angles(n):
    torch.manual_seed(0)
    w = henaff_matrix(n)
    assert orthogonality_error(w) < 1e-5
    blocks = block_diagonal_2x2(w)
    if n % 2:
        assert w[-1, -1] == 1
    angles = torch.stack([torch.atan2(b[1, 0], b[0, 0]) for b in blocks])
    for b in blocks:  # rotations [[c, -s], [s, c]]
        assert b[0, 0] == b[1, 1] and b[0, 1] == -b[1, 0]
    # U(-π, π): all four quadrants occur among 32 angles (fails with probability ~4·(3/4)^32).
    assert {int(q) for q in torch.floor(angles / (torch.pi / 2))} == {-2, -1, 0, 1}


def test_cayley_init_is_block_rotations_with_angles_in_first_quadrant():
    torch.manual_seed(0)
    w = cayley_init_matrix(64)
    assert orthogonality_error(w) < 1e-5
    for b in block_diagonal_2x2(w):
        # (I + A)^{-1}(I - A) with A = [[0, tan(θ/2)], [-tan(θ/2), 0]] is the rotation by θ ∈ [0, π/2].
        torch.testing.assert_close(b[0, 0], b[1, 1])
        torch.testing.assert_close(b[0, 1], -b[1, 0])
        assert 0 <= b[0, 0] <= 1 and b[1, 0] >= 0


@pytest.mark.parametrize("orthogonal_init, structured", [("henaff", True), ("cayley", True), ("random", False)])
def test_orthogonal_net_starts_from_the_chosen_init(orthogonal_init, structured):
    torch.manual_seed(0)
    w = OrthogonalRNN(I, 8, 1, orthogonal_init=orthogonal_init).recurrent[0].weight.detach()  # (H, H)
    assert orthogonality_error(w) < 1e-5
    off_blocks = w.clone()
    for k in range(0, 8, 2):
        off_blocks[k : k + 2, k : k + 2] = 0
    assert (torch.count_nonzero(off_blocks) == 0) == structured


def test_build_model_rejects_an_option_the_cell_does_not_take():
    with pytest.raises(ConfigError, match=r"model\.forget_bias"):
        build_model("gru", I, H, forget_bias=1.0)
    with pytest.raises(ConfigError, match=r"model\.irnn_scale"):
        build_model("orthogonal", I, H, irnn_scale=2.0)
    with pytest.raises(ConfigError, match=r"model\.cell"):
        build_model("transformer", I, H)
    # None means "the cell's default", so unset options never trip the check.
    assert isinstance(build_model("gru", I, H, forget_bias=None, irnn_scale=None), GRU)


@pytest.mark.parametrize(
    "cls, kwargs, option",
    [
        (VanillaRNN, {"hidden_size": 0}, "model.hidden_size"),
        (LSTM, {"num_layers": 0}, "model.num_layers"),
        (GRU, {"dropout": 1.0}, "model.dropout"),
        (OrthogonalRNN, {"activation": "relu"}, "model.activation"),
    ],
)
def test_bad_sizes_raise_config_errors_naming_the_option(cls, kwargs, option):
    args = {"input_size": I, "hidden_size": H, "num_layers": 1, "dropout": 0.0, **kwargs}
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        cls(**args)
