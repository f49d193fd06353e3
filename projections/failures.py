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
in ``registry.py`` are all it took. Its file-writing half is ``whole_file.WholeFile``, which
``batches.py`` (``batches.json``) shares.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from llm_ledger.ledger.events import Event, Failed, Parsed, Response, ResponseView, Started
from llm_ledger.ledger.lifecycle import DONE, FAILED, GAVE_UP, IN_FLIGHT, PARSED, PENDING, REPLIED, RETRYABLE, STARTED, STEP, Kind

from .fold import Key
from .projection import Part
from .whole_file import WholeFile

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


class Failures(WholeFile):
    name: ClassVar[str] = FAILURES
    version: ClassVar[int] = 1
    part_type: ClassVar[type[Part]] = FailuresPart
    file_name: ClassVar[str] = FILE_NAME
    fold_event = staticmethod(apply)
    encode_state = staticmethod(encode)

