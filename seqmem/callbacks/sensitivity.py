"""Forward sensitivity ‖∂h_T/∂x_ℓ‖ against the input position ℓ: does the state still remember x_ℓ?

The same product of Jacobians as the backward view, read the other way: ∂h_T/∂x_ℓ =
Π_{t=ℓ+1..T} J_t · ∂h_ℓ/∂x_ℓ. The Frobenius norm is estimated with random projections — for
v ~ N(0, I), E‖vᵀ ∂h_T/∂x_ℓ‖² = ‖∂h_T/∂x_ℓ‖_F² — so one backward pass gives every ℓ at once.
x_ℓ is the *embedded* input (the embedding output for token tasks, the features otherwise).
"""

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from seqmem.callbacks.base import Diagnosable, Layout, chart, write_scalars
from seqmem.callbacks.probe import CurveProbe, NormHeatmap
from seqmem.errors import require


def input_sensitivity(pl_module: Diagnosable, x: Tensor, projections: int, seed: int = 0) -> Tensor:
    """Estimated ‖∂h_T/∂x_ℓ‖_F of the last layer's final state, for every position ℓ.

    One step-by-step forward, then one ``autograd.grad`` batched over the ``projections`` Gaussian
    v of every sample (``is_grads_batched``: the backward is vmapped, the forward not repeated)
    gives every vᵀ ∂h_T/∂x_ℓ; the root-mean-square over projections and samples is the estimate
    (the RMS over samples of the per-sample Frobenius norm). v comes from its own seeded generator,
    so probes do not consume the training random stream and see the same projections.

    Args:
        pl_module: a SequenceModel (``embed``, ``net``).
        x: (B, T) token ids or (B, T, I) features.
        projections: random projections per sample.
        seed: seed of the projections.

    Returns:
        (T,) estimates, position ℓ = 0..T−1.
    """
    embedded = pl_module.embed(x).detach().requires_grad_()  # (B, T, E)
    _, _, hiddens = pl_module.net.forward_steps(embedded)
    h_final = hiddens[-1][-1]  # (B, H): last layer, last step
    generator = torch.Generator(device=h_final.device).manual_seed(seed)
    shape = (projections, *h_final.shape)
    v = torch.randn(shape, generator=generator, device=h_final.device, dtype=h_final.dtype)  # (P, B, H)
    (vjp,) = torch.autograd.grad(h_final, embedded, grad_outputs=v, is_grads_batched=True)  # (P, B, T, E) vᵀ ∂h_T/∂x_ℓ
    return vjp.square().sum(dim=-1).mean(dim=(0, 1)).sqrt()  # (T,)


class InputSensitivity(CurveProbe):
    """Logs ‖∂h_T/∂x_ℓ‖ on the fixed probe batch every N steps: ``sensitivity/heatmap`` (a figure, one
    row, input position ℓ left to right, colour log10(norm / max) from −``decades`` to 0, with axes,
    colour bar and the max in the title),
    ``sensitivity/final`` (ℓ = T), ``sensitivity/ratio_lag<k>`` (ℓ = T − k, relative to ℓ = T) and
    ``sensitivity/horizon`` (largest lag whose ratio is at least ``threshold``).

    Rank-local: rank 0 probes its own probe batch; nothing is reduced across ranks.

    Args:
        every_n_steps: probe on optimizer steps 0, N, 2N, ...
        probe_batch_size: rows of the first training batch kept as the probe batch.
        projections: random projections per sample of the Frobenius-norm estimate.
        lags: lags k = T − ℓ at which the ratio is logged (those < T).
        threshold: the horizon is the largest lag whose ratio is at least this.
        decades: orders of magnitude spanned by the heatmap's colour scale.
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        probe_batch_size: int = 32,
        projections: int = 2,
        lags: tuple[int, ...] = (1, 10, 30, 100),
        threshold: float = 1e-3,
        decades: float = 8.0,
    ):
        super().__init__(every_n_steps, probe_batch_size, lags, threshold, decades)
        require(projections >= 1, f"projections of InputSensitivity must be >= 1, got {projections}")
        self.projections = projections
        self.heatmap = NormHeatmap(decades, xlabel="input position ℓ", ylabel="", quantity="‖∂h_T/∂x_ℓ‖")

    @override
    def layout(self, pl_module: Diagnosable) -> Layout:
        return {
            "sensitivity": {
                "ratio at lags": chart(r"sensitivity/ratio_lag\d+"),
                "horizon": chart("sensitivity/horizon"),
                "final input": chart("sensitivity/final"),
            }
        }

    @override
    def probe_and_log(self, writer: SummaryWriter, pl_module: Diagnosable, x: Tensor, y: Tensor, step: int) -> None:
        norms = input_sensitivity(pl_module, x, self.projections).detach()  # (T,)
        write_scalars(writer, self.summarise("sensitivity", norms), step)
        writer.add_image("sensitivity/heatmap", self.heatmap.render(norms[None]), step, dataformats="HWC")
