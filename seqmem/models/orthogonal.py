"""Orthogonal-recurrent RNN: h_t = φ(W_h h_{t-1} + W_in x_t + b) with W_h orthogonal throughout training.

W_h is torch's orthogonal parametrisation: W_h = B · map(A - Aᵀ), with B a fixed orthogonal base
(the initial matrix) and ``map`` the matrix exponential or the Cayley transform of the skew-symmetric
A - Aᵀ. Every singular value of W_h is exactly 1, so ‖W_h v‖ = ‖v‖: the recurrence itself can neither
shrink nor blow up a gradient; only φ' can. The matrix is computed once per forward and handed to the
fused kernel (``torch.rnn_tanh``), never recomputed per time step.

Conventions: torch's Cayley map is (I + S/2)(I - S/2)^{-1} with S = A - Aᵀ; the scoRNN paper writes
(I + A)^{-1}(I - A) — same family, other sign and scale. Our ``cayley`` *init* follows scoRNN.
"""

import math
from typing import Literal, Optional, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from seqmem.errors import require_choice
from seqmem.models.base import RecurrentNet
from seqmem.models.state import State

# The allowed values of the cell's options, defined once: the constructor's signature (and so --help) and the
# checks below use these aliases.
Activation = Literal["tanh", "modrelu"]
OrthogonalInit = Literal["henaff", "cayley", "random"]
OrthogonalMap = Literal["cayley", "matrix_exp"]


def henaff_matrix(n: int) -> Tensor:
    """Block-diagonal 2×2 rotations with angles U(-π, π) (Henaff et al. 2016); (n, n)."""
    w = torch.eye(n)
    for k in range(0, n - 1, 2):
        theta = torch.empty(()).uniform_(-math.pi, math.pi)
        c, s = torch.cos(theta), torch.sin(theta)
        w[k : k + 2, k : k + 2] = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    return w


def cayley_init_matrix(n: int) -> Tensor:
    """scoRNN's init (Helfrich et al. 2018): (I + A)^{-1}(I - A), A skew block-diagonal with blocks
    [[0, s], [-s, 0]], s = sqrt((1 - cos θ) / (1 + cos θ)), θ ~ U(0, π/2); (n, n)."""
    a = torch.zeros(n, n)
    for k in range(0, n - 1, 2):
        cos = torch.cos(torch.empty(()).uniform_(0, math.pi / 2))
        s = torch.sqrt((1 - cos) / (1 + cos))
        a[k, k + 1], a[k + 1, k] = s, -s
    eye = torch.eye(n)
    return torch.linalg.solve(eye + a, eye - a)


def random_orthogonal_matrix(n: int) -> Tensor:
    """Haar-random orthogonal matrix (QR of a Gaussian); (n, n)."""
    return nn.init.orthogonal_(torch.empty(n, n))


ORTHOGONAL_INITS = {"henaff": henaff_matrix, "cayley": cayley_init_matrix, "random": random_orthogonal_matrix}
assert tuple(ORTHOGONAL_INITS) == get_args(OrthogonalInit), "one init function per OrthogonalInit value"


def modrelu(z: Tensor, bias: Tensor) -> Tensor:
    """modReLU for real inputs (Arjovsky et al. 2016): sign(z) · relu(|z| + b)."""
    return torch.sign(z) * torch.relu(z.abs() + bias)


