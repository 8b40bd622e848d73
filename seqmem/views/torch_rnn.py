"""torch's own recurrent layers (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``) as recurrences, stepped by seqmem.

The step-by-step twin reproduces the module's forward exactly — ``batch_first`` either way, stacked layers with
dropout between them, ``bidirectional`` (the reverse direction runs from the last position back), LSTM
``proj_size``, ``nonlinearity="relu"``, ``bias=False``, a given initial state — through the update functions of
:mod:`seqmem.models.steps`, so every h_t is a tensor the rest of the model consumes. A ``PackedSequence`` is stepped
on its padded batch with each sequence's length: a sequence's state stays as it ended once its steps are over,
so the output (packed as the input was) and h_n/c_n are exactly what the module returns. An unbatched input is
refused in one line.
"""

from functools import partial
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from seqmem.errors import ConfigError
from seqmem.models import state_from_parts, state_parts
from seqmem.models.steps import LayerTrajectory, StepFn, elman_step, gru_step, lstm_step, run_steps
from seqmem.views.recurrence import Recorder, Recurrence, stepped_forward

#: torch's parameter names -> the roles the diagnostics' tags use.
ROLES = {"weight_ih": "W_in", "weight_hh": "W_h", "bias_ih": "b_in", "bias_hh": "b_h", "weight_hr": "W_hr"}
GATES = {"GRU": ("r", "z", "n"), "LSTM": ("i", "f", "g", "o")}


def reversed_in_time(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """x (B, T, ·) with each sequence's first ``lengths[b]`` positions in reverse order (all T without lengths),
    the positions past a sequence's end left where they are; applied twice, the identity."""
    if lengths is None:
        return x.flip(1)
    positions = torch.arange(x.shape[1], device=x.device)  # (T,)
    source = torch.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions)  # (B, T)
    return x.gather(1, source[:, :, None].expand_as(x))  # (B, T, ·)


class TorchLayers(Recurrence):
    """Layers whose weights follow torch's naming, ``weight_ih<suffix>`` etc.: the shared part of the adapters of
    torch's layers and cells.

    Args:
        module: the torch module.
        path: its module path in the model (for messages).
        step: its update function.
        suffixes: the parameter-name suffix of each layer index (``_l0``, ``_l0_reverse``, ...; "" for a cell).
        names: the tag name of each layer index.
    """

    def __init__(self, module: nn.Module, path: str, step: StepFn, suffixes: list[str], names: list[str]):
        self.module = module
        self.path = path
        self.step = step
        self.suffixes = suffixes
        self.names = names

    def layer_names(self) -> list[str]:
        return self.names

    def layer_weights(self, layer: int) -> tuple[Tensor, ...]:
        """(W_in, W_h, b_in, b_h[, W_hr]) of one layer; a layer built with ``bias=False`` gets constant zeros."""
        suffix = self.suffixes[layer]
        w_in, w_h = getattr(self.module, f"weight_ih{suffix}"), getattr(self.module, f"weight_hh{suffix}")
        biases = [getattr(self.module, f"{name}{suffix}", None) for name in ("bias_ih", "bias_hh")]
        biases = [w_in.new_zeros(w_in.shape[0]) if b is None else b for b in biases]  # (gates*H,)
        projection = getattr(self.module, f"weight_hr{suffix}", None)  # (P, H): LSTM proj_size
        return (w_in, w_h, *biases) + ((projection,) if projection is not None else ())

    def layer_parameters(self, layer: int) -> dict[str, nn.Parameter]:
        suffix = self.suffixes[layer]
        found = {role: getattr(self.module, f"{name}{suffix}", None) for name, role in ROLES.items()}
        return {role: param for role, param in found.items() if param is not None}

    def recurrent_matrices(self) -> dict[str, Tensor]:
        """W_h per gate block; with ``proj_size`` the square map of h_{t−1} through each block, W_hr W_h^gate (P, P)."""
        matrices = {}
        for layer, name in enumerate(self.names):
            weights = self.layer_weights(layer)
            blocks = weights[1].chunk(len(self.gate_names), dim=0)  # gates × (H, H or P)
            for gate, block in zip(self.gate_names, blocks, strict=True):
                square = weights[4] @ block if len(weights) > 4 else block  # (P, H) @ (H, P)
                matrices[f"{name}/{gate}" if gate else name] = square
        return matrices

    def kind(self) -> str:
        """``path (nn.LSTM)``, for messages."""
        return f"{self.path or 'the model'} (nn.{type(self.module).__name__})"


