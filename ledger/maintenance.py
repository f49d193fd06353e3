"""`verify` and `verify --repair` on a run's log, as the CLI and tests call them.

Repair takes the writer's lock (a live run is never repaired under its writer) and keeps
every frame it can read: the frames before the first damage as they are, and every valid
frame after it (recovery.salvage), renumbered so that the log stays gapless -- the events
of the damaged frames are lost, their seqs go to the events that follow. What it cuts is
saved beside the log first (``events.log.broken``: every byte from the first damage to the
old end, so that nothing is destroyed without a copy).

A log damaged only in its tail is cut in place. Otherwise the repaired log is written to a
temp file (the intact prefix copied, the salvaged frames appended), synced and renamed over
the log, so that a crash at any moment leaves the old log or the new one. The lock is on
the log's inode (lock.py): a process waiting for the lock finds the new file. A rename
also means the derived files no longer match: the index sees it (its frame CRC no longer
matches, index.py) and the projections' checkpoint is removed (the next open refolds them).
"""

from __future__ import annotations

import os

import msgspec

from . import fs
from .events import encode_many
from .framing import encode_frame
from .fsio import fsync_dir, os_error
from .layout import RunPaths
from .lock import RunLock
from .recovery import VerifyReport, broken_path, cut_tail, salvage, verify

__all__ = ["verify_log", "repair_log", "RepairReport"]

_COPY = 8 << 20


class RepairReport(msgspec.Struct, frozen=True):
    kept_bytes: int
    kept_events: int
    dropped_bytes: int
    saved_to: str
    salvaged_events: int = 0  # of kept_events, those found after the damage (renumbered)
    renumbered_from: int = 0  # the first seq given to a salvaged event (0: none)


def verify_log(path: str) -> VerifyReport:
    with fs.open_file(path, "rb", buffering=0) as f:
        return verify(f, path)


def repair_log(path: str) -> RepairReport:
    """Repair under the run's lock; an OSError (a full disk for the copy ...) is one line,
    and leaves the log as it was."""
    lock = RunLock.acquire(f"{path}.lock")
    try:
        return _repair(path)
    except OSError as exc:
        raise os_error(path, exc, "cannot repair") from exc
    finally:
        lock.release()


def _repair(path: str) -> RepairReport:
    """Keep every readable frame (the module docstring); the lock is held by the caller."""
    report = verify_log(path)
    kept, last_seq = _prefix(report)
    if not report.problems or not _anything_after(path, report, last_seq):
        fd = fs.open(path, os.O_RDWR)
        try:
            saved, dropped = cut_tail(fd, path, report.end)
        finally:
            fs.close(fd)
        return RepairReport(report.end, kept, dropped, saved)
    tmp = f"{path}.repair.{os.getpid()}"
    try:
        salvaged, size = _write_repaired(path, tmp, report, last_seq)
        saved = _save_cut(path, report.end, report.size)
        _forget_checkpoint(path)  # before the swap: the lock stays on the old file until we return
        fs.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            fs.unlink(tmp)
    dropped = report.size - size
    return RepairReport(size, kept + salvaged, dropped, saved, salvaged, last_seq + 1)


def _prefix(report: VerifyReport) -> tuple[int, int]:
    """(events, last seq) of the intact prefix."""
    from .reader import iter_frames

    events = last = 0
    for frame in iter_frames(report.path, stop=report.end):
        events += len(frame.events)
        last = frame.first_seq + len(frame.events) - 1
    return events, last


def _anything_after(path: str, report: VerifyReport, last_seq: int) -> bool:
    with fs.open_file(path, "rb", buffering=0) as f:
        return next(salvage(f, report.end, report.size, last_seq), None) is not None


def _write_repaired(path: str, tmp: str, report: VerifyReport, last_seq: int) -> tuple[int, int]:
    """Write the intact prefix and the renumbered salvaged frames to ``tmp``, synced.
    Returns (events salvaged, size of the new log)."""
    next_seq, salvaged = last_seq + 1, 0
    with fs.open_file(path, "rb", buffering=0) as src:
        out = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _copy(src.fileno(), out, 0, report.end)
            for frame in salvage(src, report.end, report.size, last_seq):
                events = [msgspec.structs.replace(e, seq=next_seq + i) for i, e in enumerate(frame.events)]
                _write_all(out, encode_frame(next_seq, len(events), encode_many(events)))
                next_seq += len(events)
                salvaged += len(events)
            size = fs.lseek(out, 0, os.SEEK_CUR)
            fs.fsync(out)
        finally:
            fs.close(out)
    return salvaged, size


def _copy(src: int, dst: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        data = fs.pread(src, min(_COPY, end - offset), offset)
        if not data:
            raise OSError(5, f"log shorter than {end} bytes while repairing")
        _write_all(dst, data)
        offset += len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[fs.write(fd, view):]


def _save_cut(path: str, start: int, end: int) -> str:
    """Every byte from the first damage to the end, beside the log, durably, before the
    log is replaced (streamed: the damaged part may be large)."""
    saved = broken_path(path)
    tmp = f"{saved}.tmp.{os.getpid()}"
    try:
        with fs.open_file(path, "rb", buffering=0) as src:
            out = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _copy(src.fileno(), out, start, end)
                fs.fsync(out)
            finally:
                fs.close(out)
    except BaseException:
        if os.path.exists(tmp):
            fs.unlink(tmp)
        raise
    fs.replace(tmp, saved)
    fsync_dir(os.path.dirname(os.path.abspath(saved)))
    return saved


def _forget_checkpoint(path: str) -> None:
    checkpoint = RunPaths(os.path.dirname(os.path.abspath(path))).checkpoint
    if os.path.exists(checkpoint):
        fs.unlink(checkpoint)
