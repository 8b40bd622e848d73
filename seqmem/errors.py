"""The one exception type for bad user input, and the checks that raise it.

The CLI catches it and prints a single ``seqmem: error: ...`` line instead of a traceback, so every
message must name the option (as the user types it, e.g. ``data.seq_len``) and what is allowed.
"""

from typing import Any, get_args

#: Longest stretch of user data (a value, a path, a parser's message) that an error line quotes.
QUOTE_LIMIT = 120


class ConfigError(ValueError):
    """A user-facing configuration error: one line naming the option and the allowed values."""


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was: user data can be megabytes.

    Example:
        >>> shorten("x" * 1000, limit=20)
        'xxxxxx… (1000 chars)'
    """
    if len(text) <= limit:
        return text
    tail = f"… ({len(text)} chars)"
    return text[: max(limit - len(tail), 0)] + tail


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, on one line and cut by :func:`shorten`.

    Every error that quotes user data (a path, a file's content, an exception about it) goes through this.
    """
    return shorten(repr(value), limit)


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def require_choice(value: Any, choices: Any, option: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``, a ``Literal`` alias.

    The alias is the one definition of an allowed-value set: signatures (and so ``--help``) use it,
    and this check reads it, so adding a value touches one line.

    Example:
        >>> from typing import Literal
        >>> require_choice("relu", Literal["tanh", "modrelu"], "model.activation")
        Traceback (most recent call last):
        seqmem.errors.ConfigError: model.activation must be one of tanh, modrelu; got 'relu'
    """
    allowed = get_args(choices)
    require(value in allowed, f"{option} must be one of {', '.join(map(str, allowed))}; got {quote(value)}")
