"""Every diagnostic on models seqmem did not write (tests/user_models.py), against independent computations.

The reference for each form: the user's module in float64 with its recurrent layers unrolled by hand — torch's
own cell kernels (``torch.lstm_cell``, ``torch.gru_cell``, ``torch.rnn_tanh_cell``, ``torch.rnn_relu_cell``) with
the module's weights, step by step in Python, ``retain_grad`` on every h_t — and ``torch.autograd.functional
.jacobian`` for the step Jacobians. seqmem's step functions appear nowhere in the references.
"""

import copy
from dataclasses import dataclass, field
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from torch.autograd.functional import jacobian
from user_models import MGU, ReluRegressor, Seq2Seq, Tagger, WordLM, lm_data, regression_data, seq2seq_data, tagger_data

from seqmem.callbacks import (
    ClippingEvents,
    GradientNorms,
    InputSensitivity,
    JacobianSpectrum,
    RecurrentSpectrum,
    TimestepGradients,
    gradient_horizon,
    hidden_grad_norms,
    model_spectra,
    sensitivity_norms,
)
from seqmem.callbacks.jacobian import initial_frame
from seqmem.errors import ConfigError
from seqmem.views import view_of

# ---- the hand-unrolled reference ----------------------------------------------------------------------------


def cell_kernel(module: nn.Module, weights: dict[str, Tensor]) -> Callable:
    """One step of torch's own cell kernel for ``module``'s kind: (x (B, I), (h, c)) -> (h, c) (c unused but LSTM)."""
    w = [weights[n] for n in ("weight_ih", "weight_hh")] + [weights.get(n) for n in ("bias_ih", "bias_hh")]
    mode = getattr(module, "mode", None) or {nn.LSTMCell: "LSTM", nn.GRUCell: "GRU"}.get(type(module))
    if mode is None:  # nn.RNNCell
        mode = "RNN_RELU" if module.nonlinearity == "relu" else "RNN_TANH"
    if mode == "LSTM":
        if "weight_hr" not in weights:
            return lambda x, state: torch.lstm_cell(x, state, *w)  # (B, H) each

        def projected(x, state):  # torch.lstm_cell has no projection: nn.LSTM's documented equations
            i, f, g, o = (x @ w[0].T + w[2] + state[0] @ w[1].T + w[3]).chunk(4, dim=1)
            c = f.sigmoid() * state[1] + i.sigmoid() * g.tanh()
            return (o.sigmoid() * c.tanh()) @ weights["weight_hr"].T, c  # (B, P), (B, H)

        return projected
    kernel = {"GRU": torch.gru_cell, "RNN_TANH": torch.rnn_tanh_cell, "RNN_RELU": torch.rnn_relu_cell}[mode]
    return lambda x, state: (kernel(x, state[0], *w), state[1])


@dataclass
class Layer:
    """What the hand-unrolled reference saw of one layer (or one direction, or a cell) at every step."""

    step: Callable = None  # torch's cell kernel with the layer's weights: (x, (h, c)) -> (h, c)
    h: list = field(default_factory=list)  # h_t, retain_grad, in the direction's own order
    before: list = field(default_factory=list)  # (h, c) each step started from
    x: list = field(default_factory=list)  # the layer's input at each step


@dataclass
class Record:
    """One recurrent module of the reference: its layers by index, and the inputs it was called with."""

    layers: dict = field(default_factory=lambda: defaultdict(Layer))
    inputs: list = field(default_factory=list)
    batch_first: bool = True  # the layout of a module's inputs (a cell's are (B, I))
    directions: int = 1
    lstm: bool = False  # the state is (h, c); else h alone


def hand_unrolled(module: nn.RNNBase, record: Record, leaf_inputs: bool) -> Callable:
    """A forward for ``module`` computed step by step by torch's cell kernels, kept in ``record``."""

    def forward(input, hx=None):
        input = input.detach().requires_grad_() if leaf_inputs else input
        record.inputs.append(input)
        x = input if module.batch_first else input.transpose(0, 1)  # (B, T, I)
        batch, length = x.shape[:2]
        directions, layers = 1 + module.bidirectional, module.num_layers
        sizes = (module.proj_size or module.hidden_size, module.hidden_size)
        if hx is None:
            hx = tuple(x.new_zeros(layers * directions, batch, size) for size in sizes)
        h0, c0 = hx if isinstance(hx, tuple) else (hx, torch.zeros_like(hx))
        finals_h, finals_c, layer_input = [], [], x
        for layer in range(layers):
            outputs = []
            for reverse in range(directions):
                index = layer * directions + reverse
                suffix = f"_l{layer}{'_reverse' if reverse else ''}"
                names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
                seen = record.layers[index]
                seen.step = cell_kernel(
                    module, {n: getattr(module, n + suffix) for n in names if hasattr(module, n + suffix)}
                )
                state, hs = (h0[index], c0[index]), [None] * length
                for t in reversed(range(length)) if reverse else range(length):
                    seen.before.append(state)
                    seen.x.append(layer_input[:, t])
                    state = seen.step(layer_input[:, t], state)
                    state[0].retain_grad()
                    seen.h.append(state[0])
                    hs[t] = state[0]
                outputs.append(torch.stack(hs, dim=1))
                finals_h.append(state[0])
                finals_c.append(state[1])
            layer_input = torch.cat(outputs, dim=-1)  # eval: no dropout between layers
        out = layer_input if module.batch_first else layer_input.transpose(0, 1)
        final = (torch.stack(finals_h), torch.stack(finals_c)) if module.mode == "LSTM" else torch.stack(finals_h)
        return out, final

    return forward


