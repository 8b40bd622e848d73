"""Every Lightning logger hears the diagnostics: real TensorBoard, CSV, MLflow and W&B loggers written through
seqmem.loggers and read back from what they left on disk — values, steps, tags and image pixels.

MLflow and W&B are imported inside their tests (their import alone costs a second or more) and run fully offline:
MLflow on a local file store, W&B in offline mode with its settings, cache and run folders under tmp_path."""

import csv
import glob
import io
import json
import struct
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from seqmem.loggers import log_image, log_layout, log_scalars

# Two writes at two steps: tensors (float32, a float64 one, a (1,)-shaped one) and plain numbers. A tensor is read
# as float32; a Python number is written as it is, so only TensorBoard (which stores float32) rounds it.
WRITES = {
    0: {
        "grad_norm/total": torch.tensor(0.1),
        "grad_norm/layer0/W_h": torch.tensor(1 / 3, dtype=torch.float64),
        "lyapunov/max": torch.tensor([-1.5]),
        "clip/clipped": 0.2,
    },
    7: {
        "grad_norm/total": torch.tensor(2.5e-7),
        "grad_norm/layer0/W_h": torch.tensor(1e30, dtype=torch.float64),
        "lyapunov/max": torch.tensor([0.125]),
        "clip/clipped": 1,
    },
}
IMAGE_TAG = "grad_time/layer0/heatmap"


def host_value(value: Any) -> float:
    """What log_scalars hands a logger: a tensor rounded to float32, a number unchanged."""
    return float(np.float32(value.item())) if isinstance(value, torch.Tensor) else value


def float32(value: float) -> float:
    return float(np.float32(value))


