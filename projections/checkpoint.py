"""The projections' checkpoint, ``projections.ckpt``: one part per projection, proved by CRC.

Bytes: a 20-byte header -- magic ``LDGCKPT\\x01`` (the last byte is the file format), the
body's length (u64 LE) and the body's CRC-32 (u32 LE) -- then the body, a ``Checkpoint`` in
MessagePack. The body holds the envelope's ``version`` (7: one part per projection; an older
checkpoint is discarded whole and every projection folded again from the log), ``clean``
(written by a close: nothing was written after it), ``reparsed`` (the parts were folded with
re-parse overrides) and ``parts``: per projection name, its part's version and its part
(``projection.Part``: log offset and seq, the fold's state, what proves its files) as
MessagePack of its own type, decoded only by that projection.

A checkpoint whose header, length, CRC or version does not check vouches for nothing. A part
that is missing, of another version or does not decode vouches for its projection's files no
more; nor does one whose offset and seq are not a frame boundary of the log with that seq
(``on_log``: the log was cut or repaired after it). Resume reads multi-turn history from a
part, so none is believed unchecked. Written atomically (temp + rename); durably only when it
stops vouching for files about to be replaced (``invalidate``).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import TypeVar

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.fsio import write_atomic
from llm_ledger.ledger.reader import iter_frames
from llm_ledger.ledger.recovery import LogEnd

from .projection import Part

__all__ = ["Checkpoint", "VERSION", "encode_checkpoint", "read_checkpoint", "invalidate", "on_log", "put_part", "get_part"]

VERSION = 7  # the envelope's shape; each part carries its own version
P = TypeVar("P", bound=Part)


class Checkpoint(msgspec.Struct, kw_only=True):
    version: int = VERSION
    clean: bool = False  # written by close(): nothing was written after it
    reparsed: bool = False  # folded with re-parse overrides: keep using them
    parts: dict[str, tuple[int, msgspec.Raw]] = {}  # name -> (its version, its part in MessagePack)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Checkpoint).decode
_MAGIC = b"LDGCKPT\x01"
_HEADER = struct.Struct("<8sQI")  # magic, body length, CRC-32 of the body


def put_part(ckpt: Checkpoint, name: str, version: int, part: Part) -> None:
    ckpt.parts[name] = (version, msgspec.Raw(_encode(part)))


def get_part(ckpt: Checkpoint, name: str, version: int, part_type: type[P]) -> P | None:
    """The part of projection ``name`` if it is there, of ``version``, and decodes."""
    found = ckpt.parts.get(name)
    if found is None or found[0] != version:
        return None
    try:
        return msgspec.msgpack.decode(found[1], type=part_type)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def encode_checkpoint(ckpt: Checkpoint) -> bytes:
    """The checkpoint file's bytes: header, then the MessagePack body. One CRC-32 over the
    whole body: a few milliseconds for megabytes, cheap beside the encode itself, at the
    checkpoint's pace (every ``checkpoint_every`` seconds)."""
    body = _encode(ckpt)
    return _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def read_checkpoint(path: str) -> Checkpoint | None:
    """The checkpoint at ``path`` if it proves itself (magic, length, CRC, version), else None."""
    try:
        with fs.open_file(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data)
    body = memoryview(data)[_HEADER.size:]
    if magic != _MAGIC or length != len(body) or zlib.crc32(body) != crc:
        return None
    try:
        ckpt = _decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return ckpt if ckpt.version == VERSION else None


def invalidate(path: str, names: Iterable[str]) -> None:
    """Make the checkpoint at ``path`` stop vouching for these projections, durably, before
    their files are deleted or replaced (a missing part vouches for nothing)."""
    names = tuple(names)
    ckpt = read_checkpoint(path) if names else None
    if ckpt is None:
        return
    for name in names:
        ckpt.parts.pop(name, None)
    ckpt.clean = False
    write_atomic(path, encode_checkpoint(ckpt), durable=True)


def on_log(log: str, part: Part, end: LogEnd) -> bool:
    """Is the part's position a frame boundary of this log, right after the part's seq? (A
    log cut or repaired after the checkpoint, then grown again, has other events there.)"""
    if part.offset == end.end:
        return part.seq == end.last_seq
    if part.offset > end.end:
        return False
    try:
        frame = next(iter_frames(log, part.offset, end.end), None)
    except LedgerError:
        return False
    return frame is not None and frame.offset == part.offset and frame.first_seq == part.seq + 1
