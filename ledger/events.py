"""Every event of a run: frozen msgspec Structs joined in one tagged union.

The tag is the field ``type``; item events carry the item key ``item_id`` (str) and
``sample`` (int), and ``turn`` for multi-turn items. ``seq`` (gapless, from 1, per run)
and ``ts`` (Unix seconds, UTC, the commit time of the event's group) are assigned by the
log writer: producers leave them at 0.

Schema rules (tests/fixtures holds a log of every released format): the schema only
grows. A new field gets a default; a field is never renamed or retyped; a new event is
added only when a projection or resume needs it.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "Event",
    "EventBase",
    "ItemEvent",
    "Usage",
    "Imported",
    "CachedFrom",
    "CACHE_ENDPOINT",
    "RunStarted",
    "SessionStarted",
    "Started",
    "Response",
    "ResponseView",
    "EventView",
    "Parsed",
    "Failed",
    "SessionEnded",
    "Paused",
    "Resumed",
    "Reviewed",
    "VERDICTS",
    "BatchPlanned",
    "BatchFileUploaded",
    "BatchSubmitted",
    "BatchStatus",
    "BatchDone",
    "BatchFileDeleted",
    "BatchCancelRequested",
    "encode",
    "decode",
    "encode_many",
    "decode_many",
    "decode_many_view",
    "to_builtins",
]


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    seq: int = 0
    ts: float = 0.0


class ItemEvent(EventBase, frozen=True, kw_only=True):
    item_id: str
    sample: int = 0
    turn: int = 0


class Usage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Imported(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where an imported event came from (``ledger import``): the file and its line (1-based;
    a CSV's header is line 1). None on the events of a run ``ledger run`` made."""

    file: str
    line: int


class RunStarted(EventBase, frozen=True, kw_only=True, tag="run_started"):
    run_id: str
    config: dict[str, Any] = {}
    dataset: str = ""
    dataset_sha256: str = ""
    items: int = 0
    version: str = ""
    # The validated dataset as a whole (0: a log written before they were recorded): its item
    # count (``items`` is what is planned: fewer with --limit) and size in bytes. A resume
    # whose dataset still has this size and sha256 trusts the count and skips validating it.
    dataset_items: int = 0
    dataset_size: int = 0
    source: str = ""  # "imported": written by `ledger import` from ``dataset`` (nothing to send, nothing to resume)


class SessionStarted(EventBase, frozen=True, kw_only=True, tag="session_started"):
    pid: int
    host: str = ""
    version: str = ""
    reason: str = "new"
    overrides: dict[str, Any] = {}  # settings a resume changed for this session (concurrency, endpoints ...)


class Started(ItemEvent, frozen=True, kw_only=True, tag="started"):
    attempt: int = 1
    request: dict[str, Any] = {}
    endpoint: str = ""
    expected: Any = None  # from the dataset, so that projections can score from the log alone
    # Also from the dataset, so that exports are rebuilt from the log alone: the item's line
    # in it (its ``file:line``; Parquet: row + 1), which orders rows as the dataset does, and
    # its other fields (``topic`` ...), which become columns. 0 and {} in older logs.
    line: int = 0
    metadata: dict[str, Any] = {}
    imported: Imported | None = None


CACHE_ENDPOINT = "cache"  # the ``endpoint`` of a cache hit's ``started``: the request was not sent


