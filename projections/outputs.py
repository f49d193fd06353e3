"""Files a command writes where the user says (``export -o``, ``compare -o``): checked first,
then written aside and renamed, so that a failure leaves nothing half-written.

``check_output_path(path)`` refuses (``InputError``, exit 2):

* any path inside a run directory that the run owns: its log (``events.log``, and every
  name beginning so: the lock, ``.broken`` copies), the index, the projections
  (``responses.jsonl``, ``summary.json``, ``conversations/``, ``projections.ckpt``),
  ``plan.jsonl``, ``shards/`` and the ``*.tmp.<pid>`` names the projector deletes as stale.
  A run directory is any directory holding an ``events.log``; every ancestor of the path is
  checked (a shard is a run inside a run). The path is resolved with ``realpath`` first, so
  neither a symlink nor ``..`` gets around the check. A name of the user's own beside the
  run's files (``runs/R/export.parquet``) is allowed;
* an existing directory, a folder that does not exist, and an existing file that is not a
  regular one (``/dev/null``, a fifo: renaming over it would replace the device node; ``-o -``
  is how to write to standard output).

It returns the real path to write: a symlink to a file is written through (the link stays).

``atomic_output(path)`` yields the temp name to write; on success the temp file is synced
and renamed over the real path (then the folder is synced), on any error it is removed. Temp
names are ``<name>.ledger-tmp.<pid>``: the projector's stale-temp sweep (``*.tmp.<pid>``) does
not match them, so an export inside a run directory survives a projection refresh. Before
writing, temp files of dead processes in the same folder are removed: ours, and the
``<name>.<export suffix>.tmp.<pid>`` of older versions (a killed export left up to the whole
export behind). A file whose pid is alive (or unknowable) is left alone.

An ``OSError`` while writing (full disk, quota, I/O error on the temp file) becomes
``OutputError``: one line naming the path the user asked for and the reason, exit 1.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError, OutputError
from llm_ledger.ledger.fsio import fsync_dir
from llm_ledger.ledger.layout import RESERVED, RunPaths

from .registry import output_names

__all__ = ["STDOUT", "check_output_path", "atomic_output", "remove_dead_temps", "owner_of"]

STDOUT = "-"
_PROBE = RunPaths("")
# What a run owns at its top level: every name beginning with one of these (the lock and the
# ``.broken`` copies begin with the log's name; LMDB may add ``index.lmdb-lock``).
_OWNED = tuple(os.path.basename(p) for p in (_PROBE.log, _PROBE.index, _PROBE.responses, _PROBE.conversations,
                                             _PROBE.summary, _PROBE.checkpoint)) + ("plan.jsonl", "shards") + tuple(n.rstrip("/") for n in output_names(_PROBE))
_STALE = re.compile(r"\.tmp\.\d+$")  # the projector deletes these in a run directory (projector._TEMP)
_OURS = re.compile(r"^.+\.ledger-tmp\.(\d+)$")
_LEGACY = re.compile(r"^.+\.(?:arrow|parquet|csv|jsonl|xlsx)\.tmp\.(\d+)$")
# Errors that can only come from writing: an OSError without a file name and with one of
# these is the output's, whatever raised it (pyarrow, zipfile, a file object).
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _holds_runs(directory: str) -> bool:
    """A runs directory: a cache store in it, or a run."""
    try:
        names = fs.listdir(directory)
    except OSError:
        return False
    return "cache.lmdb" in names or any(_is_run_dir(os.path.join(directory, n)) for n in names[:1000])


def _is_run_dir(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, os.path.basename(_PROBE.log)))


def _owned_name(name: str) -> bool:
    return any(name == o or name.startswith((o + ".", o + "-")) for o in _OWNED) or bool(_STALE.search(name))


def owner_of(path: str) -> str | None:
    """The run directory that owns ``path`` (resolved), or None when no run does."""
    real = os.path.realpath(path)
    child, parent = real, os.path.dirname(real)
    while parent != child:
        if _is_run_dir(parent):
            first = os.path.relpath(real, parent).split(os.sep, 1)[0]
            if _owned_name(first):
                return parent
        child, parent = parent, os.path.dirname(parent)
    return None


def check_output_path(path: str) -> str:
    """Refuse a path the output must not go to (see the module docstring); returns the real
    path to write."""
    if path == STDOUT:
        raise InputError("-o -: standard output is not supported for this output; name a file")
    if not path:
        raise InputError("-o: empty path")
    run = owner_of(path)
    if run is not None:
        raise InputError(f"{path}: refusing to write there: it belongs to run {os.path.basename(run)} "
                         f"({run}); write the output outside the run's own files")
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    if os.path.basename(real) in RESERVED and _holds_runs(folder):
        raise InputError(f"{path}: refusing to write there: the cross-run cache of the runs directory {folder} keeps "
                         "that name; write the output elsewhere")
    if not os.path.isdir(folder):
        raise InputError(f"{path}: no such directory {folder}")
    try:
        mode = fs.stat(real).st_mode
    except FileNotFoundError:
        return real
    except OSError as exc:
        raise InputError(f"{path}: {_reason(exc)}") from exc
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a directory; name a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: not a regular file (use -o - for standard output, where the format allows it)")
    return real


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Check ``path``, yield a temp name beside it to write, then sync and rename it over the
    real path. On any error the temp file is removed; an OSError of the output becomes one
    ``OutputError`` naming ``path``."""
    real = check_output_path(path)
    folder = os.path.dirname(real)
    remove_dead_temps(folder)
    tmp = f"{real}.ledger-tmp.{os.getpid()}"
    _create(path, tmp)
    try:
        yield tmp
        _sync(tmp)
        fs.replace(tmp, real)
    except BaseException as exc:
        _unlink(tmp)
        if isinstance(exc, OSError) and _is_output_error(exc, tmp, real):
            raise OutputError(path, _reason(exc)) from exc
        raise
    try:
        fsync_dir(folder)
    except OSError as exc:  # the file is written and named; only its entry's sync failed
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot sync a directory
            raise OutputError(path, f"written, but its folder could not be synced: {_reason(exc)}") from exc


