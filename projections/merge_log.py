"""Writing a whole derived log: a sharded run's top-level ``events.log`` (merge.py).

The bytes are those of ``ledger/framing.py`` (header, then frames of at most
``_FRAME_EVENTS`` events and about ``MAX_FRAME`` payload bytes), the seqs numbered from 1
here, each event keeping its own ``ts``. The file is written beside its target
(``events.log.merge.tmp.<pid>``), fsync'd, renamed over the target and the directory
fsync'd: a reader sees the old log or the new one, never half of one, and a merge that
fails or is killed leaves the old log as it was (its temp file is removed by the next merge).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.events import Event, encode_many
from llm_ledger.ledger.framing import MAX_FRAME, encode_frame, file_header
from llm_ledger.ledger.fsio import replace_with

__all__ = ["write_log", "temp_path", "remove_temps"]

_FRAME_EVENTS = 2048  # events per frame: big enough that framing costs nothing, small enough to split rarely
_FLUSH = 1 << 20  # bytes gathered before one write


def temp_path(path: str) -> str:
    return f"{path}.merge.tmp.{os.getpid()}"


def remove_temps(path: str) -> None:
    """Temp files of merges that failed or were killed."""
    directory, name = os.path.split(path)
    for entry in fs.listdir(directory or "."):
        if entry.startswith(f"{name}.merge.tmp."):
            try:
                fs.unlink(os.path.join(directory, entry))
            except FileNotFoundError:
                pass


def write_log(path: str, events: Iterable[Event]) -> int:
    """Write ``events`` (seq renumbered from 1) as the log at ``path``, atomically and durably.
    Returns the number of events. Anything raised by ``events`` leaves ``path`` untouched."""
    return replace_with(path, lambda fd: _write_frames(fd, events), durable=True, tmp=temp_path(path))


def _write_frames(fd: int, events: Iterable[Event]) -> int:
    out = bytearray(file_header())
    chunk: list[Event] = []
    seq = 1
    for event in events:
        chunk.append(msgspec.structs.replace(event, seq=seq))
        seq += 1
        if len(chunk) >= _FRAME_EVENTS:
            out += _frames(chunk)
            chunk = []
            if len(out) >= _FLUSH:
                _write_all(fd, out)
                out = bytearray()
    out += _frames(chunk)
    _write_all(fd, out)
    return seq - 1


def _frames(chunk: list[Event]) -> bytes:
    """One frame, or several when the payload is above MAX_FRAME (one event alone may be)."""
    if not chunk:
        return b""
    payload = encode_many(chunk)
    if len(payload) > MAX_FRAME and len(chunk) > 1:
        half = len(chunk) // 2
        return _frames(chunk[:half]) + _frames(chunk[half:])
    return encode_frame(chunk[0].seq, len(chunk), payload)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[fs.write(fd, view):]