class CachedFrom(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where a reply served from the cross-run cache was paid for: the ``response`` event
    ``seq`` of run ``run``, received at ``ts`` (runners/cache.py)."""

    run: str
    seq: int
    ts: float = 0.0


class ResponseView(ItemEvent, frozen=True, kw_only=True, tag="response"):
    """A ``response`` read without its ``raw`` body (``decode_many_view``): all that the
    projections use, decoded in about two thirds of the time (msgspec skips the body
    instead of building it)."""

    attempt: int = 1
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    latency: float = 0.0
    endpoint: str = ""
    final: bool = True  # False for a turn that is not the item's last
    imported: Imported | None = None  # a reply read from a file by `ledger import`, not received
    cached_from: CachedFrom | None = None  # a reply copied from the cache: nothing was sent


class Response(ResponseView, frozen=True, kw_only=True, tag="response"):
    raw: dict[str, Any] | None = None  # the endpoint's reply body, redacted


class Parsed(ItemEvent, frozen=True, kw_only=True, tag="parsed"):
    parser: str = "text"
    parser_version: str = "1"
    ok: bool = True
    value: Any = None
    error: str | None = None


class Failed(ItemEvent, frozen=True, kw_only=True, tag="failed"):
    attempt: int = 1
    error_type: str = ""
    message: str = ""
    status: int | None = None
    retryable: bool = False
    final: bool = False
    endpoint: str = ""
    expected: Any = None  # for an item failed before any request (--max-context): it still scores
    line: int = 0  # with ``metadata``, as ``Started``'s, for such an item
    metadata: dict[str, Any] = {}
    imported: Imported | None = None


class SessionEnded(EventBase, frozen=True, kw_only=True, tag="session_ended"):
    reason: str = "completed"  # completed / interrupted / error


class Paused(EventBase, frozen=True, kw_only=True, tag="paused"):
    endpoint: str = ""
    reason: str = ""


class Resumed(EventBase, frozen=True, kw_only=True, tag="resumed"):
    endpoint: str = ""


# -- a person's verdict on a reply (``ledger review``, the viewer's review mode) ----------

VERDICTS = ("correct", "incorrect", "cleared")  # cleared: the machine's verdict stands again


class Reviewed(ItemEvent, frozen=True, kw_only=True, tag="reviewed"):
    """A person's verdict on the item's reply: the ``response`` it judged (``target_seq``)
    and the sha256 of that reply's text, so that a verdict is applied only to the very text
    it was given for (a different reply makes it stale) and can follow that text into other
    runs of the same item. Not an item event to the lifecycle: it moves no state."""

    target_seq: int = 0
    reply_sha256: str = ""
    verdict: str = "correct"  # one of VERDICTS
    note: str = ""
    who: str = ""  # the OS user name of the reviewer
# -- the provider's Batch API (runners/batch.py; issue 16) ---------------------------------
# One chunk is one input file and one batch. Its events come in this order, each durable
# before the next step: planned (with its requests' ``started``, one commit group) ->
# file_uploaded -> submitted -> status (on each change) -> the requests' ``response`` /
# ``parsed`` / ``failed`` -> done. None moves an item's state: the item events do.


class BatchPlanned(EventBase, frozen=True, kw_only=True, tag="batch_planned"):
    chunk: str  # the run's chunk id ("1", "2", ...): the metadata key its batch is found by
    custom_ids: list[str] = []  # one per request, ``ID/SAMPLE/TURN`` as the x-ledger-key header
    sha256: str = ""  # of the input file's bytes
    bytes: int = 0
    model: str = ""
    round: int = 0  # the round of batches (a multi-turn item's turn n is in round >= n)


class BatchFileUploaded(EventBase, frozen=True, kw_only=True, tag="batch_file_uploaded"):
    chunk: str
    file_id: str


class BatchSubmitted(EventBase, frozen=True, kw_only=True, tag="batch_submitted"):
    chunk: str
    batch_id: str
    file_id: str = ""
    created_at: float = 0.0  # the provider's clock (Unix seconds)
    expires_at: float = 0.0  # when the provider gives up on it (created + the 24 h window)
    reconciled: bool = False  # found with batches.list after a crash or an error, not created now


class BatchStatus(EventBase, frozen=True, kw_only=True, tag="batch_status"):
    chunk: str
    batch_id: str
    status: str  # validating, failed, in_progress, finalizing, completed, expired, cancelling, cancelled
    completed: int = 0
    failed: int = 0
    total: int = 0


class BatchDone(EventBase, frozen=True, kw_only=True, tag="batch_done"):
    chunk: str
    batch_id: str = ""
    status: str = ""  # the batch's final state; "lost": the provider does not know it
    completed: int = 0  # requests recorded with a response
    failed: int = 0  # ... with a failure from the error file or the output
    unresolved: int = 0  # without a result: sent again in a new chunk (or failed, if cancelled)


class BatchFileDeleted(EventBase, frozen=True, kw_only=True, tag="batch_file_deleted"):
    chunk: str = ""
    file_id: str
    reason: str = ""


class BatchCancelRequested(EventBase, frozen=True, kw_only=True, tag="batch_cancel_requested"):
    chunk: str
    batch_id: str
    status: str = ""  # the batch's state the provider answered


Event = (
    RunStarted
    | SessionStarted
    | Started
    | Response
    | Parsed
    | Failed
    | SessionEnded
    | Paused
    | Resumed
    | Reviewed
    | BatchPlanned
    | BatchFileUploaded
    | BatchSubmitted
    | BatchStatus
    | BatchDone
    | BatchFileDeleted
    | BatchCancelRequested
)

# What projections decode: every event as it is, but a response without its raw body.
EventView = (
    RunStarted
    | SessionStarted
    | Started
    | ResponseView
    | Parsed
    | Failed
    | SessionEnded
    | Paused
    | Resumed
    | Reviewed
    | BatchPlanned
    | BatchFileUploaded
    | BatchSubmitted
    | BatchStatus
    | BatchDone
    | BatchFileDeleted
    | BatchCancelRequested
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)
_many_decoder = msgspec.msgpack.Decoder(list[Event])
_many_view_decoder = msgspec.msgpack.Decoder(list[EventView])


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes | memoryview) -> Event:
    return _decoder.decode(data)


def encode_many(events: list[Event]) -> bytes:
    return _encoder.encode(events)


def decode_many(data: bytes | memoryview) -> list[Event]:
    return _many_decoder.decode(data)


def decode_many_view(data: bytes | memoryview) -> list[EventView]:
    return _many_view_decoder.decode(data)


def to_builtins(event: Event) -> dict[str, Any]:
    """The event as plain data with DESIGN's field names (``type`` first)."""
    return msgspec.to_builtins(event)