class OrthogonalRNN(RecurrentNet):
    """RNN whose recurrent matrix stays exactly orthogonal (expRNN / scoRNN family).

    The skew-symmetric parameters behind W_h (:meth:`orthogonal_parameters`, role ``A_skew``) train at their own
    learning rate (``model.orthogonal_lr_scale``). W_h itself is computed, not a parameter: the gradient of the
    matrix each forward computed, dL/dW_h, is kept by a tensor hook (:meth:`derived_gradients`).

    Args:
        input_size: features per time step of the input.
        hidden_size: units per layer.
        num_layers: stacked recurrent layers.
        dropout: dropout between layers.
        activation: ``tanh`` (runs on the fused kernel) or ``modrelu`` (norm-preserving where active,
            as in uRNN/expRNN; no fused kernel exists, so it trains on the step-by-step path).
        orthogonal_init: initial W_h: ``henaff`` (2×2 rotations, angles U(-π, π)), ``cayley``
            (scoRNN), or ``random`` (Haar).
        orthogonal_map: ``cayley`` (scoRNN; the default) or ``matrix_exp`` (expRNN) from skew-symmetric
            to orthogonal. Both keep W_h exactly orthogonal; the matrix exponential's backward costs an
            exponential of a 2H × 2H matrix per training step: 1.20× nn.RNN's step time at T = 120,
            H = 128 on CPU, against 1.02× with Cayley's solves (scripts/benchmarks/benchmark_speed.py).
    """

    orthogonal = True
    options = ("activation", "orthogonal_init", "orthogonal_map")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        activation: Activation = "tanh",
        orthogonal_init: OrthogonalInit = "henaff",
        orthogonal_map: OrthogonalMap = "cayley",
    ):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        require_choice(activation, Activation, "model.activation")
        require_choice(orthogonal_init, OrthogonalInit, "model.orthogonal_init")
        require_choice(orthogonal_map, OrthogonalMap, "model.orthogonal_map")
        self.activation = activation
        bound = 1 / math.sqrt(hidden_size)  # nn.RNN's init for the input weights
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.weight_ih = nn.ParameterList(
            nn.Parameter(torch.empty(hidden_size, n).uniform_(-bound, bound)) for n in sizes
        )
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(hidden_size)) for _ in sizes)
        self.recurrent = nn.ModuleList()
        for _ in sizes:
            linear = orthogonal(nn.Linear(hidden_size, hidden_size, bias=False), orthogonal_map=orthogonal_map)
            # Assigning goes through right_inverse: the base becomes this matrix, the skew part zero.
            linear.weight = ORTHOGONAL_INITS[orthogonal_init](hidden_size)
            self.recurrent.append(linear)
        if activation == "modrelu":
            self.modrelu_bias = nn.ParameterList(
                nn.Parameter(torch.empty(hidden_size).uniform_(-0.01, 0.01)) for _ in sizes
            )
        # The fused kernel wants a second bias; a constant zero keeps one trainable bias per layer.
        self.register_buffer("zero_bias", torch.zeros(hidden_size), persistent=False)
        self.w_h_grads: dict[int, Tensor] = {}  # layer -> dL/dW_h, filled by _keep_w_h_grad's hooks

    def forward(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        if self.activation == "modrelu":
            return super().forward(x, state)  # the step-by-step path: no fused kernel has modReLU
        flat = [w for layer in range(self.num_layers) for w in self.layer_weights(layer)]
        if state is None:
            state = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)  # (L, B, H)
        # Same call nn.RNN makes, with W_h computed once here from its parametrisation.
        outputs, state = torch.rnn_tanh(x, state, flat, True, self.num_layers, self.dropout, self.training, False, True)
        return outputs, state  # (B, T, H), (L, B, H)

    def layer_weights(self, layer: int) -> tuple[Tensor, ...]:
        w_h = self.recurrent[layer].weight  # computed from the skew parameter, once per forward
        self._keep_w_h_grad(layer, w_h)
        weights = (self.weight_ih[layer], w_h, self.bias[layer], self.zero_bias)
        return weights + (self.modrelu_bias[layer],) if self.activation == "modrelu" else weights

    def _keep_w_h_grad(self, layer: int, w_h: Tensor) -> None:
        """Hook ``w_h`` so that backward passes leave dL/dW_h in ``w_h_grads[layer]``, accumulated as ``.grad`` is.

        The skew parameter's ``.grad`` is None until the first backward after ``zero_grad`` (set_to_none, torch's
        and Lightning's default) reaches it, and W_h's gradient is computed just before it: None then means a
        fresh gradient, anything else another backward to add, as under gradient accumulation.
        """
        if not w_h.requires_grad:  # no_grad (spectra, the skipped steps of truncated BPTT): nothing to keep
            return
        skew = self.recurrent[layer].parametrizations.weight.original

        def keep(grad: Tensor) -> None:
            kept = self.w_h_grads.get(layer)
            self.w_h_grads[layer] = grad.detach() if skew.grad is None or kept is None else kept + grad.detach()

        w_h.register_hook(keep)

    def step(self, weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        pre = x_proj + F.linear(state[0], weights[1])  # (B, H)
        return (modrelu(pre, weights[4]) if self.activation == "modrelu" else torch.tanh(pre),)

    def layer_parameters(self, layer: int) -> dict[str, nn.Parameter]:
        # The one trainable bias (b_h of the fused kernel is the constant zero_bias); W_h's parameter is A_skew.
        params = {
            "W_in": self.weight_ih[layer],
            "A_skew": self.recurrent[layer].parametrizations.weight.original,
            "b_in": self.bias[layer],
        }
        if self.activation == "modrelu":
            params["b_modrelu"] = self.modrelu_bias[layer]
        return params

    def derived_gradients(self, layer: int) -> dict[str, Tensor]:
        return {"W_h": self.w_h_grads[layer]} if layer in self.w_h_grads else {}

    def orthogonal_parameters(self) -> list[nn.Parameter]:
        return [linear.parametrizations.weight.original for linear in self.recurrent]
