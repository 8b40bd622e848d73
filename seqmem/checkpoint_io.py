"""Checkpoints written atomically: a kill or a full disk mid-write never leaves a truncated ``last.ckpt`` where a
good one was.

Lightning 2.6's own :class:`~lightning.pytorch.plugins.TorchCheckpointIO` serialises into memory, then writes through
an fsspec transaction whose temporary file sits in the system's temp folder (``/tmp``), not beside the checkpoint:
where that is another file system the commit is a copy into the checkpoint itself, so a full disk leaves it
truncated (and the temporary file behind). With ``save_last=True`` ``last.ckpt`` is a second save through the same
plugin; with ``save_last="link"`` :class:`~lightning.pytorch.callbacks.ModelCheckpoint` deletes ``last.ckpt`` and
then links (or, where links are refused, copies) it anew, so a kill between the two leaves none.

:class:`AtomicCheckpointIO` streams ``torch.save`` into a temporary file beside the checkpoint and renames it into
place (:mod:`seqmem.atomic`); every checkpoint goes through it, whoever saves (``ModelCheckpoint``, the
non-finite guard's stop, ``trainer.save_checkpoint``). :class:`AtomicModelCheckpoint` makes the link of
``save_last="link"`` in one rename too. ``seqmem`` installs both; a Python user gets them with::

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()], callbacks=[AtomicModelCheckpoint(save_last=True)])
"""

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO
from typing_extensions import override

from seqmem import atomic
from seqmem.errors import WriteError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the checkpoint, fsync, then rename it over the checkpoint.

    A failed save raises :class:`~seqmem.errors.WriteError` naming the checkpoint and the cause, and leaves the
    previous file of that name as it was. Remote paths (``s3://``, ...) are saved by Lightning's own code.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=False)
        >>> type(trainer.strategy.checkpoint_io).__name__
        'AtomicCheckpointIO'
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)  # its own errors for storage_options
            return
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WriteError.of(error, path.parent) from error
        with atomic.replaced(path) as file:
            torch.save(checkpoint, file)


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, whose ``save_last="link"`` replaces ``last.ckpt`` in one rename, and which
    removes the temporary files of killed writes from the run's folder tree when a fit starts.

    Every argument is ModelCheckpoint's. With ``save_last=True`` (what ``seqmem`` uses) ``last.ckpt`` is a save
    like any other, atomic under :class:`AtomicCheckpointIO`; with ``"link"`` the new link (or copy, where links
    are refused) is made beside ``last.ckpt`` and renamed over it, so a kill at any moment leaves the old link or
    the new one.
    """

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero:
            self._remove_stale_temps(trainer)

    def _remove_stale_temps(self, trainer: L.Trainer) -> None:
        """Remove the temporary files that killed writes left in this run's folder tree: the logger's root (all
        its ``version_N`` folders) and the checkpoint folder; a kill leaves one (up to a checkpoint's size) that
        no later write of the same file would remove when later runs go to new folders. Those of writes under way
        in other runs stay (:func:`seqmem.atomic.remove_stale_temps`)."""
        roots = {getattr(trainer.logger, "root_dir", None), self.dirpath}
        for root in roots - {None}:
            if isinstance(get_filesystem(root), LocalFileSystem) and os.path.isdir(root):
                atomic.remove_stale_temps(root)

    @staticmethod
    @override
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)  # as Lightning does: a folder cannot be renamed over
            atomic.link(filepath, linkpath)
        trainer.strategy.barrier()
