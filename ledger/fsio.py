"""Durable file creation: the write-temp, fsync, rename, fsync-directory dance.

A new file is not durable until its directory entry is; a crash between rename and the
directory sync can lose the file even though its bytes were synced. Every file the log
layer creates goes through here.
"""

from __future__ import annotations

import os

__all__ = ["fsync_dir", "write_durable", "write_atomic"]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never half.

    ``durable`` also syncs the file and its directory (the log layer); projections skip it,
    because they are rebuilt from the log after a crash anyway.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_durable(path: str, data: bytes) -> None:
    write_atomic(path, data, durable=True)
