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
from typing import Any

from .errors import CorruptLogError, LogFormatError
from .events import Event, decode_many
from .framing import FRAME_OVERHEAD, HEADER_SIZE, Frame, check_frame
from .recovery import locate_end, read_header

__all__ = ["iter_frames", "iter_events", "follow_events", "log_end"]

_CHUNK = 1 << 20
Decode = Callable[[bytes | memoryview], list[Any]]


def log_end(path: str) -> int:
    """Offset just past the last valid frame (what a reader may safely read up to)."""
    with _open(path) as f:
        return locate_end(f, path).end


def _open(path: str):
    try:
        return open(path, "rb", buffering=0)
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
    buf, buf_off, expected_seq = memoryview(b""), offset, None
    while offset < size:
        pos = offset - buf_off
        check = check_frame(buf, pos, offset, decode)
        if check.reason == "incomplete" and buf_off + len(buf) < size:
            buf, buf_off = _refill(f, buf, pos, offset, size), offset
            continue
        frame = check.frame
        if frame is not None and expected_seq is not None and frame.first_seq != expected_seq:
            frame, check = None, check._replace(reason=f"seq gap: expected {expected_seq}")
        if frame is None and not check.reason.startswith("seq gap"):
            frame = _recheck(f, offset, decode)
            buf, buf_off = memoryview(b""), frame.end if frame else offset
        if frame is None:
            _raise_unless_tail(f, path, offset, check.reason)
            return
        if expected_seq is not None and frame.first_seq != expected_seq:
            raise CorruptLogError(path, offset, f"seq gap: expected {expected_seq}, found {frame.first_seq}")
        expected_seq = frame.first_seq + len(frame.events)
        yield frame
        offset = frame.end


def _refill(f, buf: memoryview, pos: int, offset: int, size: int) -> memoryview:
    """A new buffer from ``offset``: the unread rest of ``buf``, then one read straight into
    the new buffer (each byte is copied once on its way from the page cache)."""
    rest = buf[pos:]
    need = FRAME_OVERHEAD
    if len(rest) >= 8:
        need += int.from_bytes(rest[4:8], "little")
    want = max(_CHUNK, min(need, size - offset))
    new = bytearray(want)
    new[: len(rest)] = rest
    f.seek(offset + len(rest))
    got = f.readinto(memoryview(new)[len(rest):])
    return memoryview(new)[: len(rest) + (got or 0)]


def _recheck(f, offset: int, decode: Decode) -> Frame | None:
    """Read the frame again, fresh from the file: a live writer may have finished it since
    our buffer was filled (a reader must not call a frame in progress corrupt)."""
    f.seek(offset)
    head = f.read(FRAME_OVERHEAD)
    if len(head) < 8:
        return None
    data = head + f.read(int.from_bytes(head[4:8], "little"))
    return check_frame(data, 0, offset, decode).frame


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
