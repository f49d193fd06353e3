"""Walking a log's frames: the one piece of code that reads frames out of a file.

Readers stream frames forward, opening finds where the valid log ends (backwards from the
end), and verify and repair step over damage to the next frame that checks. All of them
read through one ``FrameWalker``, so the buffering, the limits on what a length field may
claim and the rule for a frame still being written are decided once (framing.py says what a
valid frame is; recovery.py and reader.py say what a failure means to them):

* reads go through one buffer window (about ``CHUNK`` bytes, larger for a larger frame);
  each byte is copied once on its way from the page cache;
* a length field above ``LARGEST_FRAME`` is damage, never a reason to read gigabytes;
* a frame that fails its checks is read again, fresh from the file, before it is called
  bad: a live writer may have finished it since the buffer was filled (readers run in other
  processes during a run).

The walker only checks frames; the seq chain between frames (gaps, renumbering, stale
copies) is the caller's business, because readers, verify and salvage each treat a gap
differently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

from .events import decode_many
from .framing import FRAME_MAGIC, FRAME_OVERHEAD, TRAILER_MAGIC, TRAILER_SIZE, Frame, FrameCheck, check_frame

__all__ = ["FrameWalker", "Step", "Decode", "CHUNK", "LARGEST_FRAME"]

Decode = Callable[[bytes | memoryview], list[Any]]
CHUNK = 1 << 20
# No frame is larger: a length field above it is damage, not a reason to read gigabytes.
LARGEST_FRAME = 1 << 30


class Step(NamedTuple):
    """One stop of a walk: the offset looked at and what was found there."""

    offset: int
    check: FrameCheck


class FrameWalker:
    """Checked frames of one open log file (unbuffered binary) up to file offset ``size``."""

    def __init__(self, f: BinaryIO, size: int, decode: Decode = decode_many) -> None:
        self._f = f
        self.size = size
        self._decode = decode
        self._buf = memoryview(b"")
        self._buf_off = 0

    # -- forward ----------------------------------------------------------------------------

    def forward(self, start: int) -> Iterator[Step]:
        """Frames back to back from ``start`` (a frame boundary) until ``size``; the first
        offset that holds no valid frame is yielded too, and ends the walk."""
        offset = start
        while offset < self.size:
            check = self.at(offset)
            yield Step(offset, check)
            if check.frame is None:
                return
            offset = check.frame.end

    def at(self, offset: int) -> FrameCheck:
        """The frame starting at ``offset``, or why there is none."""
        pos = offset - self._buf_off
        if not 0 <= pos <= len(self._buf):
            self._fill(offset)
            pos = 0
        check = check_frame(self._buf, pos, offset, self._decode)
        if check.reason == "incomplete" and self._buf_off + len(self._buf) < self.size:
            too_long = self._implausible(pos)
            if too_long:
                return too_long
            self._fill(offset)
            check = check_frame(self._buf, 0, offset, self._decode)
        if check.frame is None:
            fresh = self._reread(offset)
            if fresh is not None:
                return fresh
            return self._implausible(offset - self._buf_off) or check
        return check

    def next_valid(self, offset: int) -> int:
        """The offset of the first valid frame at or after ``offset`` (found by its magic:
        frames are self-delimiting), or ``size`` if there is none."""
        while offset < self.size:
            pos = offset - self._buf_off
            if not 0 <= pos < len(self._buf):
                self._fill(offset)
                pos = 0
            # The window always starts at index 0 of the bytes behind it: search those
            # (memoryview has no find), bounded to the window.
            hit = self._buf.obj.find(FRAME_MAGIC, pos, len(self._buf))  # type: ignore[union-attr]
            if hit < 0:
                offset = max(offset + 1, self._buf_off + len(self._buf) - len(FRAME_MAGIC) + 1)
                continue
            candidate = self._buf_off + hit
            if candidate >= self.size:
                return self.size
            if self.at(candidate).frame is not None:
                return candidate
            offset = candidate + 1
        return self.size

    # -- backward ---------------------------------------------------------------------------

    def last_frame(self, start: int) -> Frame | None:
        """The last valid frame wholly inside [start, size) that ends exactly at a trailer,
        scanning backwards from ``size``; None if there is none. Everything after it is
        the caller's tail (a torn or unsynced write)."""
        self._buf = memoryview(b"")  # read fresh: the end is what the file holds now
        self._fill(start, self.size - start)
        tail, base = self._buf[: self.size - start], start
        raw = tail.obj  # the bytearray behind the window: rfind without a copy
        pos = len(tail)
        while pos >= TRAILER_SIZE:
            hit = raw.rfind(TRAILER_MAGIC, 0, pos)  # type: ignore[union-attr]
            if hit < TRAILER_SIZE - 4:
                return None
            begin = hit + 4 - int.from_bytes(tail[hit - 4 : hit], "little")
            if begin >= 0:
                check = check_frame(tail, begin, base + begin, self._decode)
                if check.frame is not None and check.frame.end == base + hit + 4:
                    return check.frame
            pos = hit + 3  # keep looking before this candidate (overlaps allowed)
        return None

    # -- reading ----------------------------------------------------------------------------

    def _fill(self, offset: int, want: int = 0) -> None:
        """A new window from ``offset``: the unread rest of the old one, then one read
        straight into the new buffer."""
        pos = offset - self._buf_off
        rest = self._buf[pos:] if 0 <= pos <= len(self._buf) else memoryview(b"")
        need = FRAME_OVERHEAD
        if len(rest) >= 8 and bytes(rest[:4]) == FRAME_MAGIC:
            need += min(int.from_bytes(rest[4:8], "little"), LARGEST_FRAME)
        want = want or max(CHUNK, min(need, self.size - offset))
        new = bytearray(want)
        new[: len(rest)] = rest
        self._f.seek(offset + len(rest))
        got = self._f.readinto(memoryview(new)[len(rest):])
        self._buf, self._buf_off = memoryview(new)[: len(rest) + (got or 0)], offset

    def _reread(self, offset: int) -> FrameCheck | None:
        """The frame at ``offset`` read again, fresh from the file, if it checks now."""
        self._f.seek(offset)
        head = self._f.read(FRAME_OVERHEAD)
        if len(head) < 8:
            return None
        length = int.from_bytes(head[4:8], "little")
        if length > LARGEST_FRAME:
            return None
        data = head + self._f.read(length)
        check = check_frame(data, 0, offset, self._decode)
        if check.frame is None:
            return None
        self._buf, self._buf_off = memoryview(b""), check.frame.end
        return check

    def _implausible(self, pos: int) -> FrameCheck | None:
        head = self._buf[pos : pos + 8]
        if len(head) == 8 and bytes(head[:4]) == FRAME_MAGIC:
            length = int.from_bytes(head[4:8], "little")
            if length > LARGEST_FRAME:
                return FrameCheck(None, f"implausible frame length {length}")
        return None