def expected(rounding=lambda v: v) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of WRITES as a logger should hold them."""
    return {tag: [(step, rounding(host_value(values[tag]))) for step, values in WRITES.items()] for tag in WRITES[0]}


def images() -> dict[int, np.ndarray]:
    """A random (H, W, 3) uint8 image per step: every pixel must come back."""
    rng = np.random.default_rng(0)
    return {step: rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for step in WRITES}


def write_everything(loggers: list[Logger]) -> None:
    for step, values in WRITES.items():
        log_scalars(loggers, values, step)
        log_image(loggers, IMAGE_TAG, images()[step], step)


def png_pixels(data: bytes) -> np.ndarray:
    """The RGB pixels of a PNG; an alpha channel, where there is one, must be opaque."""
    decoded = np.asarray(Image.open(io.BytesIO(data)))  # (H, W, 3 or 4)
    if decoded.shape[-1] == 4:
        assert (decoded[..., 3] == 255).all()
    return decoded[..., :3]


def tensorboard_events(log_dir: str) -> EventAccumulator:
    accumulator = EventAccumulator(log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def tensorboard_scalars(accumulator: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


# ---- TensorBoard ------------------------------------------------------------------------------------------


def test_tensorboard_holds_what_the_writers_add_scalar_and_add_image_write(tmp_path: Path):
    # The logger's prefix must not reach the tags: the custom-scalars layout names them unprefixed.
    logger = TensorBoardLogger(tmp_path, name="seqmem", prefix="run")
    write_everything([logger])
    logger.finalize("success")
    # The reference: what the diagnostics wrote before, SummaryWriter's add_scalar/add_image of the same numbers.
    with SummaryWriter(str(tmp_path / "reference")) as writer:
        for step, values in WRITES.items():
            for tag, value in values.items():
                writer.add_scalar(tag, host_value(value), step)
            writer.add_image(IMAGE_TAG, images()[step], step, dataformats="HWC")

    logged, reference = tensorboard_events(logger.log_dir), tensorboard_events(str(tmp_path / "reference"))
    assert tensorboard_scalars(logged) == tensorboard_scalars(reference) == expected(float32)
    assert logged.Tags()["images"] == reference.Tags()["images"] == [IMAGE_TAG]
    for event, step in zip(logged.Images(IMAGE_TAG), WRITES, strict=True):
        assert event.step == step
        assert (event.width, event.height) == (7, 5)
        np.testing.assert_array_equal(png_pixels(event.encoded_image_string), images()[step])


def test_the_layout_goes_to_tensorboard_and_nowhere_else(tmp_path: Path):
    board, table = TensorBoardLogger(tmp_path / "tb"), CSVLogger(tmp_path / "csv")
    layout = {
        "grad_norm": {"total": ["Multiline", ["^grad_norm/total$"]]},
        "clip": {"fraction clipped": ["Multiline", ["^clip/clipped$", "^clip/clipped_fraction$"]]},
    }
    log_layout([board, table], layout)
    board.finalize("success")

    (event,) = tensorboard_events(board.log_dir).Tensors("custom_scalars__config__")
    written = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {
        category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
        for category in written.category
    }
    assert charts == {category: {t: c[1] for t, c in titles.items()} for category, titles in layout.items()}
    assert not (tmp_path / "csv").exists()  # the CSV logger was not even asked to make its folder


# ---- CSV and loggers of a user's own ----------------------------------------------------------------------


def test_csv_holds_every_value_and_images_are_png_files_beside_it(tmp_path: Path):
    logger = CSVLogger(tmp_path)
    write_everything([logger])
    logger.save()

    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    # A Python float prints as the shortest string that reads back as the same double: compared exactly.
    held = {tag: [(int(row["step"]), float(row[tag])) for row in rows] for tag in WRITES[0]}
    assert held == expected()
    for step in WRITES:
        png = Path(logger.log_dir, "images", "grad_time", "layer0", "heatmap", f"step_{step}.png")
        np.testing.assert_array_equal(png_pixels(png.read_bytes()), images()[step])


class FolderlessLogger(Logger):
    """A user's own logger that keeps its metrics in memory and has no folder (Logger.log_dir is None)."""

    def __init__(self):
        super().__init__()
        self.metrics: list[tuple[Optional[int], dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        self.metrics.append((step, dict(metrics)))


def test_a_logger_without_a_folder_gets_every_value_and_one_warning_for_its_images():
    logger = FolderlessLogger()
    with pytest.warns(UserWarning) as warnings:
        write_everything([logger])
        write_everything([logger])
    assert [str(w.message) for w in warnings if "log_dir" in str(w.message)] == [
        "seqmem writes no images to FolderlessLogger: it has no log_dir"
    ]
    once = [(step, {tag: host_value(value) for tag, value in values.items()}) for step, values in WRITES.items()]
    assert logger.metrics == once + once


def test_nothing_to_write_writes_nothing():
    logger = FolderlessLogger()
    log_scalars([logger], {}, 3)
    assert logger.metrics == []


# ---- MLflow -----------------------------------------------------------------------------------------------


@pytest.fixture
def offline_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow 3 refuses a file store unless allowed, and sends usage telemetry unless told not to.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")


def test_mlflow_holds_every_metric_history_and_the_images_as_artifacts(tmp_path: Path, offline_mlflow: None):
    pytest.importorskip("mlflow", reason="the loggers extra (pip install -e '.[loggers]') installs mlflow-skinny")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(experiment_name="seqmem", tracking_uri=uri)
    write_everything([logger])
    logger.finalize("success")

    client = MlflowClient(tracking_uri=uri)
    held = {
        tag: [(m.step, m.value) for m in client.get_metric_history(logger.run_id, tag)] for tag in WRITES[0]
    }  # MLflow stores doubles: the values come back exactly
    assert held == expected()
    folder = "images/" + IMAGE_TAG
    assert [a.path for a in client.list_artifacts(logger.run_id, folder)] == [
        f"{folder}/step_{step}.png" for step in sorted(WRITES)
    ]
    for step in WRITES:
        local = client.download_artifacts(logger.run_id, f"{folder}/step_{step}.png", str(tmp_path / "download"))
        np.testing.assert_array_equal(png_pixels(Path(local).read_bytes()), images()[step])


# ---- W&B --------------------------------------------------------------------------------------------------


def wandb_records(run_file: Path) -> list:
    """The records of a W&B run file (``run-<id>.wandb``), decoded with wandb's own protobufs.

    wandb no longer ships a Python reader of these files, so the framing is read here: a 7-byte header, then
    32 KiB blocks of chunks (LevelDB's log format), each chunk a 7-byte header (crc32c: uint32, length: uint16,
    kind: 1 whole, 2 first, 3 middle, 4 last) and its bytes; a block's last < 7 bytes are zero padding.
    """
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:7] == b":W&B\xe1\xbe\x00", "not a version-0 W&B run file"
    records, parts, at = [], [], 7
    while at + 7 <= len(data):
        if block - at % block < 7:
            at += block - at % block
            continue
        _, length, kind = struct.unpack("<IHB", data[at : at + 7])
        parts.append(data[at + 7 : at + 7 + length])
        at += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(b"".join(parts)))
            parts = []
    return records


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline, quiet, no crash reports, no git or code capture, no system-metrics sampler, and every folder
    # wandb would touch (settings, caches, artifacts) inside tmp_path rather than the home folder.
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_MACHINE_INFO": "true",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_wandb_offline_run_holds_every_value_and_the_images(tmp_path: Path, offline_wandb: None):
    pytest.importorskip("wandb", reason="the loggers extra (pip install -e '.[loggers]') installs wandb")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="seqmem", save_dir=str(tmp_path), offline=True)
    try:
        write_everything([logger])
    finally:
        # finish() ends the run, but wandb's service process may still be writing the run file: teardown() waits
        # for it to exit, so the file is whole when read and nothing of wandb outlives the test.
        wandb.finish()
        wandb.teardown()

    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in wandb_records(Path(run_file))
        if record.HasField("history")
    ]
    # Lightning's WandbLogger logs the step as trainer/global_step; wandb's own _step counts the log calls.
    held = {tag: [(row["trainer/global_step"], row[tag]) for row in rows if tag in row] for tag in WRITES[0]}
    assert held == expected()
    media = [row for row in rows if f"{IMAGE_TAG}/filenames" in row]
    assert [row["trainer/global_step"] for row in media] == list(WRITES)
    for row, step in zip(media, WRITES, strict=True):
        assert row[f"{IMAGE_TAG}/_type"] == "images/separated"
        (name,) = row[f"{IMAGE_TAG}/filenames"]
        png = Path(run_file).parent / "files" / name
        np.testing.assert_array_equal(png_pixels(png.read_bytes()), images()[step])


