"""Files written whole or not at all: a kill or a full disk mid-write never leaves a truncated file where a good
one was.

Each file is written to a temporary file beside it (same folder, so the same file system), flushed and fsync'ed,
then renamed over the target with :func:`os.replace`, which is atomic on POSIX and Windows: a reader sees the old
file or the new one, never part of one. A failed write removes its temporary file and raises
:class:`~seqmem.errors.WriteError` naming the target and the OS's reason; the old file is untouched. The temporary
file of a write that was killed (SIGKILL, power loss) cannot be removed by it; the next write of the same target
removes it, so one writer per file is assumed (in a DDP run only rank 0 writes). A writer holds a lock
(``flock``) on its temporary file until it is renamed, so that :func:`remove_stale_temps` can tell the temporary
files of killed writes, which a run removes from its whole folder tree when it starts, from those of writes under
way in other processes (another run in a sibling folder), which it leaves.

    with replaced(path) as file:          # binary; replaced(path, "w", newline="") for text
        torch.save(checkpoint, file)
"""

import glob
import os
import re
import secrets
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from seqmem.errors import WriteError, os_error_behind

try:
    import fcntl
except ImportError:  # Windows: no flock, so no telling a killed write's temporary file from a live one
    fcntl = None

TEMP_SUFFIX = ".tmp"
#: The name of every temporary file :func:`temp_path` makes, and of nothing else seqmem or Lightning writes.
TEMP_NAME = re.compile(rf"\..+\.[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}")
#: How deep under a root :func:`remove_stale_temps` looks: ``version_N/checkpoints/`` is two folders down.
TEMP_DEPTH = 2


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path``: hidden, and matching no ``*.ckpt`` glob (``.last.ckpt.1a2b3c4d.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def stale_temps(path: Path) -> list[Path]:
    """Temporary files of earlier writes of ``path`` that never finished (the process was killed)."""
    return list(path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"))


def remove_stale_temps(root: Any) -> list[Path]:
    """Remove the temporary files of killed writes in ``root`` and its folders down to :data:`TEMP_DEPTH` (a
    logger's root: ``version_N/`` and ``version_N/checkpoints/``); return them.

    Only files named as :func:`temp_path` names them, and only those whose writer is gone: a write under way holds
    a lock on its file, which the process's end releases. Where there are no such locks (Windows), nothing is
    removed: the next write of the same target removes its own (:func:`replaced`).
    """
    removed: list[Path] = []
    if fcntl is None:
        return removed
    for depth in range(TEMP_DEPTH + 1):
        for path in Path(root).glob("/".join(["*"] * depth + [f".*{TEMP_SUFFIX}"])):
            if TEMP_NAME.fullmatch(path.name) and _remove_unlocked(path):
                removed.append(path)
    return removed


def _remove_unlocked(path: Path) -> bool:
    """Remove ``path`` (a regular file, never a link) if no process holds its lock; whether it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # gone already, a link, or not ours to read
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its writer is alive
        os.unlink(path)  # while holding the lock: a writer that locks it after this sees it unlinked (_create)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _create(path: Path) -> tuple[int, Optional[int], Path]:
    """A new temporary file beside ``path``, open for writing: its descriptor, a second descriptor of the same open
    file that holds its lock (see :func:`remove_stale_temps`) until the caller closes it after the rename, or None
    where files cannot be locked, and its path."""
    for _ in range(10):
        temp = temp_path(path)
        # O_EXCL: never write into a file someone else made; 0o666 minus the umask, as open() would give.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits out a remove_stale_temps that opened it in between
        except (AttributeError, OSError):  # no fcntl (Windows), or a file system without locks: never removed
            return fd, None, temp
        if os.fstat(fd).st_nlink > 0:
            return fd, os.dup(fd), temp
        os.close(fd)  # removed in that moment, as a killed write's would be: take another name
    raise OSError(f"the temporary files beside {path} keep being removed")


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
    try:
        fd, lock, temp = _create(path)
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
    finally:
        if lock is not None:  # held until here: the temporary file is no temporary file any more
            os.close(lock)
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
