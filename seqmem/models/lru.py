"""The Linear Recurrent Unit (Orvieto et al. 2023): a diagonal complex linear recurrence in a deep nonlinear block.

One layer: z_t = LayerNorm(u_t), x_t = λ ⊙ x_{t−1} + γ ⊙ (B z_t), y_t = Re(C x_t) + D ⊙ z_t, then
u_t ← u_t + dropout(GLU(dropout(GELU(y_t)))) with GLU(v) = W₁v ⊙ σ(W₂v); an input encoder maps the features to the
model width first. λ = exp(−exp(ν) + i·exp(θ)) keeps abs(λ) = exp(−exp(ν)) < 1 for every ν, and
γ = sqrt(1 − abs(λ)²) keeps the state's variance that of the input under white noise, whatever abs(λ).

The recurrence's step Jacobian is diag(λ), the same at every step: the gradient through time is a product of
known eigenvalues, λ_i^k at lag k. Every complex number is kept as a real pair (re, im): the parameters are real
tensors (optimizers, DDP, checkpoints and the gradient norms treat them as any other), and the state a layer
carries is (B, 2N) with the pairs interleaved, (re₀, im₀, re₁, im₁, ...), so that each complex unit is a 2×2
rotation-scaling block [[a, −b], [b, a]] of the real step Jacobian, a + ib = λ_i.

Training runs the recurrence as a chunked parallel scan (:func:`diagonal_scan`), the diagnostics as a step path
(:func:`lru_step`); a test keeps the two equal.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import require
from seqmem.models.base import RecurrentNet
from seqmem.models.state import State
from seqmem.models.steps import LayerTrajectory, run_steps


def complex_pairs(re: Tensor, im: Tensor) -> Tensor:
    """(…, N) real and imaginary parts -> (…, 2N) interleaved pairs (re₀, im₀, re₁, im₁, ...)."""
    return torch.stack((re, im), dim=-1).flatten(-2)  # (…, 2N)


def complex_parts(pairs: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`complex_pairs`: (…, 2N) -> real and imaginary parts, (…, N) each."""
    parts = pairs.unflatten(-1, (-1, 2))  # (…, N, 2)
    return parts[..., 0], parts[..., 1]