def keep_cell_calls(module: nn.RNNCellBase, record: Record, leaf_inputs: bool) -> None:
    """Hooks on a cell the model steps itself: each call's input, starting state and h (retain_grad) are kept."""
    seen = record.layers[0]
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    seen.step = cell_kernel(module, {n: getattr(module, n) for n in names if getattr(module, n) is not None})

    def before(module, args):
        x = args[0].detach().requires_grad_() if leaf_inputs else args[0]
        state = args[1] if len(args) > 1 else None
        record.inputs.append(x)
        seen.x.append(x)
        seen.before.append(state if isinstance(state, tuple) else (state, torch.zeros_like(state)))
        return (x, *args[1:])

    def after(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h.retain_grad()
        seen.h.append(h)

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def unrolled_copy(model: L.LightningModule, leaf_inputs: bool = False) -> tuple[L.LightningModule, dict[str, Record]]:
    """A float64 eval copy of ``model`` whose recurrent modules run by hand; {tag prefix: record} of each."""
    model = copy.deepcopy(model).double().eval()
    records = {}
    for path, module in model.named_modules():
        if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
            record = records[f"{path.replace('.', '/')}/"] = Record(
                batch_first=getattr(module, "batch_first", True),
                directions=1 + getattr(module, "bidirectional", False),
                lstm=isinstance(module, (nn.LSTM, nn.LSTMCell)),
            )
            if isinstance(module, nn.RNNBase):
                module.forward = hand_unrolled(module, record, leaf_inputs)
            else:
                keep_cell_calls(module, record, leaf_inputs)
    return model, records


def reference_norms(model: L.LightningModule, batch) -> dict[str, Tensor]:
    """‖dL/dh_t‖ of every layer of every recurrent module from the hand-unrolled float64 model: {prefix: (L, T)}."""
    model, records = unrolled_copy(model)
    model.training_step(batch_to_double(batch), 0).backward()
    return {
        prefix: torch.stack(
            [torch.stack([h.grad.norm() for h in layer.h]) for _, layer in sorted(record.layers.items())]
        )
        for prefix, record in records.items()
    }


def batch_to_double(batch):
    return [b.double() if b.is_floating_point() else b for b in batch]


FORMS = {
    "word-lm (seq-first, stacked, tied, hidden carried)": (lambda: WordLM(dropout=0.2), lm_data),
    "seq2seq (bidirectional GRU + LSTMCell loop)": (Seq2Seq, seq2seq_data),
    "tagger (bidirectional, proj_size)": (Tagger, tagger_data),
    "relu RNN": (ReluRegressor, regression_data),
}


def first_batch(data: Callable):
    return next(iter(data()))


@pytest.mark.parametrize("form", FORMS)
def test_per_timestep_gradient_norms_equal_the_hand_unrolled_model(form: str) -> None:
    make, data = FORMS[form]
    torch.manual_seed(0)
    model = make()
    batch = first_batch(data)
    expected = reference_norms(model, batch)
    model = model.double().eval()
    norms = hidden_grad_norms(view_of(model), batch_to_double(batch))
    assert set(norms) == set(expected) and norms
    for prefix in expected:
        torch.testing.assert_close(norms[prefix], expected[prefix], rtol=1e-10, atol=0)
    assert all(p.grad is None for p in model.parameters()), "the probe must not write training gradients"


def reference_sensitivity(model: L.LightningModule, batch, projections: int, seed: int = 0) -> dict[str, Tensor]:
    """‖vᵀ ∂h_T/∂x_ℓ‖ root-mean-squared over the same seeded v and the batch, per recurrent module and direction of
    its top layer, from the hand-unrolled model with leaf inputs: {prefix: (D, T)}."""
    model, records = unrolled_copy(model, leaf_inputs=True)
    model.training_step(batch_to_double(batch), 0)
    curves = {}
    for prefix, record in records.items():
        rows = []
        for index in sorted(record.layers)[-record.directions :]:
            h_final = record.layers[index].h[-1]  # (B, H)
            generator = torch.Generator().manual_seed(seed)
            v = torch.randn((projections, *h_final.shape), generator=generator, dtype=h_final.dtype)
            squares = 0
            for p in range(projections):
                grads = torch.autograd.grad(h_final, record.inputs, v[p], retain_graph=True, allow_unused=True)
                grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, record.inputs, strict=True)]
                if len(grads) == 1 and grads[0].dim() == 3:  # a module's one call: (B, T, I) or (T, B, I)
                    g = grads[0] if record.batch_first else grads[0].transpose(0, 1)
                else:  # a cell's calls, (B, I) each
                    g = torch.stack(grads, dim=1)
                squares = squares + g.square().sum(dim=-1).mean(dim=0) / projections  # (T,)
            rows.append(squares.sqrt())
        if len(rows) > 1:
            rows[1] = rows[1].flip(0)  # the reverse direction in its own order
        curves[prefix] = torch.stack(rows)
    return curves


