"""Streaming the log: frames and events from any offset, in bounded memory, and following.

Readers never take the writer's lock and never modify the file, so they may run in other
processes during a run. A frame that fails its checks is either the tail (a write in
progress, or a torn write the next writer will cut away: reading stops there quietly) or
corruption (valid frames follow it: CorruptLogError with its offset). Memory is bounded by
the read chunk plus the largest frame.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from . import fs
from .errors import CorruptLogError, LogFormatError
from .events import Event, decode_many
from .framing import HEADER_SIZE, Frame
from .recovery import locate_end, read_header
from .walk import Decode, FrameWalker

__all__ = ["iter_frames", "iter_events", "follow_events", "log_end"]


def log_end(path: str) -> int:
    """Offset just past the last valid frame (what a reader may safely read up to)."""
    with _open(path) as f:
        return locate_end(f, path).end


def _open(path: str):
    try:
        return fs.open_file(path, "rb", buffering=0)
    except FileNotFoundError as exc:
        raise LogFormatError(f"{path}: no such log") from exc


def iter_frames(path: str, start: int = HEADER_SIZE, stop: int | None = None, *,
                decode: Decode = decode_many) -> Iterator[Frame]:
    """Frames from file offset ``start`` (a frame boundary) up to ``stop`` or the end;
    ``decode`` reads each payload (``decode_many_view``: responses without their raw body)."""
    with _open(path) as f:
        read_header(f, path)
        size = f.seek(0, os.SEEK_END) if stop is None else stop
        yield from _frames(f, path, max(start, HEADER_SIZE), size, decode)


def _frames(f, path: str, offset: int, size: int, decode: Decode) -> Iterator[Frame]:
    expected_seq = None
    for at, check in FrameWalker(f, size, decode).forward(offset):
        frame = check.frame
        if frame is None:
            _raise_unless_tail(f, path, at, check.reason)
            return
        if expected_seq is not None and frame.first_seq != expected_seq:
            _raise_unless_tail(f, path, at, f"seq gap: expected {expected_seq}, found {frame.first_seq}")
            return
        expected_seq = frame.first_seq + len(frame.events)
        yield frame


def _raise_unless_tail(f, path: str, offset: int, reason: str) -> None:
    if offset >= locate_end(f, path).end:
        return
    raise CorruptLogError(path, offset, reason)


def iter_events(path: str, start: int = HEADER_SIZE, stop: int | None = None) -> Iterator[Event]:
    for frame in iter_frames(path, start, stop):
        yield from frame.events


def follow_events(
    path: str,
    start: int = HEADER_SIZE,
    *,
    poll: float = 0.2,
    until: Callable[[], bool] = lambda: False,
) -> Iterator[Event]:
    """Events as they become durable, polling for growth; ends at the end of the first read
    that began after ``until()`` returned true (so nothing written before that is missed)."""
    offset = start
    while True:
        stopped = until()  # asked before the read, so that read sees all the writer wrote
        for frame in iter_frames(path, offset):
            yield from frame.events
            offset = frame.end
        if stopped:
            return
        time.sleep(poll)
