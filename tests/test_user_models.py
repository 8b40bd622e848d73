"""Every diagnostic on models seqmem did not write (tests/user_models.py), against independent computations.

The reference for each form: the user's module in float64 with its recurrent layers unrolled by hand — torch's
own cell kernels (``torch.lstm_cell``, ``torch.gru_cell``, ``torch.rnn_tanh_cell``, ``torch.rnn_relu_cell``) with
the module's weights, step by step in Python, ``retain_grad`` on every h_t — and ``torch.autograd.functional
.jacobian`` for the step Jacobians. seqmem's step functions appear nowhere in the references.
"""

import copy
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import ray
import torch
import torch.nn.functional as F
import yaml
from conftest import fit_args
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from torch.autograd.functional import jacobian
from torch.utils.tensorboard import SummaryWriter
from user_models import MGU, ReluRegressor, Seq2Seq, Tagger, WordLM, lm_data, regression_data, seq2seq_data, tagger_data

from seqmem.callbacks import (
    ClippingEvents,
    GradientNorms,
    InputSensitivity,
    JacobianSpectrum,
    RecurrentSpectrum,
    TimestepGradients,
)
from seqmem.cli import main, run_cli
from seqmem.diagnose import Diagnostics, lyapunov_spectrum, sensitivity_curves, spectral_radii, timestep_gradients
from seqmem.errors import ConfigError
from seqmem.measures import gradient_horizon, hidden_grad_norms, initial_frame, model_spectra, sensitivity_norms
from seqmem.sweep import load_sweep, run_sweep
from seqmem.sweep.run import start_ray
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
    from ``torch.autograd.functional.jacobian`` of torch's cell kernel on one sequence's joint state:
    {prefix: (L, k)}."""
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

                def step(s, x_b, sizes=sizes, layer=layer, lstm=record.lstm):  # one sequence's J_t
                    parts = s[None].split(sizes, dim=-1)
                    new = layer.step(x_b, parts if lstm else (parts[0], None))
                    return torch.cat(new[: len(sizes)], dim=-1)[0]

                jacobians = torch.stack(
                    [jacobian(partial(step, x_b=x[b : b + 1].detach()), state[b]) for b in range(batch_size)]
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


# ---- a real fit through L.Trainer, read back from TensorBoard ------------------------------------------------


def every_diagnostic(every_n_steps: int = 2) -> list[L.Callback]:
    return [
        GradientNorms(),
        ClippingEvents(),
        RecurrentSpectrum(every_n_steps=every_n_steps),
        TimestepGradients(every_n_steps=every_n_steps),
        InputSensitivity(every_n_steps=every_n_steps, projections=3),
        JacobianSpectrum(every_n_steps=every_n_steps, k=2),
    ]


def fit(root: Path, model: L.LightningModule, data, callbacks: list, max_steps: int = 3, **trainer) -> L.Trainer:
    """The user's own ``L.Trainer(callbacks=[...]).fit(model, loader)``, logging every step under ``root``."""
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        log_every_n_steps=1,
        callbacks=callbacks,
        logger=TensorBoardLogger(str(root), name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer,
    )
    trainer.fit(model, data)
    return trainer


