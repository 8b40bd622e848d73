"""The recurrent state in torch's format, and the helpers that treat a tensor and an (h, c) pair alike."""

from typing import Union

from torch import Tensor

# A (num_layers, B, H) tensor, or an (h, c) pair of them for the LSTM — what nn.RNN/GRU/LSTM take and return.
State = Union[Tensor, tuple[Tensor, Tensor]]


def state_parts(state: State) -> tuple[Tensor, ...]:
    """The tensors of a state, as a tuple: (h,) or (h, c)."""
    return state if isinstance(state, tuple) else (state,)


def state_from_parts(parts: tuple[Tensor, ...]) -> State:
    """Inverse of :func:`state_parts`: one tensor stays a tensor, two make an (h, c) pair."""
    return parts if len(parts) > 1 else parts[0]


def detach_state(state: State) -> State:
    """The state with its autograd history cut: the values flow on, gradients stop here."""
    return state_from_parts(tuple(part.detach() for part in state_parts(state)))
