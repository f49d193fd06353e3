"""Byte layout of ``events.log``, format version 1, and how its end is found.

File header, 16 bytes::

    0   8  magic  b"LEDGRLOG"
    8   4  format version, u32 little-endian (1)
    12  4  reserved, zero

Then frames, back to back. One frame holds one commit group (all events made durable by
one fdatasync) and is all-or-nothing, like a Kafka record batch::

    0   4  magic  b"LGF1"
    4   4  payload length N, u32 LE
    8   8  first seq, u64 LE
    16  4  count of events, u32 LE
    20  4  CRC-32 (zlib) of bytes 4..20 and of the payload
    24  N  payload: one MessagePack array of `count` events (see events.py)
    24+N 4 total frame length 24+N+8, u32 LE
    28+N 4 magic  b"LGFE"

A frame is *valid* when both magics match, the CRC matches, the trailer's length agrees and
the payload decodes to `count` events numbered first_seq .. first_seq+count-1 (the writer numbers
them consecutively; readers check the count and both ends). The CRC covers the length, seq
and count, so stale or zeroed bytes never pass as records.

Recovery rule. The trailer lets the end be found from the end, so opening costs O(1) for
a clean log: if the last 8 bytes are a trailer of a valid frame, the log is clean.
Otherwise scan backwards (at most MAX_FRAME bytes) for the last valid frame; everything
after it is the *tail* (a torn or unsynced write) and is cut away by the writer after
copying it beside the log. A frame that fails its checks *before* that end is corruption:
readers raise CorruptLogError with its offset and never skip it. (Walking frames in a file,
forwards or back from the end, is walk.py; what a failure means is recovery.py and
reader.py.)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

from .events import Event, decode_many

__all__ = [
    "FILE_MAGIC",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "FRAME_OVERHEAD",
    "MAX_FRAME",
    "Frame",
    "FrameCheck",
    "file_header",
    "check_file_header",
    "encode_frame",
    "check_frame",
]

FILE_MAGIC = b"LEDGRLOG"
FORMAT_VERSION = 1
HEADER_SIZE = 16
_FILE_HEADER = struct.Struct("<8sII")

FRAME_MAGIC = b"LGF1"
TRAILER_MAGIC = b"LGFE"
_FRAME_HEAD = struct.Struct("<4sIQII")  # magic, length, first_seq, count, crc
_TRAILER = struct.Struct("<I4s")  # total length, magic
FRAME_HEAD_SIZE = _FRAME_HEAD.size  # 24
TRAILER_SIZE = _TRAILER.size  # 8
FRAME_OVERHEAD = FRAME_HEAD_SIZE + TRAILER_SIZE
# The writer splits groups above this many payload bytes; a single larger event still
# gets a frame of its own. The backward scan looks this far (plus one frame) for an end.
MAX_FRAME = 4 << 20


class Frame(NamedTuple):
    offset: int
    end: int
    first_seq: int
    events: list[Event]


class FrameCheck(NamedTuple):
    """Outcome of checking the bytes at one offset: a frame, or why there is none."""

    frame: Frame | None
    reason: str  # "" when frame is set; "incomplete" when the bytes run out


def file_header() -> bytes:
    return _FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, 0)


def check_file_header(data: bytes) -> str:
    """Why these bytes are not a header we can read ("" when they are)."""
    if len(data) < HEADER_SIZE:
        return "file shorter than the log header"
    magic, version, _ = _FILE_HEADER.unpack_from(data)
    if magic != FILE_MAGIC:
        return "not a ledger event log (bad magic)"
    if version != FORMAT_VERSION:
        return f"log format version {version} is not supported (this ledger reads {FORMAT_VERSION})"
    return ""


def encode_frame(first_seq: int, count: int, payload: bytes) -> bytes:
    fields = struct.pack("<IQI", len(payload), first_seq, count)
    crc = zlib.crc32(payload, zlib.crc32(fields))
    total = FRAME_OVERHEAD + len(payload)
    return b"".join(
        (FRAME_MAGIC, fields, struct.pack("<I", crc), payload, _TRAILER.pack(total, TRAILER_MAGIC))
    )


def check_frame(buf: bytes | memoryview, pos: int, offset: int,
                decode: Callable[[bytes | memoryview], list[Any]] = decode_many) -> FrameCheck:
    """Check the frame starting at ``buf[pos]`` (file offset ``offset``); ``decode`` reads
    the payload (``events.decode_many_view`` for readers that skip raw reply bodies)."""
    if len(buf) - pos < FRAME_HEAD_SIZE:
        return FrameCheck(None, "incomplete")
    magic, length, first_seq, count, crc = _FRAME_HEAD.unpack_from(buf, pos)
    if magic != FRAME_MAGIC:
        return FrameCheck(None, "bad frame magic")
    body = pos + FRAME_HEAD_SIZE
    end = body + length + TRAILER_SIZE
    if zlib.crc32(buf[body : body + length], zlib.crc32(buf[pos + 4 : pos + 20])) != crc:
        return FrameCheck(None, "incomplete" if end > len(buf) else "checksum mismatch")
    total, tmagic = _TRAILER.unpack_from(buf, body + length) if end <= len(buf) else (0, b"")
    if end > len(buf):
        return FrameCheck(None, "incomplete")
    if tmagic != TRAILER_MAGIC or total != end - pos:
        return FrameCheck(None, "bad frame trailer")
    return _decode_frame(buf, pos, offset, length, first_seq, count, decode)


def _decode_frame(buf, pos: int, offset: int, length: int, first_seq: int, count: int,
                  decode: Callable[[bytes | memoryview], list[Any]]) -> FrameCheck:
    body = pos + FRAME_HEAD_SIZE
    try:
        events = decode(buf[body : body + length])
    except Exception as exc:  # msgspec.DecodeError / ValidationError: a CRC-valid but bad payload
        return FrameCheck(None, f"payload does not decode: {exc}")
    # The payload is CRC-checked and the writer numbers a group's events consecutively:
    # the count and both ends are checked here (every event's seq would cost a tenth of a
    # replay).
    if len(events) != count or not count or events[0].seq != first_seq or events[-1].seq != first_seq + count - 1:
        return FrameCheck(None, "events do not match the frame's seq range")
    end = offset + FRAME_OVERHEAD + length
    return FrameCheck(Frame(offset, end, first_seq, events), "")
