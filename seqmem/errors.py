"""One-line failures: bad user input (:class:`ConfigError`, and the checks that raise it) and the files a run
could not write (:class:`WriteError`).

The CLI and the sweep catch them and print a single ``seqmem: error: ...`` line (:func:`fail`) instead of a
traceback, so every message must name the option (as the user types it, e.g. ``data.seq_len``) and what is
allowed, or the file and the OS's reason.
"""

import errno as errno_names
import os
import re
import sys
from typing import Any, Iterator, NoReturn, Optional, get_args

#: Longest stretch of user data (a value, a path, a parser's message) that an error line quotes.
QUOTE_LIMIT = 120
#: Longest path a WriteError quotes: a file the run itself named, which the user needs whole to find it.
PATH_QUOTE_LIMIT = 400


class ConfigError(ValueError):
    """A user-facing configuration error: one line naming the option and the allowed values."""


class RaggedBatchError(ConfigError):
    """A measure that is not defined on a batch whose sequences have different lengths (a ``PackedSequence``)."""


#: A terminal escape sequence: CSI (``ESC [ 1 m``, bold), OSC (``ESC ] ... BEL``, a window title), or ESC and one
#: character. torch's refusal of a pickle prints bold so; quoted in an error line it would restyle the terminal.
TERMINAL_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def printable(text: str) -> str:
    r"""``text`` without terminal escape sequences, and with every other character that a terminal would not show
    as itself (a control character, a stray ESC) written as Python writes it in a string (``\x07``).

    Example:
        >>> printable("\x1b[1mdo this\x1b[0m only\x07")
        'do this only\\x07'
    """
    text = TERMINAL_ESCAPE.sub("", text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` made printable (:func:`printable`) and cut to at most ``limit`` characters, saying how long it was:
    user data can be megabytes.

    Example:
        >>> shorten("x" * 1000, limit=20)
        'xxxxxx… (1000 chars)'
    """
    text = printable(text)
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

    def __init__(self, errno: Optional[int], strerror: str, filename: Any, kind: str = "", note: str = ""):
        super().__init__(errno, strerror, path_text(filename))
        self.kind = kind
        self.note = note

    @classmethod
    def of(cls, error: OSError, filename: Any, kind: str = "", note: str = "") -> "WriteError":
        """``error`` (raised while writing ``filename``) as a WriteError naming ``filename``."""
        return cls(error.errno, error.strerror or str(error) or type(error).__name__, filename, kind, note)

    def __str__(self) -> str:
        code = errno_names.errorcode.get(self.errno) if self.errno is not None else None
        where = quote(self.filename, PATH_QUOTE_LIMIT)
        what = f"{self.kind} {where}" if self.kind else where
        line = f"cannot write {what}: {shorten(' '.join(str(self.strerror).split()))}{f' [{code}]' if code else ''}"
        return f"{line}; {self.note}" if self.note else line


class Terminated(BaseException):
    """The process was sent SIGTERM: raised by the handler the ``seqmem`` command installs, wherever the process
    is, so that it stops at once (Lightning's own handler only sets a flag that its loops read between batches).

    A BaseException, as KeyboardInterrupt is: no ``except Exception`` on the way swallows it, while ``finally``
    blocks and Lightning's teardown still run (an atomic write removes its temporary file).

    Args:
        note: what the line adds (where the last good checkpoint is).
    """

    def __init__(self, note: str = ""):
        super().__init__(note)
        self.note = note

    def __str__(self) -> str:
        return f"stopped by SIGTERM; {self.note}" if self.note else "stopped by SIGTERM"


def path_text(filename: Any) -> str:
    """``filename`` as the path a user types: a bytes name (TensorBoard opens its events file by one, and the OS
    error carries it so) decoded as the OS encodes names, not ``"b'/runs/...'"``; a Path as its text.

    Example:
        >>> path_text(b"/runs/events.out.tfevents.1")
        '/runs/events.out.tfevents.1'
    """
    return os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else str(filename)


def chain(error: Optional[BaseException]) -> Iterator[BaseException]:
    """``error`` and the exceptions behind it, outermost first, as a traceback shows them (``__cause__``, else
    ``__context__`` unless suppressed by ``raise ... from None``).

    Every walk of a chain goes through this: each exception is yielded once, so a chain that loops back on itself
    (an exception raised again while a later one that it caused is handled) ends instead of spinning forever.
    """
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
    datamodule's arguments) as a ValueError chained to the original. Walked by :func:`chain`: a chain that loops
    back on itself (an error raised again while it is being reported) ends."""
    return next((e for e in chain(error) if isinstance(e, ConfigError)), None)


def error_line(error: BaseException) -> Optional[str]:
    """The one line a user sees for ``error``: a ConfigError behind it, or the file a run could not write; None
    for anything else (a bug: the traceback is what helps)."""
    found = config_error(error) or write_error(error)
    return None if found is None else printable(" ".join(str(found).split()))


def fail(message: str) -> NoReturn:
    """Bad input, or a file a run could not write: one line on stderr, no traceback, exit status 2 (argparse's)."""
    print(f"seqmem: error: {printable(message)}", file=sys.stderr)  # whatever a message quotes, a line stays a line
    sys.exit(2)
