"""The one door to the file system: every open, write, sync, rename and unlink the
distribution makes goes through these functions, never through ``os`` directly.

Why a door: crash and disk-fault tests need to steer *every* I/O path (fail the Nth
fdatasync, lose unsynced bytes at power-off), and a path they cannot reach is a path
nobody has tested. Like LevelDB's ``Env`` or SQLite's VFS, the calls here forward to one
replaceable backend: the real ``os`` (plus ``builtins.open``) in production, a model of a
failing disk in the chaos tests (``use``). Patching ``os`` module by module would miss the
module somebody adds next.

Not covered, by nature: LMDB's own I/O (a C library with its own mmap), sockets, and the
reads and writes of a file *object* once opened (``open_file``: its methods are the io
module's; the open itself goes through here).

Errors name their file. An OSError from a call on a path carries that path (``os`` does
so). One from a call on a descriptor (``write(fd, ...)`` on a full disk) carries no name of
its own: the path each descriptor was opened with is remembered here (``open``, ``dup``;
forgotten at ``close``) and set as the error's ``filename``, so that whoever reports it
says which file the disk refused without guessing.
"""

from __future__ import annotations

import builtins
import os as _os
import shutil as _shutil
from collections.abc import Iterator
from typing import IO, Any

__all__ = [
    "Backend", "use", "backend",
    "open", "close", "read", "pread", "write", "pwrite", "fsync", "fdatasync", "ftruncate",
    "truncate", "lseek", "fstat", "stat", "statvfs", "posix_fallocate", "dup", "fdopen",
    "replace", "rename", "link", "unlink", "rmdir", "makedirs", "listdir", "scandir",
    "access", "open_file", "rmtree", "path_of",
]


class Backend:
    """The real thing: every name of ``os``, plus ``open_file`` (``builtins.open``).

    A test backend subclasses this and overrides the calls it steers; everything else
    falls through to the real ``os``.
    """

    # Looked up on every call: plain attributes, not __getattr__ (the writer's hot path).
    open_file = staticmethod(builtins.open)
    open = staticmethod(_os.open)
    close = staticmethod(_os.close)
    read = staticmethod(_os.read)
    pread = staticmethod(_os.pread)
    write = staticmethod(_os.write)
    pwrite = staticmethod(_os.pwrite)
    fsync = staticmethod(_os.fsync)
    fdatasync = staticmethod(_os.fdatasync)
    ftruncate = staticmethod(_os.ftruncate)
    truncate = staticmethod(_os.truncate)
    lseek = staticmethod(_os.lseek)
    fstat = staticmethod(_os.fstat)
    stat = staticmethod(_os.stat)
    statvfs = staticmethod(_os.statvfs)
    posix_fallocate = staticmethod(_os.posix_fallocate)
    dup = staticmethod(_os.dup)
    fdopen = staticmethod(_os.fdopen)
    replace = staticmethod(_os.replace)
    rename = staticmethod(_os.rename)
    link = staticmethod(_os.link)
    unlink = staticmethod(_os.unlink)
    rmdir = staticmethod(_os.rmdir)
    makedirs = staticmethod(_os.makedirs)
    listdir = staticmethod(_os.listdir)
    scandir = staticmethod(_os.scandir)
    access = staticmethod(_os.access)

    def rmtree(self, path: Any, ignore_errors: bool = False) -> None:
        _shutil.rmtree(path, ignore_errors=ignore_errors)

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


# The path each open descriptor was opened with (the module docstring: errors name their file).
_paths: dict[int, str] = {}


def path_of(fd: int) -> str | None:
    """The path descriptor ``fd`` was opened with through this module, if it was."""
    return _paths.get(fd)


def _name(exc: OSError, fd: int) -> None:
    if exc.filename is None and fd in _paths:
        exc.filename = _paths[fd]


# -- descriptors ----------------------------------------------------------------------------


def open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:  # noqa: A001
    fd = _backend.open(path, flags, mode, dir_fd=dir_fd)
    _paths[fd] = _os.fsdecode(path)
    return fd


def close(fd: int) -> None:
    _paths.pop(fd, None)
    _backend.close(fd)


def read(fd: int, n: int) -> bytes:
    try:
        return _backend.read(fd, n)
    except OSError as exc:
        _name(exc, fd)
        raise


def pread(fd: int, n: int, offset: int) -> bytes:
    try:
        return _backend.pread(fd, n, offset)
    except OSError as exc:
        _name(exc, fd)
        raise


def write(fd: int, data: Any) -> int:
    try:
        return _backend.write(fd, data)
    except OSError as exc:
        _name(exc, fd)
        raise


def pwrite(fd: int, data: Any, offset: int) -> int:
    try:
        return _backend.pwrite(fd, data, offset)
    except OSError as exc:
        _name(exc, fd)
        raise


def fsync(fd: int) -> None:
    try:
        _backend.fsync(fd)
    except OSError as exc:
        _name(exc, fd)
        raise


def fdatasync(fd: int) -> None:
    try:
        _backend.fdatasync(fd)
    except OSError as exc:
        _name(exc, fd)
        raise


def ftruncate(fd: int, length: int) -> None:
    try:
        _backend.ftruncate(fd, length)
    except OSError as exc:
        _name(exc, fd)
        raise


def lseek(fd: int, pos: int, how: int) -> int:
    try:
        return _backend.lseek(fd, pos, how)
    except OSError as exc:
        _name(exc, fd)
        raise


def fstat(fd: int) -> _os.stat_result:
    try:
        return _backend.fstat(fd)
    except OSError as exc:
        _name(exc, fd)
        raise


def posix_fallocate(fd: int, offset: int, length: int) -> None:
    try:
        _backend.posix_fallocate(fd, offset, length)
    except OSError as exc:
        _name(exc, fd)
        raise


def dup(fd: int) -> int:
    new = _backend.dup(fd)
    if fd in _paths:
        _paths[new] = _paths[fd]
    else:  # a descriptor we did not open (standard output): forget the number's last owner
        _paths.pop(new, None)
    return new


def fdopen(fd: int, *args: Any, **kwargs: Any) -> IO[Any]:
    return _backend.fdopen(fd, *args, **kwargs)


# -- paths ----------------------------------------------------------------------------------


def open_file(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
    """``builtins.open`` through the backend (text and buffered binary files). Its descriptor
    is remembered under ``path`` too: a number reused from a closed descriptor must not keep
    the old one's name."""
    f = _backend.open_file(path, mode, *args, **kwargs)
    if not isinstance(path, int):
        try:
            _paths[f.fileno()] = _os.fsdecode(path)
        except (AttributeError, OSError, ValueError):  # a backend's file object without a descriptor
            pass
    return f


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


def rmtree(path: Any, ignore_errors: bool = False) -> None:
    """``shutil.rmtree`` through the backend (which may steer it as one call)."""
    _backend.rmtree(path, ignore_errors)