def _create(path: str, tmp: str) -> None:
    """Create the temp file now, so that a folder we cannot write to is said before any work
    (xlsx would only open its file at the very end)."""
    try:
        fs.close(fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))  # a dead namesake's: ours now
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{path}: no such directory {os.path.dirname(tmp)}") from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise InputError(f"{path}: cannot write in {os.path.dirname(tmp)}: {_reason(exc)}") from exc
        raise OutputError(path, _reason(exc)) from exc


def _sync(tmp: str) -> None:
    """The output is what the user asked for: durable before it is announced (and a late
    error, e.g. ENOSPC on a network file system, shows up here rather than never)."""
    fd = fs.open(tmp, os.O_RDONLY)
    try:
        fs.fsync(fd)
    finally:
        fs.close(fd)


def _is_output_error(exc: OSError, tmp: str, real: str) -> bool:
    if exc.filename is not None:
        return exc.filename in (tmp, real) or os.path.realpath(str(exc.filename)) in (tmp, real)
    return exc.errno in _WRITE_ERRNOS


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _unlink(path: str) -> None:
    try:
        fs.unlink(path)
    except FileNotFoundError:
        pass


def remove_dead_temps(folder: str) -> list[str]:
    """Remove the temp files of dead exports in ``folder``; returns their names. In a run
    directory the run's own names are left to its projector."""
    removed: list[str] = []
    run = _is_run_dir(folder)
    try:
        names = fs.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _OURS.match(name) or _LEGACY.match(name)
        if match is None or (run and _owned_name(name.split(".ledger-tmp.")[0])):
            continue
        if not _alive(int(match.group(1))):
            try:
                fs.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass  # another process removed it first, or we may not: not ours to insist
    return removed


def _alive(pid: int) -> bool:
    """Whether ``pid`` may be a live process (when in doubt: yes, and the file stays)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True
