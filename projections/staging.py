"""Staged outputs: a rebuild writes beside the run's files and swaps them in when complete.

A projection folded from zero writes to ``<path>.rebuild.tmp.<pid>`` (a directory that is a
mount point of its own gets its staged files inside it: a mount point cannot be renamed,
nor a file moved across file systems). ``swap`` puts a staged output in its place, like
SQLite's journal: a fold that fails (a damaged log, a full disk) or is killed leaves the old
files as they were, and the next open removes the staged ones (``remove_stale_temps``: every
``*.tmp.<pid>`` name; real outputs never end so -- conversations end in ``_s<N>.json`` -- so an
item id like ``a.tmp.b`` is safe).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from llm_ledger.ledger import fs
from llm_ledger.ledger.fsio import fsync_dir

from .projection import Output

__all__ = ["staged_path", "swap", "remove_output", "remove_tree", "remove_stale_temps", "TEMP"]

TEMP = re.compile(r"\.tmp\.\d+$")  # write_atomic's and a rebuild's temp names


def staged_path(output: Output) -> str:
    """Where a rebuild writes ``output`` (beside it; inside it for a mount point)."""
    if output.directory and os.path.ismount(output.path):
        return os.path.join(output.path, f".rebuild.tmp.{os.getpid()}")
    return f"{output.path}.rebuild.tmp.{os.getpid()}"


def swap(output: Output, staged: str) -> str | None:
    """Put the staged ``output`` in the live one's place; returns where the old directory
    went (a temp name nothing vouches for, for the caller to delete), if anywhere."""
    if not output.directory:
        fs.replace(staged, output.path)
        return None
    live = output.path
    if os.path.dirname(staged) != live:
        old = None
        if os.path.isdir(live):
            old = f"{live}.old.tmp.{os.getpid()}"
            fs.rename(live, old)
        fs.rename(staged, live)
        return old
    old = os.path.join(live, f".old.tmp.{os.getpid()}")  # a mount point: move file by file
    fs.makedirs(old, exist_ok=True)
    keep = {os.path.basename(staged), os.path.basename(old)}
    for name in fs.listdir(live):
        if name not in keep:
            fs.rename(os.path.join(live, name), os.path.join(old, name))
    for name in fs.listdir(staged):
        fs.rename(os.path.join(staged, name), os.path.join(live, name))
    fs.rmdir(staged)
    fsync_dir(live)
    return old


def remove_output(output: Output, path: str) -> None:
    """Delete what ``path`` holds of ``output`` (a directory is emptied and left in place)."""
    if output.directory:
        remove_tree(path, ignore_errors=True)
        fs.makedirs(path, exist_ok=True)
    elif os.path.lexists(path):
        fs.unlink(path)


def remove_tree(path: str, *, ignore_errors: bool = False) -> None:
    """Remove a directory tree (``fs.rmtree``, i.e. ``shutil.rmtree``: its unlinks relative to
    the directory's descriptor are what keeps deleting a
    hundred thousand conversation files fast) or a file; a path that is not there is fine."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            fs.rmtree(path, ignore_errors=ignore_errors)
        elif os.path.lexists(path):
            fs.unlink(path)
    except OSError:
        if not ignore_errors:
            raise


def remove_stale_temps(directories: Iterable[str]) -> None:
    """Temp files of a process killed between write and rename, and a killed rebuild's
    staged files and directories (the caller holds the run now)."""
    for directory in directories:
        if not os.path.isdir(directory):
            continue
        for name in fs.listdir(directory):
            if ".tmp." in name and TEMP.search(name):
                remove_tree(os.path.join(directory, name))
