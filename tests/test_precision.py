"""Mixed precision: every cell trains under bf16-mixed with every diagnostic; gradient norms mean the same in
every precision (float32, after unscaling); probes run in full precision whatever autocast is on."""

import copy
import math
from functools import partial
from pathlib import Path
from typing import Optional

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmem.callbacks import (
    ClippingEvents,
    GradientNorms,
    InputSensitivity,
    NonFiniteGuard,
    RecurrentSpectrum,
    TimestepGradients,
)
from seqmem.errors import ConfigError
from seqmem.measures import probe_mode, timestep_grad_norms
from seqmem.models import MODELS
from seqmem.module import SequenceModel
from seqmem.tasks import CopyData

# bfloat16 keeps 8 significant bits: unit roundoff u = 2^-8 ≈ 0.4 %. Autocast rounds the operands of every
# matmul to it (forward and backward, accumulating in float32), so the gradient carries relative errors of a
# few u that partly cancel in its norm; at initialisation every cell here lands within 1 % of float32. 3 %
# (≈ 8 u) leaves room for that, and is still 10^4 times tighter than a gradient left scaled by 2^16.
BF16_RTOL = 0.03
# float16 keeps 11 bits (u ≈ 0.05 %): 0.5 % is ten of those, and proves the gradient was unscaled.
FP16_RTOL = 0.005
PROBE_ROWS = 4


def diagnostics() -> list[L.Callback]:
    """Every diagnostic, the probes on steps 0 and 2, and the guard."""
    return [
        GradientNorms(),
        ClippingEvents(),
        RecurrentSpectrum(every_n_steps=2),
        TimestepGradients(every_n_steps=2, probe_batch_size=PROBE_ROWS),
        InputSensitivity(every_n_steps=2, probe_batch_size=PROBE_ROWS),
        NonFiniteGuard(),
    ]


def model_and_data(cell: str, tbptt_steps: Optional[int], **options) -> tuple[SequenceModel, CopyData]:
    """A 2-layer model on copy (T = 5 + 20 = 25), seeded, with clipping so that clip/ tags are written."""
    L.seed_everything(0, verbose=False)
    data = CopyData(seq_len=5, batch_size=8)
    model = SequenceModel(
        data.spec,
        cell=cell,
        hidden_size=8,
        num_layers=2,
        embedding_size=4,
        tbptt_steps=tbptt_steps,
        gradient_clip_val=1.0,
        **options,
    )
    return model, data


def fit_and_read(root: Path, model: SequenceModel, data: CopyData, **precision) -> dict[str, dict[int, float]]:
    """Fit 3 steps with every diagnostic, logging every step; every scalar tag as {step: value}."""
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        log_every_n_steps=1,
        callbacks=diagnostics(),
        default_root_dir=str(root),
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **precision,
    )
    trainer.fit(model, data)
    events = EventAccumulator(str(root / "lightning_logs" / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def first_update_reference(model: SequenceModel, data: CopyData) -> tuple[float, torch.Tensor]:
    """Plain float32 autograd, no Lightning: the total gradient norm of the first update (the first chunk's under
    truncated BPTT) and ‖dL/dh_t‖ of the probe batch, from the untrained weights and the first batch."""
    model = copy.deepcopy(model)
    batch = next(iter(data.train_dataloader()))
    if model.hparams.tbptt_steps is None:
        loss = model.loss(model(batch["x"])[0], batch["y"])
    else:
        loss, _ = next(model.tbptt_chunks(batch["x"], batch["y"]))
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    probe = timestep_grad_norms(model.eval(), batch["x"][:PROBE_ROWS], batch["y"][:PROBE_ROWS])  # (L, T)
    return norm.item(), probe.detach()


@pytest.mark.parametrize("tbptt_steps", [None, 10], ids=["full", "tbptt"])
@pytest.mark.parametrize("cell", sorted(MODELS))
def test_bf16_mixed_trains_every_cell_with_every_diagnostic(tmp_path: Path, cell: str, tbptt_steps) -> None:
    model, data = model_and_data(cell, tbptt_steps)
    norm, probe = first_update_reference(model, data)
    tags = fit_and_read(tmp_path, model, data, precision="bf16-mixed")
    families = {tag.split("/")[0] for tag in tags}
    assert {"grad_norm", "clip", "spectral", "grad_time", "sensitivity", "nonfinite"} <= families
    assert all(math.isfinite(v) for values in tags.values() for v in values.values()), "a non-finite tag"
    assert tags["grad_norm/total"][0] == pytest.approx(norm, rel=BF16_RTOL)
    assert tags["nonfinite/skipped"] == {0: 0.0, 1: 0.0, 2: 0.0}
    # The probe ran in float32 on the same weights and batch: its values are float32's, not bf16's.
    for layer in range(2):
        assert tags[f"grad_time/layer{layer}/final"][0] == pytest.approx(probe[layer, -1].item(), rel=1e-5)
        assert tags[f"grad_time/layer{layer}/ratio_lag10"][0] == pytest.approx(
            (probe[layer, -11] / probe[layer, -1]).item(), rel=1e-5
        )


@pytest.mark.parametrize("tbptt_steps", [None, 10], ids=["full", "tbptt"])
def test_16_mixed_diagnostics_read_the_unscaled_gradient(tmp_path: Path, tbptt_steps) -> None:
    """Lightning's GradScaler multiplies the loss by 2^16 and unscales before on_before_optimizer_step (the
    CPU runs 16-mixed through the plugin; Trainer(precision="16-mixed") turns to bf16 on a CPU)."""
    model, data = model_and_data("lstm", tbptt_steps)
    norm, _ = first_update_reference(model, data)
    tags = fit_and_read(tmp_path, model, data, plugins=[MixedPrecision("16-mixed", "cpu")])
    assert tags["grad_norm/total"][0] == pytest.approx(norm, rel=FP16_RTOL)
    assert tags["clip/pre_norm"][0] == pytest.approx(norm, rel=FP16_RTOL)
    assert all(math.isfinite(v) for values in tags.values() for v in values.values()), "a non-finite tag"


def test_16_mixed_with_a_fused_optimizer_is_refused(tmp_path: Path) -> None:
    """A fused optimizer unscales inside its own step: the diagnostics would read gradients 2^16 too large."""
    model, data = model_and_data("gru", None, optimizer=partial(torch.optim.Adam, fused=True))
    with pytest.raises(ConfigError, match="precision 16-mixed with a fused Adam"):
        fit_and_read(tmp_path, model, data, plugins=[MixedPrecision("16-mixed", "cpu")])


@pytest.mark.parametrize("cell", ["vanilla", "lstm"])
def test_probe_mode_turns_cpu_bf16_autocast_off(cell: str) -> None:
    """Inside a bf16 autocast region the model's matmuls run in bf16; under probe_mode in float32, so the
    probe equals its float32 value bit for bit."""
    model, data = model_and_data(cell, None)
    batch = next(iter(data.train_dataloader()))
    x, y = batch["x"][:PROBE_ROWS], batch["y"][:PROBE_ROWS]
    h = torch.zeros(1, 8)  # (B, H)
    with probe_mode(model):
        exact = timestep_grad_norms(model, x, y)  # (L, T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.head(h).dtype == torch.bfloat16  # autocast is on in this region
        with probe_mode(model):
            assert model.head(h).dtype == torch.float32
            probed = timestep_grad_norms(model, x, y)
    torch.testing.assert_close(probed, exact, rtol=0, atol=0)
