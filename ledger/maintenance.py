"""`verify` and `verify --repair` on a run's log, as the CLI and tests call them.

Repair takes the writer's lock (a live run is never repaired under its writer), keeps
every frame before the first bad one, and saves what it cuts beside the log first.
"""

from __future__ import annotations

import os

import msgspec

from .lock import RunLock
from .recovery import VerifyReport, cut_tail, verify

__all__ = ["verify_log", "repair_log", "RepairReport"]


class RepairReport(msgspec.Struct, frozen=True):
    kept_bytes: int
    kept_events: int
    dropped_bytes: int
    saved_to: str


def verify_log(path: str) -> VerifyReport:
    with open(path, "rb", buffering=0) as f:
        return verify(f, path)


def repair_log(path: str) -> RepairReport:
    lock = RunLock.acquire(f"{path}.lock")
    try:
        report = verify_log(path)
        kept_events = _events_before(report)
        fd = os.open(path, os.O_RDWR)
        try:
            saved, dropped = cut_tail(fd, path, report.end)
        finally:
            os.close(fd)
        return RepairReport(report.end, kept_events, dropped, saved)
    finally:
        lock.release()


def _events_before(report: VerifyReport) -> int:
    from .reader import iter_frames

    return sum(len(frame.events) for frame in iter_frames(report.path, stop=report.end))