def events(root: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(root), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


FITS = {
    "word-lm": (lambda: WordLM(dropout=0.0), lm_data),  # dropout 0: the carried state after batch 0 is reproducible
    "seq2seq": (Seq2Seq, seq2seq_data),
    "tagger": (Tagger, tagger_data),
    "relu RNN": (ReluRegressor, regression_data),
}


@pytest.mark.parametrize("form", FITS)
def test_a_fit_logs_every_diagnostic_and_its_values_equal_the_hand_unrolled_model(tmp_path: Path, form: str) -> None:
    make, data = FITS[form]
    torch.manual_seed(0)
    model = make().double()
    batch = batch_to_double(first_batch(data))
    reference = copy.deepcopy(model).eval()
    if isinstance(model, WordLM):
        with torch.no_grad():
            reference.training_step(batch, 0)  # the probe at step 0 starts from the state batch 0 left behind
    norms = reference_norms(reference, batch)
    sensitivity = reference_sensitivity(reference, batch, projections=3)
    exponents = reference_exponents(reference, batch, k=2)

    fit(tmp_path, model, data(), every_diagnostic(), precision="64-true", gradient_clip_val=1.0)
    acc = events(tmp_path)
    logged = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    view = view_of(model)
    for prefix, recurrence in view.recurrences.items():
        for layer, name in enumerate(recurrence.layer_names()):
            curve = norms[prefix][layer]  # (T,)
            at = {key: logged[f"grad_time/{prefix}{name}/{key}"] for key in ("final", "ratio_lag1", "horizon")}
            assert list(at["final"]) == [0, 2]
            assert at["final"][0] == pytest.approx(curve[-1].item(), rel=1e-6)
            assert at["ratio_lag1"][0] == pytest.approx((curve[-2] / curve[-1]).item(), rel=1e-6)
            assert at["horizon"][0] == gradient_horizon(curve).item()
            for i in (0, 1):
                lam, expected = logged[f"lyapunov/{prefix}{name}/lambda_{i + 1}"][0], exponents[prefix][layer, i]
                if expected.isinf():  # dead ReLU units annihilate a direction: floored at ln(tiny) / T
                    assert lam < -100
                else:
                    assert lam == pytest.approx(expected.item(), rel=1e-5), (prefix, name, i)
        for block, matrix in view_of(reference).recurrences[prefix].recurrent_matrices().items():  # at step 0
            radius = torch.linalg.eigvals(matrix.detach()).abs().max().item()
            assert list(logged[f"spectral/{prefix}{block}/radius"]) == [0, 2]
            assert logged[f"spectral/{prefix}{block}/radius"][0] == pytest.approx(radius, rel=1e-5)
        for row, direction in zip(sensitivity[prefix], ("", "reverse/"), strict=False):
            assert logged[f"sensitivity/{prefix}{direction}final"][0] == pytest.approx(row[-1].item(), rel=1e-6)
        images = {tag for tag in acc.Tags()["images"]}
        assert {f"grad_time/{prefix}heatmap", f"sensitivity/{prefix}heatmap", f"lyapunov/{prefix}spectrum"} <= images
    # Every trainable parameter has a tag (tied weights once), and the tags add up to the total in quadrature.
    parts = [tag for tag in logged if tag.startswith("grad_norm/") and tag != "grad_norm/total"]
    assert len(parts) == len(list(model.parameters())) == len(view.parameter_tags())
    for step in (0, 1, 2):
        total = math.sqrt(sum(logged[tag][step] ** 2 for tag in parts))
        assert total == pytest.approx(logged["grad_norm/total"][step], rel=1e-5)
        assert logged["clip/pre_norm"][step] == pytest.approx(logged["grad_norm/total"][step], rel=1e-6)


def test_spectral_radii_are_the_eigenvalues_of_each_gate_block_of_weight_hh() -> None:
    torch.manual_seed(0)
    model = Seq2Seq()
    radii = spectral_radii(model)
    gru, cell = model.encoder, model.decoder
    expected = {}
    for suffix, name in (("_l0", "layer0"), ("_l0_reverse", "layer0_reverse")):
        for gate, block in zip("rzn", getattr(gru, f"weight_hh{suffix}").chunk(3), strict=True):
            expected[f"encoder/{name}/{gate}"] = block
    for gate, block in zip("ifgo", cell.weight_hh.chunk(4), strict=True):
        expected[f"decoder/layer0/{gate}"] = block
    assert set(radii) == set(expected)
    for key, block in expected.items():
        assert radii[key]["radius"].item() == pytest.approx(torch.linalg.eigvals(block.detach()).abs().max().item())
    # With proj_size the recurrence of h runs through W_hr: the square map W_hr · W_hh^gate (P × P).
    tagger = Tagger()
    w_hr, w_hh = tagger.lstm.weight_hr_l1_reverse, tagger.lstm.weight_hh_l1_reverse  # (P, H), (4H, P)
    square = (w_hr @ w_hh.chunk(4)[1]).detach()  # the forget gate's
    assert spectral_radii(tagger)["lstm/layer1_reverse/f"]["radius"].item() == pytest.approx(
        torch.linalg.eigvals(square).abs().max().item()
    )


# ---- closed forms on a user's nn.RNN -------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.7, 1.05])
def test_relu_rnn_with_w_lambda_identity_in_its_active_regime_has_ratios_lambda_to_the_lag(lam: float) -> None:
    # Positive inputs and weights keep every unit active (ReLU' = 1): J_t = λI exactly, so ‖dL/dh_{T−k}‖ = λ^k
    # ‖dL/dh_T‖ and every Lyapunov exponent is ln λ.
    torch.manual_seed(0)
    model = ReluRegressor().double().eval()
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(lam * torch.eye(6, dtype=torch.float64))
        model.rnn.weight_ih_l0.abs_()
        model.rnn.bias_ih_l0.abs_()
        model.rnn.bias_hh_l0.abs_()
    batch = batch_to_double(first_batch(regression_data))
    curve = hidden_grad_norms(view_of(model), batch)["rnn/"][0]  # (T,)
    lags = torch.arange(len(curve) - 1, -1, -1, dtype=torch.float64)
    torch.testing.assert_close(curve / curve[-1], lam**lags, rtol=1e-12, atol=0)
    exponents = model_spectra(view_of(model), batch, k=4)["rnn/"][0]
    torch.testing.assert_close(exponents, torch.full((1, 4), math.log(lam), dtype=torch.float64), rtol=0, atol=1e-12)


class TanhRegressor(ReluRegressor):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 6, batch_first=True)  # tanh


