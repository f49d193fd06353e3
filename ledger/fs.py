"""The one door to the file system: every open, write, sync, rename and unlink the
distribution makes goes through these functions, never through ``os`` directly.

Why a door: crash and disk-fault tests need to steer *every* I/O path (fail the Nth
fdatasync, lose unsynced bytes at power-off), and a path they cannot reach is a path
nobody has tested. Like LevelDB's ``Env`` or SQLite's VFS, the calls here forward to one
replaceable backend: the real ``os`` (plus ``builtins.open``) in production, a model of a
failing disk in the chaos tests (``use``). Patching ``os`` module by module would miss the
module somebody adds next.

Not covered, by nature: LMDB's own I/O (a C library with its own mmap), and sockets.
"""

from __future__ import annotations

import builtins
import os as _os
from collections.abc import Iterator
from typing import IO, Any

__all__ = [
    "Backend", "use", "backend",
    "open", "close", "read", "pread", "write", "pwrite", "fsync", "fdatasync", "ftruncate",
    "truncate", "lseek", "fstat", "stat", "statvfs", "posix_fallocate", "dup", "fdopen",
    "replace", "rename", "link", "unlink", "rmdir", "makedirs", "listdir", "scandir",
    "access", "open_file",
]


class Backend:
    """The real thing: every name of ``os``, plus ``open_file`` (``builtins.open``).

    A test backend subclasses this and overrides the calls it steers; everything else
    falls through to the real ``os``.
    """

    open_file = staticmethod(builtins.open)

    def __getattr__(self, name: str) -> Any:
        return getattr(_os, name)


_backend: Backend = Backend()


def use(new: Backend) -> Backend:
    """Route every later call to ``new``; returns the backend it replaces (to put back)."""
    global _backend
    old, _backend = _backend, new
    return old


def backend() -> Backend:
    return _backend


# -- descriptors ----------------------------------------------------------------------------


def open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:  # noqa: A001
    return _backend.open(path, flags, mode, dir_fd=dir_fd)


def close(fd: int) -> None:
    _backend.close(fd)


def read(fd: int, n: int) -> bytes:
    return _backend.read(fd, n)


def pread(fd: int, n: int, offset: int) -> bytes:
    return _backend.pread(fd, n, offset)


def write(fd: int, data: Any) -> int:
    return _backend.write(fd, data)


def pwrite(fd: int, data: Any, offset: int) -> int:
    return _backend.pwrite(fd, data, offset)


def fsync(fd: int) -> None:
    _backend.fsync(fd)


def fdatasync(fd: int) -> None:
    _backend.fdatasync(fd)


def ftruncate(fd: int, length: int) -> None:
    _backend.ftruncate(fd, length)


def lseek(fd: int, pos: int, how: int) -> int:
    return _backend.lseek(fd, pos, how)


def fstat(fd: int) -> _os.stat_result:
    return _backend.fstat(fd)


def posix_fallocate(fd: int, offset: int, length: int) -> None:
    _backend.posix_fallocate(fd, offset, length)


def dup(fd: int) -> int:
    return _backend.dup(fd)


def fdopen(fd: int, *args: Any, **kwargs: Any) -> IO[Any]:
    return _backend.fdopen(fd, *args, **kwargs)


# -- paths ----------------------------------------------------------------------------------


def open_file(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
    """``builtins.open`` through the backend (text and buffered binary files)."""
    return _backend.open_file(path, mode, *args, **kwargs)


def truncate(path: Any, length: int) -> None:
    _backend.truncate(path, length)


def stat(path: Any) -> _os.stat_result:
    return _backend.stat(path)


def statvfs(path: Any) -> _os.statvfs_result:
    return _backend.statvfs(path)


def replace(src: Any, dst: Any) -> None:
    _backend.replace(src, dst)


def rename(src: Any, dst: Any) -> None:
    _backend.rename(src, dst)


def link(src: Any, dst: Any) -> None:
    _backend.link(src, dst)


def unlink(path: Any) -> None:
    _backend.unlink(path)


def rmdir(path: Any) -> None:
    _backend.rmdir(path)


def makedirs(path: Any, mode: int = 0o777, exist_ok: bool = False) -> None:
    _backend.makedirs(path, mode, exist_ok)


def listdir(path: Any = ".") -> list[str]:
    return _backend.listdir(path)


def scandir(path: Any = ".") -> Iterator[_os.DirEntry[str]]:
    return _backend.scandir(path)


def access(path: Any, mode: int) -> bool:
    return _backend.access(path, mode)
