"""What a checkpoint of :class:`~seqmem.module.SequenceModel` holds beyond Lightning's own, for an exact resume: the
carried lm state of every rank and the random states that dropout draws from. Lightning restores none of them."""

from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from seqmem.carried_state import CarriedState

#: The checkpoint keys this module writes and reads.
RESUME_KEYS = ("cpu_rng_state", "cuda_rng_state", "carried_train_state")


def save_resume_state(module: L.LightningModule, carried: CarriedState, checkpoint: dict[str, Any]) -> None:
    """Add the carried training state of every rank (a collective, so every rank calls it) and the CPU's and every
    visible GPU's random state to ``checkpoint`` (the module's ``on_save_checkpoint``)."""
    state = carried.gather_train(module)
    if state is not None:
        checkpoint["carried_train_state"] = state
    checkpoint["cpu_rng_state"] = torch.get_rng_state()
    if torch.cuda.is_available():
        checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state_all()


def restore_resume_state(saved: dict[str, Any], module: L.LightningModule, carried: CarriedState) -> None:
    """Apply what :func:`save_resume_state` wrote (``saved``: its keys, None where absent) when training starts:
    the trainer (ranks, device) is known only then, and a model loaded for analysis (``load_from_checkpoint``)
    must not reset the global random state."""
    if saved["cpu_rng_state"] is not None:
        torch.set_rng_state(saved["cpu_rng_state"])
    restore_cuda_rng_state(saved["cuda_rng_state"])
    if saved["carried_train_state"] is not None:
        trainer = module.trainer
        carried.restore_train(saved["carried_train_state"], trainer.global_rank, trainer.world_size, module.device)


def restore_cuda_rng_state(states: Optional[list[Tensor]]) -> None:
    """Give every visible GPU its random state back from a checkpoint (None: written without CUDA).

    A checkpoint from a machine with another number of GPUs cannot be matched device to device: the
    generators keep their seeded state, with a warning that the resumed run is not bit-exact.
    """
    if states is None or not torch.cuda.is_available():
        return
    if len(states) != torch.cuda.device_count():
        rank_zero_warn(
            f"the checkpoint holds the random state of {len(states)} GPUs, this machine has "
            f"{torch.cuda.device_count()}: GPU random states are not restored, so dropout differs from the original run"
        )
        return
    torch.cuda.set_rng_state_all(states)
