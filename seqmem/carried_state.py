"""The hidden state a stateful task carries from one batch to the next, and its trip through checkpoints."""

from typing import Optional

import lightning as L
import torch
from torch import Tensor

from seqmem.models import State, detach_state, state_from_parts, state_parts


class CarriedState:
    """One carried state per stage ("train", "val", "test") for tasks whose batches continue streams (lm).

    The state flows on from batch to batch, detached, so the gradient stops at each batch boundary
    (truncated BPTT across batches). For a stateless task every batch starts from zeros and nothing is
    kept. The training state of every rank goes into checkpoints, so a resumed run continues the
    streams exactly; evaluation states live for one epoch.

    Args:
        enabled: the task is stateful; when False, :meth:`get` always returns None.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.states: dict[str, State] = {}

    def get(self, stage: str) -> Optional[State]:
        """The state to start ``stage``'s next batch from (None: zeros)."""
        return self.states.get(stage) if self.enabled else None

    def carry(self, stage: str, state: State) -> None:
        """Keep the final state of ``stage``'s last batch for its next one, detached."""
        if self.enabled:
            self.states[stage] = detach_state(state)

    def reset(self, stage: str) -> None:
        """Start ``stage``'s streams again from zeros (a new epoch, the end of an evaluation)."""
        self.states.pop(stage, None)

    def gather_train(self, module: L.LightningModule) -> Optional[list[Tensor]]:
        """Every rank's training state, for a checkpoint: one (W, L, B, H) CPU tensor per state part.

        A collective under DDP: every rank must call it.
        """
        state = self.states.get("train")
        if state is None:
            return None
        gathered = [module.all_gather(part) for part in state_parts(state)]  # (W, L, B, H), or (L, B, H) if W = 1
        if module.trainer.world_size == 1:
            gathered = [g.unsqueeze(0) for g in gathered]
        return [g.cpu() for g in gathered]

    def restore_train(self, saved: list[Tensor], rank: int, world_size: int, device: torch.device) -> None:
        """Take this rank's rows of :meth:`gather_train`'s output back as the training state.

        A checkpoint written by another number of ranks split the streams differently: its rows would
        not continue this rank's streams, so the state restarts from zeros instead.
        """
        if saved[0].shape[0] == world_size:
            self.states["train"] = state_from_parts(tuple(part[rank].to(device) for part in saved))  # (L, B, H) each
