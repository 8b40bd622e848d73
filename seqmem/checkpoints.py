"""Which checkpoint a command may load: a readable seqmem checkpoint of the same task and model.

A checkpoint loads (``fit`` resumes it; ``validate``, ``test``, ``predict`` evaluate it) only into the model it
was trained as: the same task — its :class:`TaskSpec` (sizes, loss, readout, baseline, buckets), so the data
options that change it (the vocabulary, lexicon or corpus; copy's ``seq_len``, whose chance baseline depends on
it; agreement's ``max_len`` where it changes the distance buckets) — and the same architecture (:func:`architecture`:
the sizes and every cell option); and its weights must fit the model its settings describe (:func:`weights_mismatch`).
The command builds its model from its own config and options as always; nothing is taken from the checkpoint's
hyperparameters, so a value that disagrees is an error, never silently replaced.

Free to differ on resume: every ``trainer.*`` option (``max_steps``, ``val_check_interval``, callbacks, ...);
the optimisation options ``model.tbptt_steps``, ``model.gradient_clip_val``, ``model.gradient_clip_algorithm``;
and the data options that leave the TaskSpec as it was (``batch_size``, ``train_batches``, ``val_batches``,
``seed``, ``cache_dir``; the ``seq_len`` of adding and lm, on which no weight depends; agreement's ``min_len``,
``distance``, ``attractor_prob``). The optimizer and scheduler state, learning rates included, come back from the
checkpoint, so ``model.optimizer.*``, ``model.lr_scheduler.*`` and ``model.orthogonal_lr_scale`` act on a
fresh run only.
"""

from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import torch

from seqmem.errors import ConfigError, quote, require, shorten
from seqmem.models import registered_options
from seqmem.module import SequenceModel
from seqmem.tasks.spec import TaskDataModule, TaskSpec

#: The model options that define the network a checkpoint's weights belong to, besides the cells' own options.
ARCHITECTURE = ("cell", "hidden_size", "num_layers", "dropout", "embedding_size", "cell_options")


def architecture() -> tuple[str, ...]:
    """Every model option that defines the network: :data:`ARCHITECTURE` and the options of the cells in
    :data:`~seqmem.models.MODELS` (:func:`~seqmem.models.registered_options`), each of which shapes or
    initialises the cell it belongs to."""
    return ARCHITECTURE + tuple(registered_options())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The seqmem checkpoint at ``path``, loaded on the CPU (tensors and plain data only: ``weights_only``).

    Raises:
        ConfigError: naming ``ckpt_path`` when the file is missing, a directory, empty, truncated or unreadable, or
            not a checkpoint of a :class:`~seqmem.module.SequenceModel`.
    """
    where = quote(str(path))
    require(path.exists(), f"ckpt_path {where} does not exist")
    require(not path.is_dir(), f"ckpt_path {where} is a directory; pass a checkpoint file (.ckpt) or last")
    require(path.stat().st_size > 0, f"ckpt_path {where} is an empty file, not a checkpoint")
    try:
        # seqmem.module allows TaskSpec (in the hyperparameters) for every weights_only load, Lightning's too.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a truncated or foreign file: RuntimeError, EOFError, ...
        reason = shorten(" ".join(str(err).split()[:30]) or type(err).__name__)
        raise ConfigError(
            f"ckpt_path {where} is not a readable checkpoint (truncated, or another format): {reason}"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    require(
        isinstance(hparams, dict) and isinstance(hparams.get("task"), TaskSpec) and "state_dict" in checkpoint,
        f"ckpt_path {where} is not a seqmem checkpoint (it holds no SequenceModel hyperparameters)",
    )
    return checkpoint


def mismatch(checkpoint: dict[str, Any], model: SequenceModel, data: TaskDataModule) -> Optional[str]:
    """Why ``model`` (trained on ``data``) may not load ``checkpoint``, naming the option and both values; None if
    it may.

    Args:
        checkpoint: a checkpoint from :func:`load_checkpoint`.
        model: the model the command built from its config and options.
        data: the command's datamodule, whose options are named when the task differs.
    """
    saved = checkpoint["hyper_parameters"]
    for name in architecture():
        # .get on both sides: a checkpoint, or a model, from before a cell with new options joined the table.
        if saved.get(name) != model.hparams.get(name):
            mine, theirs = quote(model.hparams.get(name)), quote(saved.get(name))
            return f"was trained with model.{name} {theirs}, this command gives {mine}"
    task, saved_task = model.task, saved["task"]
    if task.name != saved_task.name:
        return f"was trained on the {saved_task.name} task, this command's data is the {task.name} task"
    for field in fields(TaskSpec):
        mine, theirs = getattr(task, field.name), getattr(saved_task, field.name)
        if mine != theirs:
            return (
                f"was trained on another {task.name} task: its {field.name} is {quote(theirs)}, this command's "
                f"{quote(mine)}{changed_data_options(checkpoint, data)}"
            )
    return None


def weights_mismatch(checkpoint: dict[str, Any], model: SequenceModel) -> Optional[str]:
    """Why the weights of ``checkpoint`` do not fit ``model``, built from the checkpoint's own settings (which
    :func:`mismatch` found equal to the command's); None when every weight is there in its shape.

    A checkpoint's settings and weights are written together, so they disagree only in a damaged or hand-made
    file; loading it would end in ``load_state_dict``'s traceback after the run folder is made.
    """
    saved = checkpoint["state_dict"]
    if not isinstance(saved, dict):
        return f"holds no weights: its state_dict is a {type(saved).__name__}, not a dict of tensors"
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    found = {name: tuple(value.shape) if isinstance(value, torch.Tensor) else None for name, value in saved.items()}
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    reshaped = [name for name in expected if name in found and found[name] != expected[name]]
    if not (missing or unexpected or reshaped):
        return None

    def some(names: list[str]) -> str:
        return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")

    count = "all" if len(missing) == len(expected) else f"{len(missing)} of the"
    parts = [f"{count} {len(expected)} weights missing ({some(missing)})"] if missing else []
    parts += [f"{len(unexpected)} unexpected ({some(unexpected)})"] if unexpected else []
    if reshaped:
        first = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape ({first} is {found[first]}, the settings make {expected[first]})"
        )
    cell = quote(model.hparams["cell"])
    return f"holds weights that do not fit the model its settings describe (model.cell {cell}): {'; '.join(parts)}"


def changed_data_options(checkpoint: dict[str, Any], data: TaskDataModule) -> str:
    """``" (data options that differ: data.seq_len 100 there, 200 here)"``, or "" when none does."""
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    changed = [
        f"data.{name} {quote(saved[name])} there, {quote(value)} here"
        for name, value in data.hparams.items()
        if not name.startswith("_") and name in saved and saved[name] != value  # _class_path: the task name says it
    ]
    return f" (data options that differ: {', '.join(changed)})" if changed else ""


def newest_match(root: Path, model: SequenceModel, data: TaskDataModule) -> tuple[Optional[Path], int]:
    """The newest ``*/checkpoints/last*.ckpt`` under ``root`` that ``model`` may load, and how many newer ones
    (another task or model, unreadable, or with weights that do not fit its settings) were passed over;
    ``(None, count)`` when none matches."""
    found = sorted(root.glob("*/checkpoints/last*.ckpt"), key=lambda path: path.stat().st_mtime, reverse=True)
    for passed, path in enumerate(found):
        try:
            checkpoint = load_checkpoint(path)
        except ConfigError:
            continue
        if mismatch(checkpoint, model, data) is None and weights_mismatch(checkpoint, model) is None:
            return path, passed
    return None, len(found)
