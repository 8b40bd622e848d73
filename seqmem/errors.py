"""One-line failures: bad user input (:class:`ConfigError`, and the checks that raise it) and the files a run
could not write (:class:`WriteError`).

The CLI and the sweep catch them and print a single ``seqmem: error: ...`` line (:func:`fail`) instead of a
traceback, so every message must name the option (as the user types it, e.g. ``data.seq_len``) and what is
allowed, or the file and the OS's reason.
"""

import errno as errno_names
import sys
from typing import Any, Iterator, NoReturn, Optional, get_args

#: Longest stretch of user data (a value, a path, a parser's message) that an error line quotes.
QUOTE_LIMIT = 120
#: Longest path a WriteError quotes: a file the run itself named, which the user needs whole to find it.
PATH_QUOTE_LIMIT = 400


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


class WriteError(OSError):
    """A file of a run could not be written (a full disk, a lost mount, a read-only folder): one line naming it and
    the cause.

    Args:
        errno: the OS error number (``errno.ENOSPC``, ...).
        strerror: the OS's reason ("No space left on device").
        filename: the file, or the folder, that could not be written.
        kind: what was being written, named before the path when the path alone does not say it (``"the
            TensorBoard events in"``).
        note: what the line adds after the cause (where the last good checkpoint is).

    Example:
        >>> import errno
        >>> str(WriteError(errno.ENOSPC, "No space left on device", "runs/last.ckpt"))
        "cannot write 'runs/last.ckpt': No space left on device [ENOSPC]"
    """

    def __init__(self, errno: Optional[int], strerror: str, filename: str, kind: str = "", note: str = ""):
        super().__init__(errno, strerror, filename)
        self.kind = kind
        self.note = note

    @classmethod
    def of(cls, error: OSError, filename: Any, kind: str = "", note: str = "") -> "WriteError":
        """``error`` (raised while writing ``filename``) as a WriteError naming ``filename``."""
        return cls(error.errno, error.strerror or str(error) or type(error).__name__, str(filename), kind, note)

    def __str__(self) -> str:
        code = errno_names.errorcode.get(self.errno) if self.errno is not None else None
        where = quote(self.filename, PATH_QUOTE_LIMIT)
        what = f"{self.kind} {where}" if self.kind else where
        line = f"cannot write {what}: {shorten(' '.join(str(self.strerror).split()))}{f' [{code}]' if code else ''}"
        return f"{line}; {self.note}" if self.note else line


def chain(error: Optional[BaseException]) -> Iterator[BaseException]:
    """``error`` and the exceptions behind it, outermost first, as a traceback shows them (``__cause__``, else
    ``__context__`` unless suppressed by ``raise ... from None``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def os_error_behind(error: BaseException) -> Optional[OSError]:
    """The innermost OSError behind ``error`` (torch.save, say, raises a RuntimeError over the OSError of its
    write), or None."""
    return next((e for e in reversed(list(chain(error))) if isinstance(e, OSError)), None)


def write_error(error: BaseException) -> Optional[WriteError]:
    """The WriteError behind ``error``, an OS error: the outermost one (a later failure, a log that cannot be
    flushed while the run stops, raises over the first); None when ``error`` is no OSError (a bug raised while
    handling a failed write keeps its traceback) or has no WriteError behind it."""
    if not isinstance(error, OSError):
        return None
    return next((e for e in chain(error) if isinstance(e, WriteError)), None)


def config_error(error: Optional[BaseException]) -> Optional[ConfigError]:
    """The ConfigError behind ``error``: jsonargparse re-raises errors of the classes it instantiates (the
    datamodule's arguments) as a ValueError chained to the original."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__ or error.__context__
    return error


def error_line(error: BaseException) -> Optional[str]:
    """The one line a user sees for ``error``: a ConfigError behind it, or the file a run could not write; None
    for anything else (a bug: the traceback is what helps)."""
    found = config_error(error) or write_error(error)
    return None if found is None else " ".join(str(found).split())


def fail(message: str) -> NoReturn:
    """Bad input, or a file a run could not write: one line on stderr, no traceback, exit status 2 (argparse's)."""
    print(f"seqmem: error: {message}", file=sys.stderr)
    sys.exit(2)
