"""Exclusive and shared use of output directories (flock beside each one): a stage that writes an output holds
it alone, runs that read it share it; a reader that finds an interrupted publish puts the previous version back
under the lock. Publishing itself is utils/common/publish.py."""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path
from typing import Iterator

from utils.common.errors import UserError
from utils.common.publish import sweep_leftovers


def recover_published(path: str | Path) -> bool:
    """A missing ``path`` whose previous version an interrupted publish left as ``.NAME.old-*`` is put back (said
    in one line) when no run holds its lock; True when ``path`` exists afterwards. For readers: they then read
    the previous version instead of reporting it missing."""
    path = Path(path)
    if path.exists() or not any(path.parent.glob(f".{path.name}.old-*")):
        return path.exists()
    try:
        with exclusive(path):
            sweep_leftovers(path)
    except UserError:
        pass  # a run holds it: it is being written right now
    return path.exists()


@contextlib.contextmanager
def exclusive(path: str | Path, flag: str = "--output_dir", wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a ``.<name>.lock`` file beside it) for the block; with ``wait``, wait for
    the holder instead of refusing.

    flock: the OS releases it when the process dies, so a killed run never blocks the next one. The lock
    file names the holder and is removed on release; a lock taken on a file already unlinked is retaken.
    """
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    fd = _take_lock(lock, path, flag, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_line(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


@contextlib.contextmanager
def reading(paths: list, flag: str = "--data_dirs") -> Iterator[None]:
    """Hold a shared lock on each of ``paths`` for the block: runs that read them go on together, and a stage
    that would replace one (``exclusive``) is refused, naming the runs that read it. Refused itself while one is
    being written. The last reader to leave removes the lock file."""
    held = []
    try:
        for raw in paths:
            path = Path(raw)
            recover_published(path)  # before our own lock: it needs the exclusive one
            if path.parent.is_dir() and not os.access(path.parent, os.W_OK):
                continue  # read-only storage: nothing can replace it there, and no lock file can be made
            lock = path.parent / f".{path.name}.lock"
            fd = _take_lock(lock, path, flag, fcntl.LOCK_SH | fcntl.LOCK_NB, reading=True)
            held.append((fd, lock))
            os.write(fd, _holder_line())  # opened for appending: one line per reader
        yield
    finally:
        for fd, lock in held:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no one else holds it: the file can go
                lock.unlink()
            os.close(fd)


def _holder_line() -> bytes:
    return f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n".encode()


def _holders(text: str) -> str:
    """The holder lines of the processes still alive (a reader's line stays after it ends)."""
    alive = []
    for line in text.splitlines():
        parts = line.split()
        try:
            os.kill(int(parts[1]), 0)
        except (IndexError, ValueError, ProcessLookupError):
            continue
        except PermissionError:
            pass  # alive, another user's
        alive.append(line.strip())
    return "; ".join(alive) or "another process"


def _take_lock(lock: Path, path: Path, flag: str, mode: int, reading: bool = False) -> int:
    for _ in range(100):
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | (os.O_APPEND if reading else 0), 0o666)
        except OSError as err:
            if lock.parent.exists() and not os.access(lock.parent, os.W_OK):
                raise UserError(f"{flag} {path}: its lock file goes beside it, in {lock.parent}, which is not "
                                f"writable ({err.strerror}); make {lock.parent} writable or choose a {flag} in a "
                                "writable directory") from None
            raise UserError(f"{flag} {path}: cannot write here ({err.strerror})") from None
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            holder = _holders(os.pread(fd, 4000, 0).decode("utf-8", "replace"))
            os.close(fd)
            if reading:
                raise UserError(f"{flag} {path}: being written by {holder}; wait for it to finish") from None
            raise UserError(f"{flag} {path}: in use by {holder}; wait for it to finish or choose another "
                            f"{flag}") from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file between our open and our lock: take the new one
    raise UserError(f"{flag} {path}: could not lock {lock}; try again")
