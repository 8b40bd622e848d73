"""Files written whole or not at all: a kill or a full disk mid-write never leaves a truncated file where a good
one was.

Each file is written to a temporary file beside it (same folder, so the same file system), flushed and fsync'ed,
then renamed over the target with :func:`os.replace`, which is atomic on POSIX and Windows: a reader sees the old
file or the new one, never part of one. A failed write removes its temporary file and raises
:class:`~seqmem.errors.WriteError` naming the target and the OS's reason; the old file is untouched. The temporary
file of a write that was killed (SIGKILL, power loss) cannot be removed by it; the next write of the same target
removes it, so one writer per file is assumed (in a DDP run only rank 0 writes).

    with replaced(path) as file:          # binary; replaced(path, "w", newline="") for text
        torch.save(checkpoint, file)
"""

import glob
import os
import secrets
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Iterator

from seqmem.errors import WriteError, os_error_behind

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path``: hidden, and matching no ``*.ckpt`` glob (``.last.ckpt.1a2b3c4d.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def stale_temps(path: Path) -> list[Path]:
    """Temporary files of earlier writes of ``path`` that never finished (the process was killed)."""
    return list(path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"))


@contextmanager
def replaced(path: Any, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; once the block ends without error, it replaces ``path``.

    Args:
        path: the file to (re)write; its folder must exist.
        mode: ``"wb"`` or ``"w"`` (text); the file is always new.
        open_kwargs: passed to :func:`open` (``encoding``, ``newline``).

    Raises:
        WriteError: any OS error on the way (creating, writing, syncing or renaming), naming ``path``; an error
            of the block that has an OSError behind it (``torch.save`` wraps its write's) too. Other errors of the
            block propagate as they are. Either way the temporary file is removed and ``path`` is as it was.
    """
    path = Path(path)
    for stale in stale_temps(path):
        with suppress(OSError):
            stale.unlink()
    temp = temp_path(path)
    try:
        # O_EXCL: never write into a file someone else made; 0o666 minus the umask, as open() would give.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as error:
        raise WriteError.of(error, path) from error
    try:
        with open(fd, mode, **open_kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the name points at it
        os.replace(temp, path)
    except BaseException as error:
        with suppress(OSError):
            temp.unlink()
        cause = os_error_behind(error)
        if cause is None or isinstance(error, WriteError):
            raise
        raise WriteError.of(cause, path) from error
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a power loss; best effort (not every system allows it)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: Any, text: str) -> None:
    """``Path(path).write_text(text)``, atomically (see the module docstring)."""
    with replaced(path, "w", encoding="utf-8") as file:
        file.write(text)


def copy_file(source: Any, path: Any) -> None:
    """``shutil.copyfile(source, path)``, atomically."""
    with open(source, "rb") as src, replaced(path) as out:
        shutil.copyfileobj(src, out)


def link(target: Any, path: Any) -> None:
    """Make ``path`` a symbolic link to ``target`` (relative, as Lightning's ``save_last="link"`` makes it),
    replacing whatever ``path`` was in one rename; where links are refused (Windows without the right), a copy.

    Raises:
        WriteError: naming ``path``.
    """
    path = Path(path)
    temp = temp_path(path)
    try:
        os.symlink(os.path.relpath(target, path.parent), temp)
    except OSError:
        copy_file(target, path)
        return
    try:
        os.replace(temp, path)
    except OSError as error:
        with suppress(OSError):
            temp.unlink()
        raise WriteError.of(error, path) from error
    sync_folder(path.parent)
