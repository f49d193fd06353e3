"""Finding the valid end of a log, verifying every frame, and salvaging a damaged log.

The recovery rule is in framing.py's docstring. This module applies it to files:

* ``locate_end`` is what opening does: O(1) for a clean log (the last frame is checked
  through its trailer), a bounded backward scan after a torn write.
* ``verify`` reads every frame and reports every problem, resynchronising on the next
  frame magic so that one bad byte does not hide later damage. Bytes past the end that
  opening keeps (``locate_end``) are the torn tail, counted in ``tail_bytes``, not problems.
* ``cut_tail`` saves the bytes past a given offset beside the log (``events.log.broken``,
  or ``.broken.N`` when that exists) and only then truncates: nothing is destroyed
  without a copy. It is used both for torn tails on open and by ``verify --repair``.
* ``salvage`` finds the valid frames after a damaged region (frames are self-delimiting:
  magic, length, CRC, trailer), so that repair keeps every frame it can read, not only
  those before the first damage (maintenance.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from . import fs
from .errors import LogFormatError
from .framing import FRAME_OVERHEAD, HEADER_SIZE, MAX_FRAME, check_file_header
from .fsio import fsync_dir, write_durable
from .walk import FrameWalker

__all__ = ["LogEnd", "Problem", "VerifyReport", "locate_end", "verify", "cut_tail", "read_header", "salvage",
           "broken_path"]

# Torn writes are at most one group, so the last valid frame lies within this window.
_SCAN_WINDOW = 2 * MAX_FRAME + 2 * FRAME_OVERHEAD


class LogEnd(NamedTuple):
    end: int  # offset just past the last valid frame
    last_seq: int  # seq of its last event; 0 for an empty log
    size: int  # file size seen; size > end means a tail to cut


def read_header(f: BinaryIO, path: str) -> None:
    f.seek(0)
    reason = check_file_header(f.read(HEADER_SIZE))
    if reason:
        raise LogFormatError(f"{path}: {reason}")


def locate_end(f: BinaryIO, path: str) -> LogEnd:
    """Where the valid log ends: from the trailer if the log is clean, else scanning back."""
    read_header(f, path)
    size = f.seek(0, os.SEEK_END)
    if size == HEADER_SIZE:
        return LogEnd(HEADER_SIZE, 0, size)
    start = max(HEADER_SIZE, size - _SCAN_WINDOW)
    frame = FrameWalker(f, size).last_frame(start)
    if frame is not None:
        return LogEnd(frame.end, frame.first_seq + len(frame.events) - 1, size)
    if start == HEADER_SIZE:
        return LogEnd(HEADER_SIZE, 0, size)
    return _scan_forward_for_end(f, size)


def _scan_forward_for_end(f: BinaryIO, size: int) -> LogEnd:
    """Rare path (a torn frame larger than the window): walk frames from the start."""
    end, last_seq = HEADER_SIZE, 0
    for _, check in FrameWalker(f, size).forward(HEADER_SIZE):
        if check.frame is None:
            break
        end, last_seq = check.frame.end, check.frame.first_seq + len(check.frame.events) - 1
    return LogEnd(end, last_seq, size)


@dataclass
class Problem:
    offset: int
    reason: str


@dataclass
class VerifyReport:
    path: str
    size: int = 0
    frames: int = 0
    events: int = 0
    last_seq: int = 0
    end: int = HEADER_SIZE  # end of the valid prefix: what --repair keeps
    problems: list[Problem] = field(default_factory=list)
    tail_bytes: int = 0  # bytes after the last valid frame (a torn tail if no problems before)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(f: BinaryIO, path: str) -> VerifyReport:
    """Check every frame and the seq chain; report every problem with its offset."""
    read_header(f, path)
    size = f.seek(0, os.SEEK_END)
    report = VerifyReport(path=path, size=size)
    walker = FrameWalker(f, size)
    offset, expected_seq, clean = HEADER_SIZE, 1, True
    while offset < size:
        check = walker.at(offset)
        frame = check.frame
        if frame is not None and expected_seq is not None and frame.first_seq != expected_seq:
            check, frame = check._replace(frame=None, reason=f"seq gap: expected {expected_seq}, found {frame.first_seq}"), None
        if frame is None:
            report.problems.append(Problem(offset, check.reason))
            clean = False
            offset = walker.next_valid(offset + 1)
            expected_seq = None  # the bad frame's events are unknown: restart the chain
            continue
        report.frames += 1
        report.events += len(frame.events)
        expected_seq = frame.first_seq + len(frame.events)
        report.last_seq = expected_seq - 1
        if clean:
            report.end = frame.end
        offset = frame.end
    # What follows the end a writer keeps on open is a torn tail (a crash mid-write, or a
    # live writer's frame in progress), not corruption: readers stop there quietly too.
    tail = locate_end(f, path).end
    report.problems = [p for p in report.problems if p.offset < tail]
    report.tail_bytes = size - report.end
    return report


def salvage(f: BinaryIO, start: int, size: int, after_seq: int):
    """The valid frames in [start, size), in order, skipping damaged bytes: each frame's
    events must come after every frame kept before it (``after_seq`` is the last seq of
    what precedes ``start``), so a stale copy or a frame quoted inside a damaged payload is
    never taken for a later one. Yields Frames (decoded), streaming."""
    walker, offset = FrameWalker(f, size), start
    while offset < size:
        frame = walker.at(offset).frame
        if frame is not None and frame.first_seq > after_seq:
            yield frame
            after_seq = frame.first_seq + len(frame.events) - 1
            offset = frame.end
        else:
            offset = walker.next_valid(offset + 1)


def broken_path(path: str) -> str:
    candidate, n = f"{path}.broken", 0
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}.broken.{n}"
    return candidate


def cut_tail(fd: int, path: str, end: int) -> tuple[str, int]:
    """Copy bytes past ``end`` beside the log, then truncate the log to ``end``.

    Returns (where the bytes went, how many). The copy is durable before the cut.
    """
    size = fs.fstat(fd).st_size
    if size <= end:
        return "", 0
    data = fs.pread(fd, size - end, end)
    saved = broken_path(path)
    write_durable(saved, data)
    fs.ftruncate(fd, end)
    fs.fsync(fd)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return saved, len(data)