class TorchRNN(TorchLayers):
    """An ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` as a recurrence: layer ``l`` is ``layer<l>``, its reverse direction
    ``layer<l>_reverse``; the tags of a reverse direction run in its own time order (its last step is position 0).

    Args:
        module: the torch module.
        path: its module path in the model.
    """

    def __init__(self, module: nn.RNNBase, path: str):
        mode = module.mode  # RNN_TANH, RNN_RELU, GRU or LSTM
        step = {
            "RNN_TANH": partial(elman_step, nonlinearity="tanh"),
            "RNN_RELU": partial(elman_step, nonlinearity="relu"),
            "GRU": gru_step,
            "LSTM": lstm_step,
        }[mode]
        directions = 2 if module.bidirectional else 1
        layers = [(layer, reverse) for layer in range(module.num_layers) for reverse in range(directions)]
        super().__init__(
            module,
            path,
            step,
            suffixes=[f"_l{layer}{'_reverse' if reverse else ''}" for layer, reverse in layers],
            names=[f"layer{layer}{'_reverse' if reverse else ''}" for layer, reverse in layers],
        )
        self.gate_names = GATES.get(mode, ("",))
        self.directions = directions
        self.state_size = 2 if mode == "LSTM" else 1

    def to_batch_first(self, input: Any) -> tuple[Tensor, Optional[Tensor]]:
        """The module's input as (B, T, I), and for a PackedSequence each sequence's length (B,), in the batch's
        own order; an unbatched input is refused. A PackedSequence whose sequences all have the same length is
        stepped as the padded batch it is (no lengths)."""
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input, batch_first=True)  # (B, T, I), (B,) on the CPU
            ragged = bool((lengths != x.shape[1]).any())
            return x, lengths.to(x.device) if ragged else None
        if input.dim() != 3:
            raise ConfigError(
                f"the per-timestep diagnostics step {self.kind()} on batched inputs only ((B, T, I) or (T, B, I)); "
                f"it was given a tensor of shape {tuple(input.shape)}"
            )
        return input if self.module.batch_first else input.transpose(0, 1), None

    def from_batch_first(self, output: Tensor, input: Any) -> Any:
        """(B, T, D·H_out) outputs as the module returns them for ``input``: packed as it was, or in its layout."""
        if isinstance(input, PackedSequence):
            lengths = (input.batch_sizes[None, :] > torch.arange(output.shape[0])[:, None]).sum(dim=1)  # (B,) sorted
            order = input.sorted_indices  # rows of the packed data by decreasing length
            sorted_output = output if order is None else output.index_select(0, order)
            packed = pack_padded_sequence(sorted_output, lengths, batch_first=True)
            return PackedSequence(packed.data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        return output if self.module.batch_first else output.transpose(0, 1)

    def layer_runs(
        self, x: Tensor, state: Optional[Any] = None, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, Any, list[LayerTrajectory]]:
        """nn.RNN's forward, step by step: x (B, T, I) -> outputs (B, T, D·H_out), final state, every layer's run.

        Args:
            x: batch-first inputs.
            state: the initial state in torch's format ((L·D, B, H_out), with c (L·D, B, H) for the LSTM), or
                None for zeros.
            lengths: (B,) each sequence's length in a ragged batch: a sequence's state stays as it ended past its
                length (the outputs there are not the module's), and a reverse direction starts at each
                sequence's own last position; None: all T steps.
        """
        module, batch = self.module, x.shape[0]
        if state is None:
            sizes = (module.proj_size or module.hidden_size, module.hidden_size)[: self.state_size]  # h, [c]
            parts = tuple(x.new_zeros(len(self.names), batch, size) for size in sizes)  # (L*D, B, ·)
        else:
            parts = state_parts(state)
        runs, layer_input = [], x  # (B, T, I)
        for layer in range(module.num_layers):
            outputs = []
            for reverse in range(self.directions):
                index = layer * self.directions + reverse
                weights = self.layer_weights(index)
                x_proj = F.linear(layer_input, weights[0], weights[2])  # (B, T, gates*H)
                x_proj = reversed_in_time(x_proj, lengths) if reverse else x_proj  # in the order it is consumed
                run = run_steps(self.step, weights, x_proj, tuple(p[index] for p in parts), lengths)
                runs.append(run)
                out = torch.stack(run.hiddens, dim=1)  # (B, T, H_out) in the direction's own order
                outputs.append(reversed_in_time(out, lengths) if reverse else out)  # in the sequence's order
            layer_output = torch.cat(outputs, dim=-1)  # (B, T, D*H_out)
            last = layer == module.num_layers - 1
            layer_input = layer_output if last else F.dropout(layer_output, module.dropout, module.training)
        final = tuple(torch.stack([run.states[-1][i] for run in runs]) for i in range(self.state_size))  # (L*D, B, ·)
        return layer_input, state_from_parts(final), runs

    def intercept(self, record: Recorder, leaf_inputs: bool):
        return stepped_forward(
            self.module, self.layer_runs, record, leaf_inputs, self.to_batch_first, self.from_batch_first
        )
