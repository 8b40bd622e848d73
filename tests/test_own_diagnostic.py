"""The manual's worked example of a diagnostic of one's own (docs/snippets/last_state_norm.py, included in
docs/own-diagnostic.md), run in a real fit: what it logs equals ‖h_T‖ of torch's own RNN on the probe batch."""

import csv
import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "snippets" / "last_state_norm.py"


def load_example():
    spec = importlib.util.spec_from_file_location("last_state_norm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Regressor(L.LightningModule):
    """A user's own model: a 2-layer nn.RNN read out at its last step."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 5, num_layers=2, batch_first=True)
        self.head = nn.Linear(5, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.head(self.rnn(x)[0][:, -1]), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class Reference(L.Callback):
    """‖h_T‖ of each layer from torch's own RNN (its h_n) on the first training batch, at every step."""

    def __init__(self):
        self.first = None
        self.norms: dict[int, list[float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first is None:
            self.first = batch[0].clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        with torch.no_grad():
            h_n = pl_module.rnn(self.first)[1]  # (L, B, H)
        self.norms[trainer.global_step] = [h.norm().item() for h in h_n]


def test_the_worked_example_logs_the_last_hidden_state_norm_of_each_layer(tmp_path: Path):
    example = load_example()
    L.seed_everything(0)
    x, y = torch.randn(64, 7, 3), torch.randn(64, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    reference = Reference()
    logger = CSVLogger(str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=7,
        logger=logger,
        callbacks=[example.LastStateNorm(every_n_steps=3), reference],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(), loader)
    logged: dict[str, dict[int, float]] = {}
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        for row in csv.DictReader(file):
            for tag, value in row.items():
                if tag.startswith("last_state/") and value:
                    logged.setdefault(tag, {})[int(row["step"])] = float(value)
    assert set(logged) == {"last_state/rnn/layer0", "last_state/rnn/layer1"}
    for layer in (0, 1):
        curve = logged[f"last_state/rnn/layer{layer}"]
        assert sorted(curve) == [0, 3, 6]
        for step, value in curve.items():
            assert value == pytest.approx(reference.norms[step][layer], rel=1e-5), (layer, step)
    # The weights change between probes, so the values do too: the probe reads the current model.
    assert len(set(logged["last_state/rnn/layer1"].values())) == 3


def test_the_worked_example_refuses_a_model_without_a_recurrent_layer():
    from seqmem.errors import ConfigError
    from seqmem.views import view_of

    with pytest.raises(ConfigError, match="LastStateNorm"):
        load_example().LastStateNorm().attach(view_of(nn.Linear(2, 2)))
