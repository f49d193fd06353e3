"""Backends for ``llm_ledger.ledger.fs`` that fail or lose what a disk may (the OS-call boundary).

Every file-system call of the distribution goes through ``fs`` (tests/test_fs_seam.py keeps
it so), and ``fs`` forwards to one replaceable backend. Installing one of these with
``install`` (``fs.use``) lets a test see and steer every open, write, sync, truncate and
rename the process makes -- the log's, the index's, the projections' -- with no list of
modules to patch and none forgotten:

* ``FaultyOs``: a chosen call on the log file fails with a chosen errno after N successes
  (ENOSPC on write, EIO on fdatasync), once or for good; every call on the log is recorded
  with the descriptor *and which open* it belongs to, so "never fdatasync the same
  descriptor again" can be checked even when fd numbers are reused.
* ``PowerLossDisk``: a model of the disk under one directory, after SQLite's crash tests and
  LevelDB's fault-injection Env. It tracks, per file, the bytes as of its last successful
  fsync/fdatasync, and the directory's entries as of its last fsync. At the Nth sync the
  power goes: the model computes what the disk may hold -- everything unsynced dropped,
  kept, or garbled per 512-byte sector (new bytes, old bytes, zeros or noise), file sizes
  old or new, files whose directory entry was never synced gone -- and every later call
  fails with EIO (the process is "dead"; its writer gives up).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

from llm_ledger.ledger import fs

__all__ = ["FaultyOs", "PowerLossDisk", "install", "installed", "install_in_child", "SECTOR"]

SECTOR = 512
_REAL = os


def install(backend: fs.Backend, monkeypatch: Any = None) -> fs.Backend:
    """Route every file-system call to ``backend``; with ``monkeypatch``, undone by its
    ``undo()`` (or at the test's end). Returns the backend it replaced."""
    if monkeypatch is not None:
        old = fs.backend()
        monkeypatch.setattr(fs, "_backend", backend)  # fs.use, undone with the test's other patches
        return old
    return fs.use(backend)


@contextlib.contextmanager
def installed(backend: fs.Backend) -> Iterator[fs.Backend]:
    """``backend`` for the block, the previous one after it."""
    old = fs.use(backend)
    try:
        yield backend
    finally:
        fs.use(old)


def _eio(what: str) -> OSError:
    return OSError(errno.EIO, f"{os.strerror(errno.EIO)} (injected: {what})")


# -- injected errors -----------------------------------------------------------------------


class FaultyOs(fs.Backend):
    """Fail ``op`` ("write" or "fdatasync") on files named ``target`` after ``after`` successful
    calls of that op, with ``err`` (an errno). ``sticky``: every later write/sync/truncate of
    the file fails too (a disk gone bad); otherwise only that one call fails.

    ``calls``: (op, generation, fd, ok) for each call on the target, where generation counts
    the opens of the target file; ``record``: a path to append them to as JSON lines (for a
    child process).
    """

    def __init__(self, target: str = "events.log", op: str = "fdatasync", err: int = errno.EIO,
                 after: int = 0, sticky: bool = False, record: str = "") -> None:
        self.target, self.op, self.err, self.after, self.sticky = target, op, err, after, sticky
        self.record = record
        self.calls: list[tuple[str, int, int, bool]] = []
        self.enabled = True
        self.failed = False
        self._fds: dict[int, int] = {}  # fd -> generation, for open descriptors of the target
        self._opens = 0
        self._seen = 0
        self._lock = threading.Lock()

    def _note(self, op: str, fd: int, ok: bool) -> None:
        entry = (op, self._fds[fd], fd, ok)
        self.calls.append(entry)
        if self.record:
            with open(self.record, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def _should_fail(self, op: str, fd: int) -> bool:
        with self._lock:
            if not self.enabled or fd not in self._fds:
                return False
            if self.failed and self.sticky and op in ("write", "fdatasync", "fsync", "ftruncate"):
                return True
            if op != self.op or self.failed:
                return False
            self._seen += 1
            if self._seen > self.after:
                self.failed = True
                return True
            return False

    def open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fd = _REAL.open(path, flags, mode, dir_fd=dir_fd)
        if os.path.basename(os.fspath(path)) == self.target:
            with self._lock:
                self._opens += 1
                self._fds[fd] = self._opens
        else:
            self._fds.pop(fd, None)
        return fd

    def close(self, fd: int) -> None:
        self._fds.pop(fd, None)
        _REAL.close(fd)

    def _call(self, op: str, fd: int, real: Any, *args: Any) -> Any:
        if self._should_fail(op, fd):
            self._note(op, fd, False)
            raise OSError(self.err, f"{os.strerror(self.err)} (injected on {op})")
        result = real(fd, *args)
        if fd in self._fds:
            self._note(op, fd, True)
        return result

    def write(self, fd: int, data: Any) -> int:
        return self._call("write", fd, _REAL.write, data)

    def fdatasync(self, fd: int) -> None:
        return self._call("fdatasync", fd, _REAL.fdatasync)

    def fsync(self, fd: int) -> None:
        return self._call("fsync", fd, _REAL.fsync)

    def ftruncate(self, fd: int, length: int) -> None:
        return self._call("ftruncate", fd, _REAL.ftruncate, length)


def install_in_child(spec: dict[str, Any]) -> None:
    """In a forked CLI child: install ``FaultyOs(**spec)`` for the rest of its life."""
    install(FaultyOs(**spec))


# -- power loss ------------------------------------------------------------------------------


class Crashed(Exception):
    pass


class PowerLossDisk(fs.Backend):
    """What the disk under ``directory`` holds if the power fails at the ``crash_at``-th sync.

    ``mode`` says what becomes of bytes written since a file's last sync: "drop" (all
    lost), "keep" (all made it), "sectors" (each differing 512-byte sector is new, old,
    zeros or noise, independently) or "first_sector_lost" (the first differing sector is
    zeros, the rest made it: the most misleading order a disk may choose). The file's size is
    the synced or the current one (seeded). After the crash every mutating call fails.
    """

    def __init__(self, directory: str, crash_at: int | None, mode: str = "sectors", seed: int = 0) -> None:
        self.dir = os.path.abspath(directory)
        self.crash_at = crash_at
        self.mode = mode
        self.rng = random.Random(seed)
        self.syncs = 0
        self.crashed = False
        self.image: dict[str, bytes] | None = None
        self._lock = threading.RLock()
        self._dir_fds: set[int] = set()
        self.synced: dict[int, bytes] = {}  # inode -> bytes as of its last sync
        self.entries: dict[str, int] = {}  # name -> inode, as of the directory's last sync
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if os.path.isfile(path):
                st = os.stat(path)
                with open(path, "rb") as f:
                    self.synced[st.st_ino] = f.read()
                self.entries[name] = st.st_ino

    # -- bookkeeping --

    def _inside(self, path: Any) -> bool:
        return os.path.dirname(os.path.abspath(os.fspath(path))) == self.dir

    def _check(self, what: str) -> None:
        if self.crashed:
            raise _eio(f"{what} after the power failed")

    def _sync(self, fd: int, real: Any) -> None:
        with self._lock:
            self._check("sync")
            self.syncs += 1
            if self.crash_at is not None and self.syncs == self.crash_at:
                self._crash()
                raise _eio(f"power failed during sync #{self.syncs}")
            real(fd)
            if fd in self._dir_fds:
                self.entries = self._listing()
            else:
                st = os.fstat(fd)
                with open(f"/proc/self/fd/{fd}", "rb") as f:  # the fd may be write-only
                    self.synced[st.st_ino] = f.read()

    def _listing(self) -> dict[str, int]:
        out = {}
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if os.path.isfile(path):
                out[name] = os.stat(path).st_ino
        return out

    def _current(self) -> dict[int, bytes]:
        out = {}
        for name, ino in self._listing().items():
            with open(os.path.join(self.dir, name), "rb") as f:
                out[ino] = f.read()
        return out

    def _crash(self) -> None:
        self.crashed = True
        current = self._current()
        image = {}
        for name, ino in self.entries.items():
            old = self.synced.get(ino, b"")
            new = current.get(ino, old)  # an inode unlinked since: its synced bytes are all we know
            image[name] = self.settle(old, new)
        self.image = image

    def settle(self, old: bytes, new: bytes) -> bytes:
        """The bytes of one file after the power failed, given its synced and current bytes.

        Only bytes written since the sync are at risk: like SQLite's "powersafe overwrite",
        a write never damages bytes of its sector that it did not change (a log's header
        and earlier frames share a sector with the next append).
        """
        if old == new or self.mode == "keep":
            return new
        if self.mode == "drop":
            return old
        size = max(len(old), len(new))
        old_p, new_p = old.ljust(size, b"\0"), new.ljust(size, b"\0")
        out = bytearray(new_p)
        first = True
        for start in range(0, size, SECTOR):
            stop = min(size, start + SECTOR)
            if old_p[start:stop] == new_p[start:stop] and stop <= min(len(old), len(new)):
                continue
            if self.mode == "first_sector_lost":
                choice = "zeros" if first else "new"
                first = False
            else:
                choice = self.rng.choice(("new", "old", "zeros", "noise"))
            for i in range(start, stop):
                changed = i >= len(old) or i >= len(new) or old[i] != new[i]
                if not changed or choice == "new":
                    continue
                out[i] = {"old": old_p[i], "zeros": 0, "noise": self.rng.randrange(256)}[choice]
        length = len(new) if self.mode == "first_sector_lost" else self.rng.choice((len(old), len(new)))
        return bytes(out[:length])

    # -- the proxied calls --

    def open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            self._check("open for writing")
        fd = _REAL.open(path, flags, mode, dir_fd=dir_fd)
        if flags & getattr(os, "O_DIRECTORY", 0) and os.path.abspath(os.fspath(path)) == self.dir:
            self._dir_fds.add(fd)
        else:
            self._dir_fds.discard(fd)
        return fd

    def close(self, fd: int) -> None:
        self._dir_fds.discard(fd)
        _REAL.close(fd)

    def write(self, fd: int, data: Any) -> int:
        self._check("write")
        return _REAL.write(fd, data)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        self._check("pwrite")
        return _REAL.pwrite(fd, data, offset)

    def ftruncate(self, fd: int, length: int) -> None:
        self._check("ftruncate")
        _REAL.ftruncate(fd, length)

    def truncate(self, path: Any, length: int) -> None:
        self._check("truncate")
        _REAL.truncate(path, length)

    def fsync(self, fd: int) -> None:
        self._sync(fd, _REAL.fsync)

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, _REAL.fdatasync)

    def replace(self, src: Any, dst: Any) -> None:
        self._check("replace")
        _REAL.replace(src, dst)

    def rename(self, src: Any, dst: Any) -> None:
        self._check("rename")
        _REAL.rename(src, dst)

    def unlink(self, path: Any) -> None:
        self._check("unlink")
        _REAL.unlink(path)

    def write_image(self, directory: str) -> None:
        """Lay the disk's state after the crash out in ``directory`` (the machine rebooted)."""
        assert self.image is not None, "no crash happened"
        os.makedirs(directory, exist_ok=True)
        for name, data in self.image.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
