"""Where diagnostics write: every Lightning logger attached to the run, each in its own way.

Scalars reach every logger through its ``log_metrics``, as Lightning's own ``LearningRateMonitor`` does, so a run
with a CSV, MLflow or W&B logger holds the same tags as its TensorBoard events. Images (a heatmap as an (H, W, 3)
uint8 array) go to each logger's own image API, and to a PNG file beside the logs of one that has none. The
custom-scalars layout, which organises TensorBoard's dashboard, exists only in TensorBoard.

All three functions are for global rank 0 only: callers skip the other ranks (Lightning's loggers are rank-zero
already), so writing adds no collective operation to a DDP run.
"""

import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.image import imsave
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard.summary import scalar

from seqmem.atomic import replaced
from seqmem.errors import WriteError

__all__ = ["log_scalars", "log_image", "log_layout"]

# The loggers already warned about having no folder for images: one warning per logger, not one per image.
_WARNED_NO_LOG_DIR: "weakref.WeakSet[Logger]" = weakref.WeakSet()


def log_scalars(loggers: Sequence[Logger], values: Mapping[str, Union[Tensor, float]], step: int) -> None:
    """Write every value to every logger at ``step``, with one device-to-host copy for all tensor values together.

    A tensor value is read as float32 (a 64-true run's float64 norms too), so that a tag holds the same number in
    every precision and every logger; a Python number is written as it is. A TensorBoard logger gets the scalar
    summaries ``add_scalar(tag, value, step)`` writes, all in one event; every other logger
    ``log_metrics(values, step)``.

    Args:
        loggers: the run's loggers (``trainer.loggers``).
        values: tag -> a one-element tensor (on one device, all of them) or a number.
        step: the x-axis value, the optimizer step (``trainer.global_step``).

    Example:
        >>> import tempfile, torch
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     logger = CSVLogger(folder)
        ...     log_scalars([logger], {"grad_norm/total": torch.tensor(0.5), "clip/clipped": 0.25}, step=3)
        ...     logger.experiment.metrics
        [{'grad_norm/total': 0.5, 'clip/clipped': 0.25, 'step': 3}]
    """
    tensors = [value for value in values.values() if isinstance(value, Tensor)]
    # One stack and one .tolist(): a single synchronisation with the device, where an .item() per value would wait
    # on it once for each.
    host = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).tolist() if tensors else [])
    numbers = {tag: next(host) if isinstance(value, Tensor) else value for tag, value in values.items()}
    if not numbers:
        return
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # The writer's own summaries, not log_metrics: log_metrics would put the logger's `prefix` before each
            # tag, and the custom-scalars layout's charts (log_layout) name the tags as they are. All values in one
            # event, as add_scalar would write them one by one: each event is a hand-off to the writer's thread,
            # and that hand-off, not the write, is what a scalar costs (about 4x less per value in one event).
            summary = Summary(value=[value for tag, number in numbers.items() for value in scalar(tag, number).value])
            logger.experiment._get_file_writer().add_summary(summary, step)
        else:
            logger.log_metrics(numbers, step)


def log_image(loggers: Sequence[Logger], tag: str, image: np.ndarray, step: int) -> None:
    """Write an RGB image to every logger at ``step``, through the logger's own image API.

    - TensorBoard: ``add_image(tag, image, step, dataformats="HWC")``;
    - MLflow: the artifact ``images/<tag>/step_<step>.png`` of the logger's run;
    - W&B: ``WandbLogger.log_image`` under the key ``tag``;
    - any other logger (CSV, a user's own): the file ``<log_dir>/images/<tag>/step_<step>.png``, each ``/`` of
      the tag a folder; a logger without a ``log_dir`` gets no image, and one warning saying so.

    Args:
        loggers: the run's loggers (``trainer.loggers``).
        tag: the image's name, e.g. ``grad_time/layer0/heatmap``.
        image: (H, W, 3) uint8 RGB.
        step: the x-axis value, the optimizer step (``trainer.global_step``).

    Raises:
        WriteError: a PNG file or its folder could not be written, naming it and the OS's reason.

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     logger = CSVLogger(folder)
        ...     log_image([logger], "grad_time/heatmap", np.zeros((4, 6, 3), np.uint8), step=5)
        ...     (Path(logger.log_dir) / "images" / "grad_time" / "heatmap" / "step_5.png").is_file()
        True
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            # A fixed artifact path per (tag, step), the same layout as the PNG files of other loggers; MLflow's
            # key/step form would name each file by a timestamp and a random id.
            logger.experiment.log_image(logger.run_id, image, artifact_file=f"images/{tag}/step_{step}.png")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image], step=step)
        else:
            _save_png(logger, tag, image, step)


def log_layout(loggers: Sequence[Logger], layout: dict) -> None:
    """Write TensorBoard's custom-scalars layout to every TensorBoard logger; other loggers have no such thing.

    Args:
        loggers: the run's loggers (``trainer.loggers``).
        layout: {category: {chart title: ["Multiline", [tag regex, ...]]}}, as ``SummaryWriter.add_custom_scalars``
            takes it.

    Example:
        >>> import tempfile
        >>> from lightning.pytorch.loggers import TensorBoardLogger
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     logger = TensorBoardLogger(folder)
        ...     log_layout([logger], {"grad_norm": {"total": ["Multiline", ["^grad_norm/total$"]]}})
        ...     logger.finalize("success")  # closes the event file before its folder goes
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_custom_scalars(layout)


def _save_png(logger: Logger, tag: str, image: np.ndarray, step: int) -> None:
    """``image`` as ``<log_dir>/images/<tag>/step_<step>.png`` of ``logger``, written whole or not at all; a warning
    (once per logger) instead where the logger has no ``log_dir``."""
    log_dir = logger.log_dir
    if log_dir is None:
        if logger not in _WARNED_NO_LOG_DIR:
            _WARNED_NO_LOG_DIR.add(logger)
            rank_zero_warn(f"seqmem writes no images to {type(logger).__name__}: it has no log_dir")
        return
    path = Path(log_dir, "images", *tag.split("/"), f"step_{step}.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError.of(error, path.parent) from error
    with replaced(path) as file:
        imsave(file, image, format="png")
