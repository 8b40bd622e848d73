"""Truncated backpropagation through time for :class:`~seqmem.module.SequenceModel` (``model.tbptt_steps``).

Each batch is cut into chunks of k steps and the model takes one optimizer step per chunk, so the training step
runs under Lightning's manual optimisation: it drives backward and the optimizer itself, and writes
``train/loss`` at the update it belongs to. The hidden state flows on across chunk boundaries, detached, and the
carried state of a stateful task (:class:`~seqmem.carried_state.CarriedState`) takes the last chunk's.
"""

from typing import TYPE_CHECKING, Iterator, Optional

import torch
from torch import Tensor

from seqmem.callbacks.base import logging_step
from seqmem.errors import require
from seqmem.models import State, detach_state

if TYPE_CHECKING:
    from seqmem.module import SequenceModel


class TruncatedBPTT:
    """Truncated BPTT in chunks of ``steps``: the chunks of a batch and the updates they make.

    Readout "all" tasks (copy, lm) take the loss of each chunk on its own targets; readout "last" tasks (adding,
    agreement) have a loss only at the final step, so the steps before the last ``steps`` only advance the state
    (no gradient could reach them) and each batch makes one update.

    Args:
        steps: chunk length k (``model.tbptt_steps``), >= 1.

    Raises:
        ConfigError: ``steps`` below 1.
    """

    def __init__(self, steps: int):
        require(steps >= 1, f"model.tbptt_steps must be >= 1 or null, got {steps}")
        self.steps = steps

    def chunks(
        self, model: "SequenceModel", x: Tensor, y: Tensor, state: Optional[State] = None
    ) -> Iterator[tuple[Tensor, State]]:
        """``model``'s truncated BPTT over one batch: yields ``(loss, state)`` once per update, in time order.

        The consumer runs backward (and the optimizer step) on each loss before asking for the next;
        the state is then detached, so no gradient crosses a chunk boundary while the forward values
        flow on unchanged: the last state yielded equals the uncut forward's final state.

        Args:
            model: the model whose forward pass and loss the chunks run.
            x: (B, T) token ids or (B, T, I) features.
            y: targets, (B,) for readout "last", (B, T) for readout "all".
            state: initial state (the carried state of a stateful task), zeros when None.
        """
        k, T = self.steps, x.shape[1]
        if model.task.readout == "last":
            # The only loss is at step T: the steps before the last k advance the state without a
            # gradient (none could reach them), then one update backpropagates through the last k.
            cut = max(T - k, 0)
            if cut:
                with torch.no_grad():
                    _, state = model.net(model.embed(x[:, :cut]), state)  # state after step cut
            pred, state = model(x[:, cut:], state)  # (B[, C])
            yield model.loss(pred, y), state
            return
        for start in range(0, T, k):
            pred, state = model(x[:, start : start + k], state)  # (B, k, C)
            yield model.loss(pred, y[:, start : start + k]), state
            state = detach_state(state)

    def training_step(self, model: "SequenceModel", batch: dict) -> None:
        """One batch of ``model``'s training: an optimizer step per chunk, the carried state handed on."""
        optimizer = model.optimizers()
        state = model.carried.get("train")
        for loss, state_after in self.chunks(model, batch["x"], batch["y"], state):
            optimizer.zero_grad()
            model.manual_backward(loss)
            self.log_update(model, loss)
            optimizer.step()  # runs on_before_optimizer_step: the callbacks' first, then the model's clipping
            state = state_after
        model.carried.carry("train", state)
        # Lightning writes self.log values once per batch at its batch counter; a "step" value makes
        # it use global_step (chunk updates) instead, so every logged curve shares one x-axis.
        model.log("step", float(model.global_step))

    @staticmethod
    def log_update(model: "SequenceModel", loss: Tensor) -> None:
        """train/loss of one chunk update, written at its own global_step on the logging cadence."""
        model.log("train/loss", loss, prog_bar=True, logger=False)
        if logging_step(model.trainer):  # the cadence of Lightning's automatic loop and of the diagnostics
            for logger in model.loggers:
                logger.log_metrics({"train/loss": loss.item()}, step=model.global_step)
