"""The failures projection: ``failures.jsonl``, what failed and why, one line per item.

One line per (item, sample) whose latest finish is a final failure, in the order they failed:
``item_id``, ``sample``, ``turn``, ``attempt``, ``error_type``, ``message`` (secrets redacted,
as in the log), ``status`` (HTTP, or null), ``endpoint``, ``failed_at`` and ``seq`` of the
failure. An item that later succeeds (a resume retried it) leaves the file; one that fails
again moves to the end with its new error; a retry still in flight keeps its line until it
finishes. What "finished" and "failed" mean is ``ledger.lifecycle``'s. The file answers "what
do I have to look at, or resume?" without reading every response.

Rewritten atomically (temp + rename) when it changed, on the refresh cadence, before every
checkpoint and on close; its part of the checkpoint is the fold's state (the failed lines and
the keys in flight: O(unfinished)), from which the file is a pure function -- so ``check``
rewrites the file from the part whenever they differ (deleted, cut, garbled).

Also the worked example of the projection seam (``projection.py``): this module and its line
in ``registry.py`` are all it took.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import ClassVar

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.events import Event, Failed, Parsed, Response, ResponseView, Started
from llm_ledger.ledger.framing import Frame
from llm_ledger.ledger.fsio import write_atomic
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lifecycle import DONE, FAILED, GAVE_UP, IN_FLIGHT, PARSED, PENDING, REPLIED, RETRYABLE, STARTED, STEP, Kind
from llm_ledger.ledger.recovery import LogEnd

from .fold import Key
from .projection import Output, Part, Where

__all__ = ["FAILURES", "FILE_NAME", "Failures", "FailuresState", "FailureLine", "apply", "encode"]

FAILURES = "failures"
FILE_NAME = "failures.jsonl"
_encode_lines = msgspec.json.Encoder(order="deterministic").encode_lines


class FailureLine(msgspec.Struct, gc=False):
    """One ``failures.jsonl`` line; the field order is the file's key order."""

    item_id: str
    sample: int
    turn: int
    attempt: int
    error_type: str
    message: str
    status: int | None
    endpoint: str
    failed_at: float
    seq: int


class FailuresState(msgspec.Struct, kw_only=True):
    failed: dict[Key, FailureLine] = {}  # whose latest finish is a failure, in the order they failed
    in_flight: set[Key] = set()


# -- the fold (no I/O) -------------------------------------------------------------------


def apply(state: FailuresState, event: Event) -> bool:
    """Fold one event in; True when the file's content changed."""
    kind = _KINDS.get(event.__class__)
    if kind is None:
        return False
    if kind is RETRYABLE and event.final:  # type: ignore[attr-defined]
        kind = GAVE_UP
    key = (event.item_id, event.sample)  # type: ignore[attr-defined]
    in_flight = state.in_flight
    before = IN_FLIGHT if key in in_flight else FAILED if key in state.failed else PENDING
    after = STEP[before][kind]
    if after == before:
        return False
    if after == IN_FLIGHT:
        in_flight.add(key)
        return False
    in_flight.discard(key)
    if after == DONE:
        return state.failed.pop(key, None) is not None
    if after == FAILED:
        state.failed.pop(key, None)  # failed again: to the end, with the new error
        state.failed[key] = _line(event)  # type: ignore[arg-type]
        return True
    return False


def _line(event: Failed) -> FailureLine:
    return FailureLine(event.item_id, event.sample, event.turn, event.attempt, event.error_type, event.message,
                       event.status, event.endpoint, event.ts, event.seq)


def encode(state: FailuresState) -> bytes:
    return _encode_lines(list(state.failed.values())) if state.failed else b""


_KINDS: dict[type, Kind] = {Started: STARTED, Response: REPLIED, ResponseView: REPLIED, Parsed: PARSED, Failed: RETRYABLE}


# -- the projection ----------------------------------------------------------------------


class FailuresPart(Part, kw_only=True):
    state: FailuresState = msgspec.field(default_factory=FailuresState)


class Failures:
    name: ClassVar[str] = FAILURES
    version: ClassVar[int] = 1
    part_type: ClassVar[type[Part]] = FailuresPart
    slow: ClassVar[bool] = False

    def __init__(self, paths: RunPaths, where: Where, writers: int) -> None:
        self.path = os.path.join(paths.dir, FILE_NAME)
        self.where = where
        self.part: FailuresPart = FailuresPart()
        self._written: bytes | None = None  # what the file holds now, when known
        self._changed = False

    def outputs(self) -> Sequence[Output]:
        return (Output(self.path),)

    def check(self, end: LogEnd, clean: bool) -> bool:
        data = encode(self.part.state)
        try:
            with fs.open_file(self.path, "rb") as f:
                intact = f.read() == data
        except OSError:
            intact = False
        if not intact:
            write_atomic(self.path, data)
        self._written = data
        return True

    def open(self) -> None:
        pass  # nothing held open: the file is rewritten whole

    def apply(self, frames: Sequence[Frame], overrides: Mapping[Key, Parsed]) -> None:
        part = self.part
        state, changed = part.state, False
        for frame in frames:
            if frame.first_seq + len(frame.events) - 1 > part.seq:  # else applied already
                seq = part.seq
                for event in frame.events:
                    if event.seq > seq:
                        changed |= apply(state, event)
                part.seq = frame.events[-1].seq
            part.offset = max(part.offset, frame.end)
        self._changed |= changed

    def write(self) -> None:
        if self._written is not None and not self._changed:
            return
        data = encode(self.part.state)
        if data != self._written:
            write_atomic(self.where(self.path), data)
        self._written, self._changed = data, False

    def close(self) -> None:
        self._written = None  # where the file goes next (staged, swapped) is not known here

