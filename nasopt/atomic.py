"""Write a file so that readers see the old one or the whole new one, never a partial one.

The new content goes to a temp file beside the target (``<name>.<random>.tmp``), renamed over
it at the end. A writer that is killed leaves its temp file behind; :func:`remove_stale_temps`
removes those. It tells them from the temp files of writers still at work by a lock: every
writer holds an exclusive ``flock`` on its temp file until it is done, and the kernel drops the
lock when the process dies, however it dies. No clock is involved, so a slow writer (the whole
phantom takes minutes) is never mistaken for a dead one.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def atomic_write(path: str | Path) -> Iterator[str]:
    """Yield a temp file name beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        # flock belongs to this descriptor, not to the process: the block may open and close the
        # temp file as it likes without releasing it. A file system without locks gets none,
        # and then remove_stale_temps leaves every temp file there alone.
        with suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would have
        os.replace(tmp, path)  # atomic on POSIX within one file system
    finally:
        os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def file_lock(path: str | Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, never deleted: deleting a lock file lets
    two holders lock two different files). ``waiting`` is called once if another holder has it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; the kernel releases it too when the process dies


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the ``*.tmp`` files in ``folder`` that no live writer holds; return them."""
    removed = []
    for tmp in sorted(Path(folder).glob("*.tmp")):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a writer is at work on it (or locks are not supported here)
            continue
        else:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        finally:
            os.close(fd)
    return removed