def test_tanh_rnn_with_w_lambda_q_and_tiny_inputs_decays_as_lambda_to_the_lag() -> None:
    torch.manual_seed(0)
    model = TanhRegressor().double().eval()
    q = nn.init.orthogonal_(torch.empty(6, 6, dtype=torch.float64))
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(0.8 * q)
        model.rnn.weight_ih_l0.mul_(1e-4)  # tanh stays in its linear regime, tanh' ≈ 1
        model.rnn.bias_ih_l0.zero_()
        model.rnn.bias_hh_l0.zero_()
    curve = hidden_grad_norms(view_of(model), batch_to_double(first_batch(regression_data)))["rnn/"][0]
    lags = torch.arange(len(curve) - 1, -1, -1, dtype=torch.float64)
    torch.testing.assert_close(curve / curve[-1], 0.8**lags, rtol=1e-6, atol=0)


# ---- what the probe differentiates, and that it changes nothing ----------------------------------------------


class LastStepTagger(Tagger):
    """A Tagger with the one optional hook: the probes differentiate the last step's loss alone."""

    def probe_loss(self, batch):
        x, y = batch
        out, _ = self.lstm(x)
        return F.cross_entropy(self.head(out[:, -1]), y[:, -1])


def test_the_probe_loss_is_loss_fn_else_the_modules_probe_loss_else_its_training_step() -> None:
    torch.manual_seed(0)
    model = LastStepTagger().double().eval()
    batch = batch_to_double(first_batch(tagger_data))
    hooked = hidden_grad_norms(view_of(model), batch)["lstm/"]
    passed = hidden_grad_norms(view_of(model, lambda m, b: LastStepTagger.probe_loss(m, b)), batch)["lstm/"]
    training = hidden_grad_norms(view_of(model, lambda m, b: m.training_step(b, 0)), batch)["lstm/"]
    torch.testing.assert_close(hooked, passed, rtol=0, atol=0)
    assert not torch.allclose(hooked, training)
    plain = copy.deepcopy(model)
    plain.__class__ = Tagger  # the same weights without the hook: the training_step's loss
    torch.testing.assert_close(hidden_grad_norms(view_of(plain), batch)["lstm/"], training, rtol=0, atol=0)
    # Under the last step's loss no readout reaches the earlier steps of the top forward layer: their gradient is
    # only what flows back through the recurrence, while the training loss reads every step out.
    assert (hooked[2, :-1] < training[2, :-1]).all()


