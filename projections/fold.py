"""The fold from events to ``responses.jsonl`` lines and the figures of ``summary.json``.

No I/O here. ``apply(state, event)`` updates a ``RunState`` in place and returns the
``responses.jsonl`` line the event completes (or None). The state is kept small: only
unfinished items (a few fields each, no conversation: that is conversations.py's fold),
plus running totals. The same fold runs live and on rebuild, and every figure comes from
event data (never the clock), so the files are byte-identical either way.

This is the hot path of ``ledger replay --rebuild`` and of a live run's projector thread:
dispatch is one dict lookup on the event's class, an open item is a small Struct updated in
place, and a line is one msgspec encode of a Struct (fields in DESIGN's order).

When an (item, sample) is in flight, done or failed is ``ledger.lifecycle``'s to say (its
``STEP`` table); this fold only does what each step means for a row. A finally failed item
is kept (``state.failed``) so that a resume continues it where it stopped and its attempts
keep counting; if it then finishes, it gets a new line that supersedes the failed one
(readers and exports keep the last line per key). A failed item with an expected answer
counts as scored and incorrect until it succeeds. Re-parses do not add lines: a rebuild
applies them at the position of the original parse (overrides.py); the fold only counts
re-parse sessions, so that a full fold knows it has to be redone with them.

Reviews (``reviewed`` events, ``runners/review.py``) work the same way: a rebuild applies
each key's latest review at the item's finishing parse, where a line gets its
``correct_reviewed`` -- the person's verdict when the review judged this very reply text
(its sha256), else the machine's ``correct``. The fold keeps every review (``reviews``, for
``reviews.jsonl``) and marks it stale when its item gets a final reply of another text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from llm_ledger.ledger.events import (CACHE_ENDPOINT, CachedFrom, Event, Failed, Parsed, Response, ResponseView, Reviewed, RunStarted,
                                      SessionEnded, SessionStarted, Started, Usage)
from llm_ledger.ledger.lifecycle import DONE, FAILED, GAVE_UP, IN_FLIGHT, PARSED, REPLIED, RETRYABLE, STARTED, STEP, State, unopened
from llm_ledger.ledger.shard_keys import planned_keys

from .reviews import ReviewRow, reply_sha256, verdict_value
from .scoring import score

__all__ = ["RunState", "OpenRow", "Totals", "Labels", "Row", "apply", "apply_many", "encode_rows", "Key", "key_of", "prompt_of", "failure_text", "timed",
           "label", "overridden", "wall_time", "MAX_LABELS"]

_encoder = msgspec.json.Encoder(order="deterministic")
_encode, _encode_lines = _encoder.encode, _encoder.encode_lines
MAX_LABELS = 50  # more distinct expected values than this: answers are not labels
Key = tuple[str, int]  # (item_id, sample): how both folds and resume name an item's state


class OpenRow(msgspec.Struct, gc=False):
    """What an unfinished (item, sample) contributes to its line so far."""

    item_id: str
    sample: int
    model: str = ""
    expected: Any = None
    prompt: Any = None  # the last user message of the latest request
    response: str | None = None  # the latest reply
    usage: Usage | None = None  # summed over every reply (the reply's own when there is one)
    latency: float = 0.0  # summed over every reply
    attempts: int = 0
    error: str | None = None  # the latest failure, as failure_text()
    line: int = 0  # the item's line in the dataset (0: a log older than the field)
    metadata: dict[str, Any] = {}  # the dataset record's other fields
    messages: Any = None  # a later turn's request messages (multi-turn only: the conversation)
    cached_from: CachedFrom | None = None  # the latest reply came from the cross-run cache
    timed: bool = False  # some reply's latency is a measured time (else the line's latency is null)


class Row(msgspec.Struct, gc=False, omit_defaults=True):
    """One ``responses.jsonl`` line; the field order is the file's key order. The last three
    are left out when empty: ``line`` (the item's line in the dataset: exports order rows
    by it), ``metadata`` (the dataset record's other fields: export columns) and
    ``conversation`` (a multi-turn item's every message, its last reply included)."""

    item_id: str
    sample: int
    model: str
    prompt: Any
    response: str | None
    parsed: Any
    expected: Any
    correct: bool | None
    correct_reviewed: bool | None  # a person's verdict where one is in effect, else ``correct``
    usage: Usage | None
    latency: float | None  # seconds, over the replies timed (null: none was -- copied from the cache, or no reply)
    attempts: int
    error: str | None
    finished_at: float
    seq: int
    line: int = 0
    metadata: dict[str, Any] = {}
    conversation: list[Any] | None = None
    cached_from: CachedFrom | None = None  # {run, seq, ts} of the reply this row's was copied from


class Labels(msgspec.Struct, kw_only=True):
    """Counts for per-class precision / recall / F1, kept as the items finish (a label is
    ``str(label(value))``): support per expected label, predictions per predicted label,
    and correct answers per expected label."""

    support: dict[str, int] = {}
    predicted: dict[str, int] = {}
    hits: dict[str, int] = {}


class Totals(msgspec.Struct, kw_only=True):
    done: int = 0
    failed: int = 0
    scored: int = 0
    correct: int = 0
    parsed_ok: int = 0  # of the done items (each finished by a parse)
    attempts: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = []
    labels: Labels | None = msgspec.field(default_factory=Labels)  # None: more than MAX_LABELS classes
    per_item: dict[str, list[list[Any]]] = {}  # with several samples: item -> [[correct, answer], ...]
    # As ``scored`` / ``correct``, by ``correct_reviewed``; ``reviewed``: finishes whose reply a
    # person's verdict was applied to, ``overturned``: ... where it differs from the machine's.
    scored_reviewed: int = 0
    correct_reviewed: int = 0
    reviewed: int = 0
    overturned: int = 0
    replies: int = 0  # response events (each turn's)
    cached: int = 0  # of them, copied from the cross-run cache: not sent, not paid
    cache_requests: int = 0  # started events of cache hits (not attempts: nothing was sent)
    cached_prompt_tokens: int = 0  # the cached replies' usage: what they would have cost
    cached_completion_tokens: int = 0


class RunState(msgspec.Struct, kw_only=True):
    run_id: str = ""
    model: str = ""
    config: dict[str, Any] = {}
    dataset: str = ""
    planned: int = 0
    samples: int = 1
    status: str = "running"
    first_ts: float = 0.0
    last_ts: float = 0.0
    last_seq: int = 0
    reparse_sessions: int = 0
    wall: float = 0.0  # sending time of the sessions ended so far (see wall_time)
    session_ts: float = 0.0  # ts of the current session's session_started; 0: none open
    session_attempts: int = 0  # requests worked (sent or cached) at that moment (did the session work?)
    open: dict[Key, OpenRow] = {}
    failed: dict[Key, OpenRow] = {}  # finally failed, kept for a resume to continue
    totals: Totals = msgspec.field(default_factory=Totals)
    # Every ``reviewed`` event (reviews.py), and the hash of the current reply of each reviewed
    # key: a later reply of another text makes its reviews stale.
    reviews: list[ReviewRow] = []
    review_replies: dict[Key, str] = {}


def key_of(item_id: str, sample: int) -> Key:
    return (item_id, sample)


def apply(state: RunState, event: Event, overrides: Mapping[Key, Parsed] | None = None) -> bytes | None:
    """Fold one event in; return the ``responses.jsonl`` line (newline included) it
    completes. ``overrides`` (reparse.py) replaces an item's parse by a later re-parse, at
    the position of the original."""
    rows = apply_many(state, (event,), overrides)
    return encode_rows(rows) if rows else None


def encode_rows(rows: list[Row]) -> bytes:
    """``responses.jsonl`` lines, each ending in a newline (one encoder call for a batch)."""
    return _encode_lines(rows)


def apply_many(state: RunState, events: Sequence[Event], overrides: Mapping[Key, Parsed] | None = None,
               after: int = 0) -> list[Row]:
    """Fold in the events whose seq is above ``after`` (a frame at a time: the projector's
    loop); return the rows they complete, in order (a Row holds values, never the state, so
    encoding can wait for the end of the batch)."""
    if not events or events[-1].seq <= after:
        return []
    if events[0].seq <= after:
        events = [e for e in events if e.seq > after]
    if not state.first_ts:
        state.first_ts = events[0].ts
    rows: list[Row] = []
    handlers = _HANDLERS
    for event in events:
        handler = handlers.get(event.__class__)
        if handler is not None and (row := handler(state, event, overrides)) is not None:
            rows.append(row)
    state.last_ts = events[-1].ts
    state.last_seq = events[-1].seq
    return rows


def _run_started(state: RunState, event: RunStarted, _: Any) -> None:
    state.run_id, state.config, state.dataset = event.run_id, event.config, event.dataset
    state.model = str(event.config.get("model", ""))
    state.samples = int(event.config.get("samples", 1) or 1)
    state.planned = planned_keys(event.items, event.config)
    return None


def wall_time(state: RunState, end: float | None = None) -> float:
    """Seconds spent sending: summed over the sessions that sent at least one request, from
    their ``session_started`` to their end (``session_ended``; for a session killed without
    one, its last frame; for the open session, the last event so far). A re-parse or a
    resume with nothing left sends nothing and adds nothing; the time between sessions is
    not counted. From event timestamps only, so live and rebuilt summaries agree."""
    if state.session_ts and _activity(state.totals) > state.session_attempts:
        return state.wall + max(0.0, (state.last_ts if end is None else end) - state.session_ts)
    return state.wall


def _activity(totals: Totals) -> int:
    """Requests a session worked: sent, or answered from the cache (both take time)."""
    return totals.attempts + totals.cache_requests


def _end_session(state: RunState, end: float) -> None:
    state.wall = wall_time(state, end)
    state.session_ts = 0.0


def _session_started(state: RunState, event: SessionStarted, _: Any) -> None:
    # A session killed without session_ended ends at the last frame before this one (another
    # process wrote it: sessions never share a frame, so ``last_ts`` is that frame's).
    _end_session(state, state.last_ts)
    state.session_ts, state.session_attempts = event.ts, _activity(state.totals)
    state.status = "running"
    state.reparse_sessions += event.reason == "reparse"
    return None


def _session_ended(state: RunState, event: SessionEnded, _: Any) -> None:
    _end_session(state, event.ts)
    state.status = event.reason
    return None


def prompt_of(messages: Any) -> Any:
    """The content of the last user message (what a row shows as the prompt)."""
    if messages.__class__ is not list or not messages:
        return None
    last = messages[-1]
    if last.__class__ is dict and last.get("role") == "user":
        return last.get("content")
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return m.get("content")
    return None


# An item's lifecycle state as this fold keeps it, read inline by each handler (the hot path
# of a rebuild): an open record is in flight, a kept failure failed, anything else pending (a
# done item is forgotten: the lifecycle treats it as one never seen, ledger/lifecycle.py).
# For an item in flight the handlers take the lifecycle's answer as given -- a request or a
# reply keeps it in flight, a parse makes it done -- and ask ``STEP`` otherwise;
# tests/test_lifecycle.py fails if the table ever says else.


def _reopen(state: RunState, key: Key, before: State, row: OpenRow) -> OpenRow:
    """Put an item in flight: a failed item continues its row (a resume's retry: attempts go
    on counting), any other starts ``row``."""
    if before == FAILED:
        row = state.failed[key]
    state.open[key] = row
    return row


def _started(state: RunState, event: Started, _: Any) -> None:
    key = (event.item_id, event.sample)
    row = state.open.get(key)
    if row is None:  # a first request, or a failed item's retry (_reopen, inlined: the hot path)
        before = unopened(state.failed, key)
        if STEP[before][STARTED] != IN_FLIGHT:
            return None
        row = state.open[key] = state.failed[key] if before == FAILED else OpenRow(event.item_id, event.sample, "", event.expected)
    request = event.request
    model = request.get("model", state.model)
    row.model = model if model.__class__ is str else str(model)
    messages = request.get("messages")
    row.prompt = prompt_of(messages)
    row.messages = messages if event.turn else None
    if event.line:
        row.line, row.metadata = event.line, event.metadata
    row.attempts += 1
    if event.endpoint == CACHE_ENDPOINT:
        state.totals.cache_requests += 1
    else:
        state.totals.attempts += 1
    return None


def _response(state: RunState, event: Response, _: Any) -> None:
    key = (event.item_id, event.sample)
    row = state.open.get(key)
    if row is None:  # e.g. its request was lost with a damaged frame that a repair cut
        before = unopened(state.failed, key)
        if STEP[before][REPLIED] != IN_FLIGHT:
            return None
        row = _reopen(state, key, before, OpenRow(event.item_id, event.sample, state.model))
    row.response = event.text
    if state.review_replies and event.final and key in state.review_replies:
        _new_reply(state, key, event.text)
    totals = state.totals
    totals.replies += 1
    usage = event.usage
    row.cached_from = event.cached_from
    if event.cached_from is not None:
        return _cached(totals, row, usage)
    row.latency += event.latency
    if timed(event):
        row.timed = True
        totals.latencies.append(event.latency)
    if usage is not None:
        before_usage = row.usage
        row.usage = usage if before_usage is None else Usage(
            prompt_tokens=before_usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=before_usage.completion_tokens + usage.completion_tokens,
            total_tokens=before_usage.total_tokens + usage.total_tokens)
        totals.prompt_tokens += usage.prompt_tokens
        totals.completion_tokens += usage.completion_tokens
    return None


def timed(event: ResponseView) -> bool:
    """Whether a reply's latency is a measured time, counted in the latency figures (the
    summary's percentiles, the viewer's histogram): not a reply copied from the cache (0 s:
    nothing was sent), nor an imported one without a time (a Batch output has none)."""
    return event.cached_from is None and (event.imported is None or event.latency > 0)


def _cached(totals: Totals, row: OpenRow, usage: Usage | None) -> None:
    """A reply copied from the cache: the row shows it as it was (its usage), the run's
    totals count it as cached -- no latency, no tokens paid (they are its saving)."""
    totals.cached += 1
    if usage is not None:
        row.usage = usage if row.usage is None else Usage(
            prompt_tokens=row.usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=row.usage.completion_tokens + usage.completion_tokens,
            total_tokens=row.usage.total_tokens + usage.total_tokens)
        totals.cached_prompt_tokens += usage.prompt_tokens
        totals.cached_completion_tokens += usage.completion_tokens
    return None


def overridden(event: Parsed, overrides: Mapping[Key, Parsed] | None) -> Parsed:
    """``event`` as re-parsed later, if it was (same position, newer parser and value)."""
    if not overrides:
        return event
    newer = overrides.get(key_of(event.item_id, event.sample))
    if newer is None or newer.seq <= event.seq:
        return event
    return msgspec.structs.replace(event, parser=newer.parser, parser_version=newer.parser_version,
                                   ok=newer.ok, value=newer.value, error=newer.error)


def label(value: Any) -> Any:
    """A value as a class label: scalars as they are, anything else as its JSON text."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else _encode(value).decode()


def _parsed(state: RunState, event: Parsed, overrides: Mapping[Key, Parsed] | None) -> Row | None:
    key = (event.item_id, event.sample)
    row = state.open.pop(key, None)
    if row is None:  # a parse finishes only an item in flight, as the lifecycle has it today
        before = unopened(state.failed, key)
        if STEP[before][PARSED] != DONE:
            return None
        row = _reopen(state, key, before, OpenRow(event.item_id, event.sample, state.model))
        del state.open[key]
    if overrides:
        event = overridden(event, overrides)
    totals = state.totals
    ok = event.ok
    value = event.value if ok else None
    expected = row.expected
    correct = score(value, expected, ok)
    totals.done += 1
    totals.parsed_ok += ok
    retried = bool(state.failed) and state.failed.pop(key, None) is not None
    if retried:
        totals.failed -= 1
    if correct is not None:
        totals.scored += 1 - retried  # a retried failure had counted as scored, incorrect
        totals.correct += correct
        if totals.labels is not None:
            _count_label(totals, expected, label(value) if ok else None, correct, -retried)
    elif retried:
        totals.scored -= expected not in (None, "")
    if state.samples > 1:
        totals.per_item.setdefault(row.item_id, []).append([correct, label(value) if ok else None])
    reviewed = _reviewed(totals, overrides, key, row, correct) if overrides else correct  # (the hot path: no call)
    if reviewed is not None:
        totals.scored_reviewed += 1
        totals.correct_reviewed += reviewed
    if retried and expected not in (None, ""):
        totals.scored_reviewed -= 1  # the failure it supersedes had counted as scored and incorrect
    return _line(row, value, correct, event.error, event, True, reviewed)


def _reviewed(totals: Totals, overrides: Mapping[Key, Parsed] | None, key: Key, row: OpenRow, correct: bool | None) -> bool | None:
    """The item's ``correct_reviewed``: the verdict of its latest review (``overrides``: a
    rebuild's, overrides.py) when that review judged this very reply text, else ``correct``."""
    reviews = getattr(overrides, "reviews", None)
    review = reviews.get(key) if reviews else None
    if review is None or review.verdict not in ("correct", "incorrect"):
        return correct
    if reply_sha256(row.response) != review.reply_sha256:
        return correct  # stale: given for another reply
    verdict = verdict_value(review.verdict)
    totals.reviewed += 1
    totals.overturned += verdict != correct
    return verdict


def _new_reply(state: RunState, key: Key, text: str) -> None:
    """A reviewed item got a new final reply: its reviews are stale unless the text is the same."""
    digest = state.review_replies[key] = reply_sha256(text)
    for review in state.reviews:
        if (review.item_id, review.sample) == key:
            review.stale = review.reply_sha256 != digest


def _reviewed_event(state: RunState, event: Reviewed, _: Any) -> None:
    """Kept for ``reviews.jsonl``; a rebuild applies it to the rows at the item's parse."""
    key = (event.item_id, event.sample)
    for review in state.reviews:
        if review.latest and (review.item_id, review.sample) == key:
            review.latest = False
    state.review_replies[key] = event.reply_sha256  # the reply it judged is the item's current one
    state.reviews.append(ReviewRow(item_id=event.item_id, sample=event.sample, turn=event.turn, seq=event.seq,
                                   target_seq=event.target_seq, reply_sha256=event.reply_sha256, verdict=event.verdict,
                                   note=event.note, who=event.who, ts=event.ts))
    return None


def failure_text(event: Failed) -> str:
    text = f"{event.error_type}: {event.message}"
    return f"{text} (HTTP {event.status})" if event.status else text


def _failed(state: RunState, event: Failed, _: Any) -> Row | None:
    key = (event.item_id, event.sample)
    row = state.open.get(key)
    before = IN_FLIGHT if row is not None else unopened(state.failed, key)
    after = STEP[before][GAVE_UP if event.final else RETRYABLE]
    if after == before and before != IN_FLIGHT:
        return None
    if row is None:  # e.g. refused before any request (--max-context)
        row = _reopen(state, key, before, OpenRow(event.item_id, event.sample, state.model, event.expected,
                                                  line=event.line, metadata=event.metadata))
    row.error = failure_text(event)
    if after == IN_FLIGHT:
        state.totals.retries += 1
        return None
    del state.open[key]
    scored = row.expected not in (None, "")
    if key not in state.failed:
        state.failed[key] = row
        state.totals.failed += 1
        state.totals.scored += scored
        state.totals.scored_reviewed += scored
        if scored:  # a failure is a wrong answer for its class too, until it succeeds
            _count_label(state.totals, row.expected, None, False, 0)
    return _line(row, None, False if scored else None, row.error, event, False)


def _count_label(totals: Totals, expected: Any, predicted: Any, correct: bool, retried: int) -> None:
    """Add one answer to the label counts; ``retried`` (-1) takes back the failure it supersedes."""
    labels = totals.labels
    if labels is None:
        return
    cls = str(label(expected))
    support = labels.support
    support[cls] = support.get(cls, 0) + 1 + retried
    if len(support) > MAX_LABELS:
        totals.labels = None
        return
    if predicted is not None:
        name = str(predicted)
        labels.predicted[name] = labels.predicted.get(name, 0) + 1
    if correct:
        labels.hits[cls] = labels.hits.get(cls, 0) + 1


def _line(row: OpenRow, parsed: Any, correct: bool | None, error: str | None, event: Event, replied: bool,
          reviewed: bool | None = None) -> Row:
    """The row's line; ``replied``: its last request was answered (the reply ends the
    conversation); ``reviewed``: its ``correct_reviewed`` (a failure line: ``correct``)."""
    conversation = row.messages
    if conversation is not None and replied:
        conversation = [*conversation, {"role": "assistant", "content": row.response}]
    return Row(row.item_id, row.sample, row.model, row.prompt, row.response, parsed, row.expected, correct,
               reviewed if replied else correct, row.usage, round(row.latency, 6) if row.timed else None, row.attempts,
               error, event.ts,
               event.seq, row.line, row.metadata, conversation, row.cached_from)


_HANDLERS: dict[type, Callable[[RunState, Any, Any], Row | None]] = {
    RunStarted: _run_started,
    SessionStarted: _session_started,
    SessionEnded: _session_ended,
    Started: _started,
    Response: _response,
    ResponseView: _response,
    Parsed: _parsed,
    Failed: _failed,
    Reviewed: _reviewed_event,
}