# ---- a fit with two loggers -------------------------------------------------------------------------------


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WeightProbe(L.Callback):
    """Writes the weight's norm and its gradient's on every optimizer step, a picture and a layout, as a diagnostic
    would."""

    def __init__(self):
        self.sent: dict[str, list[tuple[int, float]]] = {"probe/weight": [], "probe/grad": []}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_layout(trainer.loggers, {"probe": {"norms": ["Multiline", ["^probe/weight$", "^probe/grad$"]]}})

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        weight = pl_module.layer.weight
        values = {"probe/weight": weight.detach().norm(), "probe/grad": weight.grad.norm()}
        log_scalars(trainer.loggers, values, trainer.global_step)
        for tag, value in values.items():
            self.sent[tag].append((trainer.global_step, float32(value.item())))
        log_image(trainer.loggers, "probe/picture", images()[0], trainer.global_step)


def test_a_fit_with_csv_and_tensorboard_loggers_holds_the_same_scalars_in_both(tmp_path: Path):
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))  # (N, 3)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    probe = WeightProbe()
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=[CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")],
        callbacks=[probe],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regression(), data)
    table, board = trainer.loggers

    with open(Path(table.log_dir) / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    in_csv = {tag: [(int(r["step"]), float(r[tag])) for r in rows if r[tag]] for tag in probe.sent}
    in_tensorboard = {tag: values for tag, values in tensorboard_scalars(tensorboard_events(board.log_dir)).items()}
    assert [step for step, _ in probe.sent["probe/weight"]] == [0, 1, 2, 3]
    assert in_csv == probe.sent
    assert {tag: in_tensorboard[tag] for tag in probe.sent} == probe.sent
    assert "train/loss" in rows[0] and "train/loss" not in probe.sent  # Lightning's own logging goes on beside
    for step in range(4):
        png = Path(table.log_dir, "images", "probe", "picture", f"step_{step}.png")
        np.testing.assert_array_equal(png_pixels(png.read_bytes()), images()[0])
    assert [e.step for e in tensorboard_events(board.log_dir).Images("probe/picture")] == [0, 1, 2, 3]
