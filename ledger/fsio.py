"""Durable file creation: the write-temp, fsync, rename, fsync-directory dance.

A new file is not durable until its directory entry is; a crash between rename and the
directory sync can lose the file even though its bytes were synced. Every file the log
layer creates goes through here.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TypeVar

from . import fs
from .errors import LedgerError, LogAccessError, StorageError

__all__ = ["fsync_dir", "write_durable", "write_atomic", "replace_with", "os_error", "preallocate"]

T = TypeVar("T")

# Refusals that are configuration (exit 2); anything else -- ENOSPC, EDQUOT, EIO -- is the
# disk failing under us (exit 1, resumable).
_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ENOENT)


def os_error(path: str, exc: OSError, doing: str = "cannot write") -> LedgerError:
    """The one-line error for an OSError on ``path``: the path, what failed, the cause."""
    if exc.errno in _ACCESS:
        return LogAccessError(path, exc)
    return StorageError(path, exc, doing)


def preallocate(path: str, size: int) -> None:
    """Make sure the first ``size`` bytes of ``path`` (created if missing) have disk blocks.

    A file that is extended with ftruncate and then written through a memory map (LMDB's
    lock.mdb) has no blocks behind it: on a full disk the first store kills the process
    with SIGBUS. Allocated beforehand, the same full disk is an OSError (ENOSPC) here.
    Bytes already in the file are kept (posix_fallocate never overwrites data)."""
    fd = fs.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        st = fs.fstat(fd)
        size = max(size, st.st_size)
        if st.st_blocks * 512 < size:
            fs.posix_fallocate(fd, 0, size)
    finally:
        fs.close(fd)


def fsync_dir(path: str) -> None:
    fd = fs.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fs.fsync(fd)
    finally:
        fs.close(fd)


def write_atomic(path: str, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never half.

    ``durable`` also syncs the file and its directory (the log layer); projections skip it,
    because they are rebuilt from the log after a crash anyway.
    """

    def fill(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[fs.write(fd, view) :]

    replace_with(path, fill, durable=durable)


def replace_with(path: str, fill: Callable[[int], T], *, durable: bool, tmp: str | None = None) -> T:
    """Replace ``path`` with what ``fill(fd)`` writes into a file beside it (``tmp``, default
    ``<path>.tmp.<pid>``), renamed over ``path`` only once complete (and, ``durable``, synced
    with its directory); anything raised leaves ``path`` untouched and no temp file."""
    tmp = tmp or f"{path}.tmp.{os.getpid()}"
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        result = fill(fd)
        if durable:
            fs.fsync(fd)
    except BaseException:
        fs.close(fd)
        fs.unlink(tmp)
        raise
    fs.close(fd)
    fs.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    return result


def write_durable(path: str, data: bytes) -> None:
    write_atomic(path, data, durable=True)
