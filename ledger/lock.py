"""One writer per run: an exclusive ``flock`` on the log file itself.

What is locked is the log's own inode, not a separate lock file: a lock file can be
deleted under a live run (a temp cleaner, a user's ``rm``), and the next process would
create a new one, lock it and append to the same log -- two writers. The log cannot be
replaced under its writer without the writer's knowledge: after taking the lock we check
that the inode we locked is still the one at the path (a repair renames a rewritten log
into place; a process that locked the old inode retries on the new one).

``events.log.lock`` survives only as a note naming the holder's pid, for the error message
(``holder_pid``); it is written best-effort (a full disk must not stop the lock) and its
absence changes nothing. flock locks die with their process (``kill -9`` included), so a
crashed run never leaves a stale lock.

Callers name the lock by its note's path (``<log>.lock``), as they always have.
"""

from __future__ import annotations

import fcntl
import os
import time

from . import fs
from .errors import LogAccessError, LogLockedError

__all__ = ["RunLock", "holder_pid", "is_locked", "locked_path"]

# A reader's is_locked() takes a shared lock for an instant; a writer retries this often
# (10 ms apart) before concluding that another writer really holds the run.
_TRIES = 20


def locked_path(lock_path: str) -> str:
    """The file whose inode is locked for the lock named ``lock_path``: the log."""
    return lock_path.removesuffix(".lock")


class RunLock:
    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: str) -> "RunLock":
        """Lock the log of the lock note ``path`` (the log must exist)."""
        target = locked_path(path)
        for _ in range(100):  # each round: the file at the path was replaced meanwhile
            fd = _open(target)
            _lock(fd, target, path)
            if _same_file(fd, target):
                _note_pid(path)
                return cls(path, fd)
            fs.close(fd)
        raise LogLockedError(target, None)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            fs.close(self._fd)
            self._fd = None


def _open(target: str) -> int:
    """Read-write, though only locked: who takes the lock writes to the run, and a run it
    cannot write is refused here, before anything is touched."""
    try:
        return fs.open(target, os.O_RDWR)
    except OSError as exc:  # no log, no permission ...
        raise LogAccessError(target, exc) from exc


def _lock(fd: int, target: str, note: str) -> None:
    for attempt in range(_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == _TRIES - 1:
                fs.close(fd)
                raise LogLockedError(target, holder_pid(note)) from None
            time.sleep(0.01)  # maybe a reader's is_locked() probe, held for microseconds


def _same_file(fd: int, target: str) -> bool:
    """Whether the locked descriptor is still the file at ``target`` (not unlinked or
    replaced between our open and our lock)."""
    try:
        st = fs.stat(target)
    except FileNotFoundError:
        return False
    mine = fs.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _note_pid(path: str) -> None:
    """Best effort: the note only names the holder in other processes' error messages."""
    try:
        fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError:
        return
    try:
        fs.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass
    finally:
        fs.close(fd)


def holder_pid(path: str) -> int | None:
    """The pid written by the current holder, if one can be read."""
    try:
        with fs.open_file(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(path: str) -> bool:
    """Whether a live process holds the lock named ``path`` (readers use it to tell live
    from stopped)."""
    try:
        fd = fs.open(locked_path(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        fs.close(fd)
    return False
