"""The one exception type for bad user input.

The CLI catches it and prints a single ``seqmem: error: ...`` line instead of a traceback, so every
message must name the option (as the user types it, e.g. ``data.seq_len``) and what is allowed.
"""


class ConfigError(ValueError):
    """A user-facing configuration error: one line naming the option and the allowed values."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
