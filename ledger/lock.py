"""One writer per run: an exclusive ``flock`` on ``events.log.lock`` holding the owner's pid.

flock locks die with their process (``kill -9`` included), so a crashed run never leaves a
stale lock: the pid in the file is only there to name the holder in the error message.
"""

from __future__ import annotations

import fcntl
import os
import time

from .errors import LogAccessError, LogLockedError

__all__ = ["RunLock", "holder_pid", "is_locked"]

# A reader's is_locked() takes a shared lock for an instant; a writer retries this often
# (10 ms apart) before concluding that another writer really holds the run.
_TRIES = 20


class RunLock:
    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: str) -> "RunLock":
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only run directory, file system ...
            raise LogAccessError(path, exc) from exc
        for attempt in range(_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _TRIES - 1:
                    os.close(fd)
                    raise LogLockedError(path.removesuffix(".lock"), holder_pid(path)) from None
                time.sleep(0.01)  # maybe a reader's is_locked() probe, held for microseconds
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def holder_pid(path: str) -> int | None:
    """The pid written by the current holder, if one can be read."""
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(path: str) -> bool:
    """Whether a live process holds the lock (used by readers to tell live from stopped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
