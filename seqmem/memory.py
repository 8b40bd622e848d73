"""Whether one batch fits in this machine's memory: checked by the CLI before a run writes anything.

A batch too large to allocate would otherwise fail at the first batch drawn — after the run folder, its config and
its logs are written — in a traceback from deep inside torch. The estimate is a lower bound (the batch's tensors
and the outputs of the model's forward pass, not what backward keeps besides), so a run it refuses cannot fit; a run
it lets through may still run out of memory, which the CLI then reports in one line too.
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from seqmem.errors import require
from seqmem.tasks.spec import BatchShape

if TYPE_CHECKING:
    from seqmem.module import SequenceModel

#: Where a cgroup (a container, a systemd slice) caps this process's memory below the machine's: v2, then v1.
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def host_memory() -> Optional[int]:
    """Bytes of memory this process may use: the machine's physical memory, or its cgroup's limit where lower;
    None where neither can be read."""
    try:
        total: Optional[int] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not a POSIX system
        total = None
    for limit_file in CGROUP_LIMITS:
        try:
            limit = int(Path(limit_file).read_text().strip())
        except (OSError, ValueError):  # no such file, or "max": no limit there
            continue
        total = limit if total is None else min(total, limit)
    return total


def value_bytes(precision: str) -> int:
    """Bytes of one activation value under a Lightning precision ("32-true", "bf16-mixed", ...): the fewest it may
    take, as the memory check is a lower bound."""
    for prefix, size in (("64", 8), ("32", 4), ("16", 2), ("bf16", 2)):
        if str(precision).startswith(prefix):
            return size
    return 1  # transformer-engine's 8-bit formats


def human(size: int) -> str:
    """``size`` bytes in decimal units: ``51.2 GB``."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def activation_bytes(model: "SequenceModel", batch_size: int, steps: int, value_bytes: int = 4) -> int:
    """The fewest bytes one forward pass of ``model`` over a batch of ``batch_size`` sequences of ``steps`` takes:
    the embedding's output, what every recurrent layer keeps (its outputs, and a state wider than them:
    :attr:`RecurrentNet.activation_width <seqmem.models.RecurrentNet.activation_width>`) and a readout "all" head's
    output, ``value_bytes`` a value.
    Over a chunk only under truncated BPTT; backward keeps more (the gates), which this leaves out.

    Example:
        >>> from seqmem import AddingData, SequenceModel
        >>> model = SequenceModel(AddingData(seq_len=100).spec, hidden_size=128, num_layers=2)
        >>> activation_bytes(model, batch_size=64, steps=100)  # 64 · 100 · (2 · 128) values of 4 bytes
        6553600
        >>> lru = SequenceModel(AddingData(seq_len=100).spec, cell="lru", hidden_size=128, complex_units=64)
        >>> activation_bytes(lru, batch_size=64, steps=100)  # 64 · 100 · (128 + 2 · 64) values of 4 bytes
        6553600
    """
    hp, task = model.hparams, model.task
    steps = min(steps, hp.tbptt_steps or steps)
    per_step = model.net.activation_width * hp.num_layers  # (B, T, H) per layer; the LRU's (B, T, H + 2N)
    per_step += hp.embedding_size if task.input_tokens else 0  # (B, T, E)
    per_step += task.output_size if task.readout == "all" else 0  # (B, T, C)
    return batch_size * steps * per_step * value_bytes


def check_batch_fits(shape: BatchShape, activation_bytes: int, memory: Optional[int]) -> None:
    """Raise :class:`~seqmem.errors.ConfigError` with the figures unless one batch of ``shape`` and the model's
    ``activation_bytes`` on it fit in ``memory`` bytes (None: unknown, not checked).

    Example:
        >>> shape = BatchShape(64, 10**8, "data.seq_len", 10**8, tensor_bytes=51_200_000_256)
        >>> check_batch_fits(shape, 0, 24 * 10**9)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        seqmem.errors.ConfigError: data.seq_len 100000000 with data.batch_size 64 needs at least 51.2 GB a batch ...
    """
    needed = shape.tensor_bytes + activation_bytes
    parts = [f"{human(shape.tensor_bytes)} of data"] if shape.tensor_bytes else []
    parts += [f"{human(activation_bytes)} of model activations"] if activation_bytes else []
    require(
        memory is None or needed <= memory,
        f"{shape.length_option} {shape.length} with data.batch_size {shape.size} needs at least {human(needed)} a "
        f"batch ({', '.join(parts)}); this machine has {human(memory or 0)} of memory: lower {shape.length_option} "
        "or data.batch_size",
    )