def lru_step(weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """x_t = λ ⊙ x_{t−1} + γ ⊙ (B z_t) on interleaved real pairs: weights (Re λ, Im λ), each (N,); x_proj and the
    state (B, 2N)."""
    lam_re, lam_im = weights
    re, im = complex_parts(state[0])  # (B, N) each
    p_re, p_im = complex_parts(x_proj.to(lam_re.dtype))  # (B, N) each
    return (complex_pairs(lam_re * re - lam_im * im + p_re, lam_re * im + lam_im * re + p_im),)  # (B, 2N)


#: Positions per chunk of :func:`diagonal_scan`: log₂ C passes within chunks, then a scan over T / C chunk ends. 8 was
#: the fastest of 8, 16, 32 and 64 at T = 100 and 1000 on CPU (float32, N = 64).
CHUNK = 8


def prefix_scan(a: Tensor, p: Tensor) -> Tensor:
    """Every x_t = a ⊙ x_{t−1} + p_t from x_0 = 0 along dim −2, as a parallel prefix scan (Hillis–Steele).

    After the pass with offset d, position t holds Σ_{s=t−2d+1..t} a^{t−s} p_s; doubling d each pass reaches the
    whole prefix in ⌈log₂ T⌉ passes, each one elementwise update of all positions.

    Args:
        a: (N,) complex.
        p: (…, T, N) complex inputs p_t.

    Returns:
        (…, T, N) the states x_1 … x_T.
    """
    offset, length = 1, p.shape[-2]
    while offset < length:
        p = p + a * F.pad(p[..., :-offset, :], (0, 0, offset, 0))  # position t reads t − d; the first d read zeros
        a = a * a  # a^{2d}
        offset *= 2
    return p


def diagonal_scan(lam_re: Tensor, lam_im: Tensor, p_re: Tensor, p_im: Tensor) -> tuple[Tensor, Tensor]:
    """Every x_t = λ ⊙ x_{t−1} + p_t from x_0 = 0, as a chunked parallel scan: no loop over time.

    The sequence is cut into chunks of :data:`CHUNK` positions, scanned all at once (:func:`prefix_scan`); the
    chunks' last states are scanned across chunks with λ^C, and each position adds λ^{j+1} times the state its chunk
    started from (j its place in the chunk). That is log₂ C + log₂(T / C) passes, most of them over T / C positions
    only, rather than log₂ T over all T. Complex numbers live only in here: what comes in and goes out is real.

    Args:
        lam_re: (N,) real parts of λ.
        lam_im: (N,) imaginary parts of λ.
        p_re: (B, T, N) real parts of the inputs p_t.
        p_im: (B, T, N) imaginary parts of the inputs p_t.

    Returns:
        real and imaginary parts of x_1 … x_T, (B, T, N) each.
    """
    batch, length, units = p_re.shape
    size = min(CHUNK, length)
    lam = torch.complex(lam_re, lam_im)  # (N,)
    p = torch.complex(p_re.to(lam_re.dtype), p_im.to(lam_re.dtype))  # (B, T, N); autocast may hand half precision
    p = F.pad(p, (0, 0, 0, -length % size)).view(batch, -1, size, units)  # (B, T/C, C, N), zeros after the end
    within = prefix_scan(lam, p)  # (B, T/C, C, N) each chunk from a zero state
    ends = prefix_scan(lam**size, within[:, :, -1])  # (B, T/C, N) the state at each chunk's end
    starts = F.pad(ends[:, :-1], (0, 0, 1, 0))  # (B, T/C, N) the state before each chunk: zero before the first
    powers = lam ** torch.arange(1, size + 1, device=lam.device, dtype=lam_re.dtype)[:, None]  # (C, N) λ^{j+1}
    x = (within + powers * starts[:, :, None]).flatten(1, 2)[:, :length]  # (B, T, N)
    return x.real, x.imag


class LRULayer(nn.Module):
    """One deep-LRU block's parameters and its parts around the recurrence (see :class:`LRU`).

    Args:
        width: H, the model width (the block's input and output).
        units: N, complex units of the recurrence.
        r_min: smallest initial abs(λ).
        r_max: largest initial abs(λ).
        max_phase: initial phases arg λ are drawn in [0, max_phase].
        input_normalization: scale B's output by γ = sqrt(1 − abs(λ)²) (learned, as log γ); off: γ = 1.
        dropout: dropout after the GELU and after the GLU.
    """

    def __init__(
        self, width: int, units: int, r_min: float, r_max: float, max_phase: float, input_normalization: bool,
        dropout: float,
    ):  # fmt: skip
        super().__init__()
        self.norm = nn.LayerNorm(width)
        # abs(λ)² uniform on the ring [r_min², r_max²]: abs(λ) distributed by area.
        u = torch.rand(units)
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(u * (r_max**2 - r_min**2) + r_min**2)))
        self.theta_log = nn.Parameter(torch.log(max_phase * torch.rand(units)))
        if input_normalization:
            modulus = torch.exp(-torch.exp(self.nu_log.detach()))  # (N,)
            self.gamma_log = nn.Parameter(0.5 * torch.log(1 - modulus**2))
        self.B_re = nn.Parameter(torch.randn(units, width) / math.sqrt(2 * width))
        self.B_im = nn.Parameter(torch.randn(units, width) / math.sqrt(2 * width))
        self.C_re = nn.Parameter(torch.randn(width, units) / math.sqrt(units))
        self.C_im = nn.Parameter(torch.randn(width, units) / math.sqrt(units))
        self.D = nn.Parameter(torch.randn(width))
        self.glu = nn.Linear(width, 2 * width)  # W₁ and W₂ stacked
        self.dropout = dropout

    def eigenvalues(self) -> tuple[Tensor, Tensor]:
        """Re λ and Im λ, (N,) each: λ = exp(−exp(ν) + i·exp(θ))."""
        modulus = torch.exp(-torch.exp(self.nu_log))  # (N,)
        phase = torch.exp(self.theta_log)  # (N,)
        return modulus * torch.cos(phase), modulus * torch.sin(phase)

    def project(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """γ ⊙ (B z_t) for all t: (B, T, H) -> real and imaginary parts, (B, T, N) each."""
        p_re, p_im = F.linear(z, self.B_re), F.linear(z, self.B_im)  # (B, T, N) each
        if hasattr(self, "gamma_log"):
            gamma = torch.exp(self.gamma_log)  # (N,)
            p_re, p_im = gamma * p_re, gamma * p_im
        return p_re, p_im

    def block(self, z: Tensor, x_re: Tensor, x_im: Tensor) -> Tensor:
        """The block's addition to the residual stream: dropout(GLU(dropout(GELU(Re(C x_t) + D ⊙ z_t)))), (B, T, H).

        Args:
            z: (B, T, H) the normalised input the recurrence read.
            x_re: (B, T, N) real parts of the states x_1 … x_T.
            x_im: (B, T, N) imaginary parts.
        """
        y = F.linear(x_re, self.C_re) - F.linear(x_im, self.C_im) + self.D * z  # (B, T, H) Re(C x) + D ⊙ z
        y = F.dropout(F.gelu(y), self.dropout, self.training)
        value, gate = self.glu(y).chunk(2, dim=-1)  # (B, T, H) each
        return F.dropout(value * torch.sigmoid(gate), self.dropout, self.training)  # (B, T, H)


class LRU(RecurrentNet):
    """Deep Linear Recurrent Unit (Orvieto et al. 2023): an input encoder, then ``num_layers`` residual blocks
    LayerNorm → LRU → GELU → GLU, with dropout after the GELU and after the GLU of every block.

    The state of a layer is its N complex units as (B, 2N) interleaved real pairs; the torch-format state is
    (num_layers, B, 2N). The defaults are the paper's long-range settings (r_min 0.9, r_max 0.999, max_phase π/10).

    Args:
        input_size: features per time step of the input.
        hidden_size: H, the model width: the encoder's output, each block's input and output.
        num_layers: stacked blocks.
        dropout: dropout inside every block, after the GELU and after the GLU.
        complex_units: N, complex units of each layer's recurrence (its state is 2N real numbers); None: H.
        r_min: smallest initial abs(λ): abs(λ)² is drawn uniform in [r_min², r_max²] (uniform on the ring by area).
        r_max: largest initial abs(λ) (at most 1; abs(λ) < 1 holds for every value of the parameters).
        max_phase: the initial phase arg λ is drawn uniform in [0, max_phase].
        input_normalization: scale the input B z_t by γ = sqrt(1 − abs(λ)²), learned (as log γ) from that init, so
            that a unit with abs(λ) near 1 does not accumulate a state of variance 1/(1 − abs(λ)²); off: γ = 1.

    Example:
        >>> net = LRU(2, 8, complex_units=4)
        >>> outputs, state = net(torch.zeros(3, 5, 2))
        >>> tuple(outputs.shape), tuple(state.shape)
        ((3, 5, 8), (1, 3, 8))
    """

    options = ("complex_units", "r_min", "r_max", "max_phase", "input_normalization")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        complex_units: Optional[int] = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = math.pi / 10,
        input_normalization: bool = True,
    ):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        require(complex_units is None or complex_units >= 1, f"model.complex_units must be >= 1, got {complex_units}")
        require(
            0 <= r_min <= r_max <= 1, f"model.r_min and model.r_max need 0 <= r_min <= r_max <= 1, got {r_min}, {r_max}"
        )
        require(max_phase > 0, f"model.max_phase must be > 0, got {max_phase}")
        self.complex_units = complex_units or hidden_size
        self.encoder = nn.Linear(input_size, hidden_size)
        self.layers = nn.ModuleList(
            LRULayer(hidden_size, self.complex_units, r_min, r_max, max_phase, input_normalization, dropout)
            for _ in range(num_layers)
        )

    def forward(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """x (B, T, input_size) -> outputs (B, T, H), final state (L, B, 2N); the recurrence as a parallel scan."""

        def scan(layer: int, p_re: Tensor, p_im: Tensor, start: Tensor) -> tuple[Tensor, Tensor, None]:
            lam_re, lam_im = self.layer_weights(layer)
            s_re, s_im = complex_parts(start)  # (B, N) each
            # The initial state enters as λ x_0 added to the first input.
            p_re = torch.cat([p_re[:, :1] + (lam_re * s_re - lam_im * s_im).unsqueeze(1), p_re[:, 1:]], dim=1)
            p_im = torch.cat([p_im[:, :1] + (lam_re * s_im + lam_im * s_re).unsqueeze(1), p_im[:, 1:]], dim=1)
            return (*diagonal_scan(lam_re, lam_im, p_re, p_im), None)

        outputs, final, _ = self._run(x, state, scan)
        return outputs, final

    def layer_runs(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State, list[LayerTrajectory]]:
        def steps(layer: int, p_re: Tensor, p_im: Tensor, start: Tensor) -> tuple[Tensor, Tensor, LayerTrajectory]:
            run = run_steps(lru_step, self.layer_weights(layer), complex_pairs(p_re, p_im), (start,))
            return (*complex_parts(torch.stack(run.hiddens, dim=1)), run)  # (B, T, N) each

        return self._run(x, state, steps)

    def _run(self, x: Tensor, state: Optional[State], recurrence) -> tuple[Tensor, State, list[LayerTrajectory]]:
        """The network around the recurrence, shared by both paths; ``recurrence(layer, p_re, p_im, x_0)`` returns
        the states' parts (B, T, N) and the layer's run (None on the scan path)."""
        starts = self._unpack(state, x.shape[0], x)
        u = self.encoder(x)  # (B, T, H)
        finals, runs = [], []
        for index, layer in enumerate(self.layers):
            z = layer.norm(u)  # (B, T, H)
            x_re, x_im, run = recurrence(index, *layer.project(z), starts[index][0])  # (B, T, N) each
            u = u + layer.block(z, x_re, x_im)  # (B, T, H)
            finals.append((complex_pairs(x_re[:, -1], x_im[:, -1]),))  # (B, 2N)
            runs.append(run)
        return u, self._pack(finals), runs

    @property
    def state_width(self) -> int:
        """2N: each layer's state holds its N complex units as real pairs."""
        return 2 * self.complex_units

    @property
    def activation_width(self) -> int:
        """H + 2N: a block keeps its output (B, T, H) and its states' real and imaginary parts (B, T, N) each."""
        return self.hidden_size + 2 * self.complex_units

    def layer_weights(self, layer: int) -> tuple[Tensor, ...]:
        """(Re λ, Im λ) of one layer, (N,) each."""
        return self.layers[layer].eigenvalues()

    def step(self, weights: tuple[Tensor, ...], x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return lru_step(weights, x_proj, state)

    def layer_parameters(self, layer: int) -> dict[str, nn.Parameter]:
        block = self.layers[layer]
        roles = {"W_enc": self.encoder.weight, "b_enc": self.encoder.bias} if layer == 0 else {}
        roles |= {"norm_w": block.norm.weight, "norm_b": block.norm.bias}
        roles |= {name: param for name, param in block.named_parameters(recurse=False)}
        return roles | {"W_glu": block.glu.weight, "b_glu": block.glu.bias}

    def recurrent_matrices(self) -> dict[str, Tensor]:
        """The real step Jacobian of every layer: block-diagonal (2N, 2N), one [[a, −b], [b, a]] per λ = a + ib, whose
        eigenvalues are the λ_i and their conjugates (spectral radius max abs(λ)) and singular values the abs(λ_i)."""
        matrices = {}
        for layer in range(self.num_layers):
            lam_re, lam_im = self.layer_weights(layer)  # (N,) each
            blocks = torch.stack(
                [torch.stack([lam_re, -lam_im], -1), torch.stack([lam_im, lam_re], -1)], -2
            )  # (N, 2, 2)
            matrices[f"layer{layer}"] = torch.block_diag(*blocks)  # (2N, 2N)
        return matrices