def reference_exponents(model: L.LightningModule, batch, k: int, seed: int = 0) -> dict[str, Tensor]:
    """Lyapunov exponents from the QR of the explicit product J_T ⋯ J_1 Q_0 along the hand-unrolled run, each J_t
    from ``torch.autograd.functional.jacobian`` of torch's cell kernel on one sequence's joint state: {prefix: (L, k)}."""
    model, records = unrolled_copy(model)
    model.training_step(batch_to_double(batch), 0)
    exponents = {}
    for prefix, record in records.items():
        rows = []
        for _, layer in sorted(record.layers.items()):
            sizes = (layer.before[0][0].shape[-1], layer.before[0][1].shape[-1])[: 1 + record.lstm]
            dim, batch_size = sum(sizes), layer.x[0].shape[0]
            products = initial_frame(dim, min(k, dim), seed, like=layer.x[0]).expand(batch_size, -1, -1)  # (B, D, k)
            for x, before in zip(layer.x, layer.before, strict=True):
                state = torch.cat(before[: len(sizes)], dim=-1).detach()  # (B, D)

                def step(s, x_b):
                    parts = s[None].split(sizes, dim=-1)
                    new = layer.step(x_b, parts if record.lstm else (parts[0], None))
                    return torch.cat(new[: len(sizes)], dim=-1)[0]

                jacobians = torch.stack(
                    [jacobian(lambda s, b=b: step(s, x[b : b + 1].detach()), state[b]) for b in range(batch_size)]
                )
                products = jacobians @ products  # (B, D, k)
            r_diag = torch.linalg.qr(products).R.diagonal(dim1=-2, dim2=-1)  # (B, k)
            rows.append(r_diag.abs().log().mean(dim=0) / len(layer.x))
        exponents[prefix] = torch.stack(rows)
    return exponents


@pytest.mark.parametrize("form", FORMS)
def test_input_sensitivity_equals_the_hand_unrolled_model_with_the_same_projections(form: str) -> None:
    make, data = FORMS[form]
    torch.manual_seed(0)
    model = make()
    batch = first_batch(data)
    expected = reference_sensitivity(model, batch, projections=3)
    model = model.double().eval()
    curves = sensitivity_norms(view_of(model), batch_to_double(batch), projections=3)
    assert set(curves) == set(expected)
    for prefix in expected:
        torch.testing.assert_close(curves[prefix], expected[prefix], rtol=1e-10, atol=0)


@pytest.mark.parametrize("form", FORMS)
def test_lyapunov_exponents_equal_explicit_jacobian_products_of_the_hand_unrolled_model(form: str) -> None:
    make, data = FORMS[form]
    torch.manual_seed(0)
    model = make()
    batch = first_batch(data)
    if isinstance(model, ReluRegressor):
        with torch.no_grad():  # positive weights on positive inputs: every unit active, no dead direction
            for param in model.rnn.parameters():
                param.abs_()
            model.rnn.weight_hh_l0.mul_(0.3)
    expected = reference_exponents(model, batch, k=3, seed=2)
    model = model.double().eval()
    spectra = model_spectra(view_of(model), batch_to_double(batch), k=3, power_iterations=2, seed=2)
    assert set(spectra) == set(expected)
    for prefix in expected:
        assert (expected[prefix] > -30).all(), "a degenerate product (dead units) would not test much"
        torch.testing.assert_close(spectra[prefix][0], expected[prefix], rtol=1e-8, atol=1e-10)