def test_probes_leave_training_as_it_was_carried_state_dropout_and_all(tmp_path: Path) -> None:
    # WordLM carries self.hidden from batch to batch and drops out between its layers: a probe that left its own
    # hidden state behind, consumed the random stream, left eval mode or wrote .grad would change the weights.
    def train(root, callbacks):
        torch.manual_seed(0)
        model = WordLM(dropout=0.3)
        fit(root, model, lm_data(), callbacks, max_steps=3, gradient_clip_val=1.0)
        return model

    probed = train(tmp_path / "on", every_diagnostic(every_n_steps=1))
    plain = train(tmp_path / "off", [])
    for a, b in zip(probed.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(probed.hidden, plain.hidden, rtol=0, atol=0)
    assert [e.step for e in events(tmp_path / "on").Scalars("grad_time/rnn/layer1/horizon")] == [0, 1, 2]


# ---- refusals: one line, naming what was found and what is supported ----------------------------------------


class Plain(L.LightningModule):
    """No recurrent layer at all."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x[:, -1]).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class HomemadeLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.gates = nn.Linear(6, 12)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], 3)
        for t in range(x.shape[1]):
            h = torch.tanh(self.gates(torch.cat([x[:, t], h], dim=1))[:, :3])
        return h


class Homemade(Plain):
    def __init__(self):
        super().__init__()
        self.rnn = HomemadeLSTM()


class Manual(ReluRegressor):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(super().training_step(batch, batch_idx))
        optimizer.step()


def refusal(tmp_path: Path, model: L.LightningModule, callback: L.Callback) -> str:
    with pytest.raises(ConfigError) as error:
        fit(tmp_path, model, regression_data(), [callback], max_steps=1)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_the_gradient_norms_need_no_recurrent_layer(tmp_path: Path) -> None:
    fit(tmp_path, Plain(), regression_data(), [GradientNorms(), ClippingEvents()], max_steps=2, gradient_clip_val=0.5)
    logged = {tag: [e.value for e in events(tmp_path).Scalars(tag)] for tag in events(tmp_path).Tags()["scalars"]}
    assert {"grad_norm/total", "grad_norm/net/weight", "grad_norm/net/bias", "clip/pre_norm"} <= set(logged)
    parts = [logged["grad_norm/net/weight"][-1], logged["grad_norm/net/bias"][-1]]
    assert math.hypot(*parts) == pytest.approx(logged["grad_norm/total"][-1], rel=1e-6)


def test_a_model_with_no_recurrent_layer_is_refused_by_the_recurrent_diagnostics(tmp_path: Path) -> None:
    message = refusal(tmp_path, Plain(), RecurrentSpectrum())
    assert message.startswith(
        "RecurrentSpectrum needs a recurrent layer in Plain, and it holds none; supported: nn.RNN"
    )
    assert not (tmp_path / "checkpoints").exists()
    message = refusal(tmp_path, Homemade(), TimestepGradients())
    assert "its rnn (HomemadeLSTM) cannot be stepped; supported: nn.RNN, nn.GRU, nn.LSTM" in message


def test_a_manually_optimised_module_needs_a_probe_loss(tmp_path: Path) -> None:
    message = refusal(tmp_path, Manual(), InputSensitivity())
    assert message.startswith("InputSensitivity: Manual optimises manually") and "probe_loss(batch)" in message
    assert "loss 'last'" in refusal(tmp_path, ReluRegressor(), TimestepGradients(loss="last"))
    # With the loss given, the same module is probed.
    fit(
        tmp_path / "given",
        Manual(),
        regression_data(),
        [InputSensitivity(every_n_steps=1, loss_fn=lambda m, b: m.head(m.rnn(b[0])[0][:, -1]).sum())],
        max_steps=1,
    )
    assert events(tmp_path / "given").Scalars("sensitivity/rnn/horizon")


# ---- a cell of one's own, through the CLI and seqmem sweep ------------------------------------------------------

MGU_ARGS = [
    *(
        "--config adding --model.cell user_models.MGU --model.hidden_size 5 --data.seq_len 8 --data.batch_size 8"
    ).split(),
    *("--data.train_batches 2 --data.val_batches 1 --trainer.max_steps 2 --trainer.val_check_interval 2").split(),
    "--trainer.log_every_n_steps",
    "1",
    "--model.cell_options",
    '{"forget_init": 1.0}',
]


def hand_mgu_norms(net: MGU, head: nn.Linear, x: Tensor, y: Tensor) -> Tensor:
    """‖dL/dh_t‖ of a one-layer MGU written out by hand (its equations, retain_grad on every h_t), MSE at T."""
    w_in, w_h, b = (p.detach().double().requires_grad_() for p in (net.w_in[0], net.w_h[0], net.bias[0]))
    (w_f, w_n), (u_f, u_n), (b_f, b_n) = w_in.chunk(2), w_h.chunk(2), b.chunk(2)
    h, hs = torch.zeros(x.shape[0], net.hidden_size, dtype=torch.float64), []
    for t in range(x.shape[1]):
        f = torch.sigmoid(x[:, t] @ w_f.T + b_f + h @ u_f.T)
        h = (1 - f) * h + f * torch.tanh(x[:, t] @ w_n.T + b_n + (f * h) @ u_n.T)
        h.retain_grad()
        hs.append(h)
    pred = (h @ head.weight.detach().double().T + head.bias.detach().double()).squeeze(-1)
    F.mse_loss(pred, y.double()).backward()
    return torch.stack([h.grad.norm() for h in hs])


def test_a_cell_of_ones_own_trains_through_the_cli_with_every_diagnostic(workdir: Path) -> None:
    initial = run_cli(["--config", "adding", *MGU_ARGS], run=False)  # the same seed: the initial weights
    assert isinstance(initial.model.net, MGU) and initial.model.net.bias[0][0].item() == 1.0  # cell_options
    batch = next(iter(initial.datamodule.train_dataloader()))
    expected = hand_mgu_norms(initial.model.net, initial.model.head, batch["x"].double(), batch["y"])
    run_cli(fit_args(workdir, "--config", "adding", *MGU_ARGS))
    acc = events(workdir / "lightning_logs" / "version_0")
    tags = set(acc.Tags()["scalars"])
    assert {"grad_norm/layer0/W_in", "grad_norm/layer0/W_h", "grad_norm/layer0/b", "spectral/layer0/f/radius"} <= tags
    assert {"lyapunov/layer0/lambda_1", "sensitivity/horizon", "val/loss"} <= tags
    (final,) = acc.Scalars("grad_time/layer0/final")
    assert final.step == 0 and final.value == pytest.approx(expected[-1].item(), rel=1e-5)
    (ratio,) = acc.Scalars("grad_time/layer0/ratio_lag1")
    assert ratio.value == pytest.approx((expected[-2] / expected[-1]).item(), rel=1e-5)


def test_a_cell_path_that_is_not_a_cell_is_one_line(workdir: Path, capsys) -> None:
    for cell, says in (("user_models.Tagger", "is not one"), ("user_models.Nothing", "cannot be imported")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", "adding", "--model.cell", cell])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert (
            err.startswith("seqmem: error: model.cell must be one of vanilla, orthogonal, irnn, gru, lstm, lru")
            and says in err
        )
    assert not (workdir / "lightning_logs").exists()


def test_a_cell_of_ones_own_runs_in_a_sweep(tmp_path: Path, monkeypatch) -> None:
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", tests)  # where the user's cell lives, for Ray's workers too
    config = {
        "base": "adding",
        "budget": 2,
        "set": {
            "model.hidden_size": 5, "data.seq_len": 8, "data.batch_size": 8, "data.train_batches": 2,
            "data.val_batches": 1, "trainer.val_check_interval": 2,
        },
        "grid": {"model": {"mgu": {"model.cell": "user_models.MGU"}, "lstm": {"model.cell": "lstm"}}},
        "record": {"horizon_init": "grad_time/layer0/horizon"},
    }  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    start_ray(num_cpus=2)
    try:
        rows = run_sweep(load_sweep(str(tmp_path / "sweep.yaml")), tmp_path / "out")
    finally:
        ray.shutdown()
    assert [(row.name, row.status, row.steps) for row in rows] == [
        ("model=mgu", "not solved", 2),
        ("model=lstm", "not solved", 2),
    ]
    assert all(row.record["horizon_init"] is not None for row in rows)


# ---- without Lightning: the same numbers under the same tags -------------------------------------------------


def test_a_hand_written_loop_writes_the_callbacks_tags_and_numbers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lightning_model = Tagger()
    loop_model = copy.deepcopy(lightning_model)
    fit(tmp_path / "lightning", lightning_model, tagger_data(), every_diagnostic(every_n_steps=1), max_steps=2)

    def loss_fn(model, batch):
        x, y = batch
        return F.cross_entropy(model.head(model.lstm(x)[0]).transpose(1, 2), y)

    writer = SummaryWriter(str(tmp_path / "loop"))
    probes = [c for c in every_diagnostic(every_n_steps=1) if not isinstance(c, (GradientNorms, ClippingEvents))]
    diagnostics = Diagnostics(loop_model, loss_fn, writer, probes=probes)
    optimizer = loop_model.configure_optimizers()
    loader = iter(tagger_data())
    first = None
    for step in range(2):
        batch = next(loader)
        first = first or batch  # the callbacks keep probing the first batch
        optimizer.zero_grad()
        loss_fn(loop_model, batch).backward()
        diagnostics.gradients(step)
        diagnostics.probe(first, step)
        optimizer.step()
    writer.flush()

    fitted, looped = events(tmp_path / "lightning"), events(tmp_path / "loop")
    families = ("grad_norm", "grad_time", "sensitivity", "lyapunov", "jacobian", "spectral")
    ours = {tag for tag in fitted.Tags()["scalars"] if tag.split("/")[0] in families}
    assert ours == set(looped.Tags()["scalars"]) and len(ours) > 50
    for tag in ours:
        a, b = ([(e.step, e.value) for e in acc.Scalars(tag)] for acc in (fitted, looped))
        assert [s for s, _ in a] == [s for s, _ in b] == [0, 1], tag
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6), tag
    assert set(looped.Tags()["images"]) == set(fitted.Tags()["images"])
    # And the functions return the curves those tags summarise.
    curves = timestep_gradients(loop_model, first, loss_fn)
    assert set(curves) == {f"lstm/layer{l}{d}" for l in (0, 1) for d in ("", "_reverse")}
    assert set(sensitivity_curves(loop_model, first, loss_fn)) == {"lstm/", "lstm/reverse/"}
    assert lyapunov_spectrum(loop_model, first, loss_fn, k=2)["lstm/layer1"][0].shape == (2,)
    assert all(p.grad is not None for p in loop_model.parameters())  # the loop's own gradients, kept


def test_a_probe_loss_is_given_by_import_path_through_the_cli(workdir: Path) -> None:
    probes = [
        {"class_path": "seqmem.callbacks.TimestepGradients", "init_args": {"every_n_steps": 1, "probe_batch_size": 4}},
        {
            "class_path": "seqmem.callbacks.TimestepGradients",
            "init_args": {"every_n_steps": 1, "probe_batch_size": 4, "loss_fn": "user_models.final_loss_times_two"},
        },
    ]
    args = "--config adding --data.seq_len 6 --model.hidden_size 4 --trainer.max_steps 1".split()
    for name, probe in zip(("default", "twice"), probes, strict=True):
        run_cli(fit_args(workdir / name, *args, "--trainer.callbacks", json.dumps([probe])))
    default, twice = (
        events(workdir / n / "lightning_logs" / "version_0").Scalars("grad_time/layer0/final")
        for n in ("default", "twice")
    )
    assert twice[0].value == pytest.approx(2 * default[0].value, rel=1e-6)
