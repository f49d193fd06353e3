"""The rows projection: ``responses.jsonl`` (appended) and ``summary.json`` (rewritten).

Its fold is ``fold.py``. One line per finished (item, sample) is appended in log order, the
order in which the items finished: the file is written live and appended to by every resume,
and a rebuild writes the same bytes (DESIGN), so it cannot be in dataset order; a key
finished again (a retried failure) gets a later line that supersedes the first. The rows
table people load into pandas or Excel is ``ledger export``: last line per key, in dataset
order (each line carries the item's ``line`` in its dataset for that, ``export.py``); the
summary is rewritten atomically on the refresh cadence, before every checkpoint and on close
(a checkpoint is never newer than the summary it vouches for). Its part of the checkpoint
holds the fold's state and the byte length and CRC-32 of ``responses.jsonl`` at that point:
on open the file is cut back to that length (a partial last line from a crash goes away)
and events after the part are applied again; a file shorter than recorded or different
inside (projections are never synced: zeroed or garbled by a power loss) means a fold from
zero. Rebuilt first: one appended line per item makes it ready in seconds.

``reviews.jsonl`` (``reviews.py``): the run's ``reviewed`` events as the fold keeps them, with
whether each is stale or superseded; rewritten from the state like the summary, when it
changed. Version 2: rows carry ``correct_reviewed`` and the state the reviews.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from typing import IO, ClassVar

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.events import Parsed
from llm_ledger.ledger.framing import Frame
from llm_ledger.ledger.fsio import os_error, write_atomic
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.recovery import LogEnd

from . import fold
from .fold import Key, RunState
from .projection import Output, Part, Where
from .reviews import REVIEWS_FILE, encode_reviews
from .summary import encode_summary

__all__ = ["ROWS", "Rows", "RowsPart"]

ROWS = "rows"


class RowsPart(Part, kw_only=True):
    responses_bytes: int = 0
    responses_crc: int = 0  # CRC-32 of those bytes: damage inside the file means a refold
    state: RunState = msgspec.field(default_factory=RunState)


class Rows:
    name: ClassVar[str] = ROWS
    version: ClassVar[int] = 3  # 3: a line's latency is null when no reply of it was timed
    slow: ClassVar[bool] = False
    part_type: ClassVar[type[Part]] = RowsPart

    def __init__(self, paths: RunPaths, where: Where, writers: int) -> None:
        self.paths = paths
        self.where = where
        self.part: RowsPart = RowsPart()
        self._file: IO[bytes] | None = None
        self._reviews_written: tuple[str, bytes] | None = None  # (where, what) reviews.jsonl was last written

    @property
    def _reviews(self) -> str:
        return os.path.join(self.paths.dir, REVIEWS_FILE)

    def outputs(self) -> Sequence[Output]:
        return (Output(self.paths.responses), Output(self.paths.summary), Output(self._reviews))

    def check(self, end: LogEnd, clean: bool) -> bool:
        part, path = self.part, self.paths.responses
        try:
            size = fs.stat(path).st_size
        except OSError:
            return False
        if size < part.responses_bytes or _crc_prefix(path, part.responses_bytes) != part.responses_crc:
            return False
        if size > part.responses_bytes:
            fs.truncate(path, part.responses_bytes)
        return True

    def open(self) -> None:
        self._file = fs.open_file(self.where(self.paths.responses), "ab")

    def apply(self, frames: Sequence[Frame], overrides: Mapping[Key, Parsed]) -> None:
        part = self.part
        state, apply_many = part.state, fold.apply_many
        rows: list[fold.Row] = []
        for frame in frames:
            if frame.first_seq + len(frame.events) - 1 > part.seq:  # else applied already
                rows += apply_many(state, frame.events, overrides, part.seq)
                part.seq = frame.events[-1].seq
            part.offset = max(part.offset, frame.end)
        if rows:
            data = fold.encode_rows(rows)
            try:
                self._file.write(data)  # type: ignore[union-attr]
                self._file.flush()  # type: ignore[union-attr]
            except OSError as exc:
                raise os_error(self.where(self.paths.responses), exc) from exc
            part.responses_bytes += len(data)
            part.responses_crc = zlib.crc32(data, part.responses_crc)

    def write(self) -> None:
        write_atomic(self.where(self.paths.summary), encode_summary(self.part.state))
        where, data = self.where(self._reviews), encode_reviews(self.part.state.reviews)
        if self._reviews_written != (where, data) or not os.path.exists(where):  # small, and rarely changes
            write_atomic(where, data)
            self._reviews_written = (where, data)

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()  # its unwritten buffer, if any, goes with it (flushed after every batch)


def _crc_prefix(path: str, length: int) -> int:
    crc, left = 0, length
    with fs.open_file(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    return crc

