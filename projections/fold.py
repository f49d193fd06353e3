"""The fold from events to what people read: ``apply(state, event) -> outputs``.

No I/O here. ``apply`` updates a ``RunState`` in place (it is the projection's own state,
kept small: only unfinished items are held, plus running totals) and returns the outputs
the event completes: a ``responses.jsonl`` line, a conversation file. The projector
(projector.py) writes them. The same fold runs live and on rebuild, and every figure comes
from event data (never the clock), so the files are byte-identical either way.

An (item, sample) is *finished* by a ``parsed`` event of its final turn (done) or by a
``failed`` event with ``final`` (failed). A finally failed item is kept (``state.failed``,
with its replies) so that a resume continues it where it stopped and its attempts keep
counting; if it then finishes, it gets a new line that supersedes the failed one (readers
and exports keep the last line per key). A failed item with an expected answer counts as
scored and incorrect until it succeeds. Re-parses do not add lines: a rebuild applies them
at the position of the original parse (reparse.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from urllib.parse import quote
from typing import Any, NamedTuple

import msgspec

from ledger.events import Event, Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started

from .scoring import score

__all__ = ["RunState", "OpenItem", "TurnRecord", "Totals", "Line", "ConversationFile", "apply", "key_of"]

_json = msgspec.json.Encoder(order="deterministic")


class TurnRecord(msgspec.Struct, kw_only=True):
    turn: int
    attempt: int
    response: str
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    latency: float = 0.0
    endpoint: str = ""
    ts: float = 0.0


class OpenItem(msgspec.Struct, kw_only=True):
    item_id: str
    sample: int
    model: str = ""
    expected: Any = None
    messages: list[dict[str, Any]] = []  # the conversation so far, replies included
    turns: list[TurnRecord] = []
    attempts: int = 0
    errors: list[str] = []
    first_ts: float = 0.0


class Totals(msgspec.Struct, kw_only=True):
    done: int = 0
    failed: int = 0
    scored: int = 0
    correct: int = 0
    parsed: int = 0
    parsed_ok: int = 0
    attempts: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = []
    labels: dict[str, list[Any]] = {}  # key -> [expected, parsed or None], for per-class metrics
    per_item: dict[str, list[list[Any]]] = {}  # with several samples: item -> [[correct, answer], ...]


class RunState(msgspec.Struct, kw_only=True):
    run_id: str = ""
    model: str = ""
    config: dict[str, Any] = {}
    dataset: str = ""
    planned: int = 0
    status: str = "running"
    first_ts: float = 0.0
    last_ts: float = 0.0
    last_seq: int = 0
    open: dict[str, OpenItem] = {}
    failed: dict[str, OpenItem] = {}  # finally failed, kept for a resume to continue
    totals: Totals = msgspec.field(default_factory=Totals)


class Line(NamedTuple):
    data: bytes  # one responses.jsonl line, newline included


class ConversationFile(NamedTuple):
    name: str
    data: bytes


def key_of(item_id: str, sample: int) -> str:
    return f"{item_id}\x00{sample}"


def apply(state: RunState, event: Event, overrides: Mapping[str, Parsed] | None = None) -> list[Line | ConversationFile]:
    """Fold one event in; return the outputs it completes. ``overrides`` (reparse.py) replaces
    an item's parse by a later re-parse, at the position of the original."""
    if not state.first_ts:
        state.first_ts = event.ts
    state.last_ts, state.last_seq = event.ts, event.seq
    match event:
        case RunStarted():
            _run_started(state, event)
        case SessionStarted():
            state.status = "running"
        case SessionEnded(reason=reason):
            state.status = reason
        case Started():
            _started(state, event)
        case Response():
            _response(state, event)
        case Parsed():
            if overrides:
                event = _override(event, overrides)
            return _parsed(state, event)
        case Failed():
            return _failed(state, event)
    return []


def _run_started(state: RunState, event: RunStarted) -> None:
    state.run_id, state.config, state.dataset = event.run_id, event.config, event.dataset
    state.model = str(event.config.get("model", ""))
    state.planned = event.items * int(event.config.get("samples", 1) or 1)


def _started(state: RunState, event: Started) -> None:
    key = key_of(event.item_id, event.sample)
    item = state.open.get(key) or state.failed.get(key)  # a failed item retried continues
    if item is None:
        item = OpenItem(item_id=event.item_id, sample=event.sample, expected=event.expected, first_ts=event.ts)
    state.open[key] = item
    item.model = str(event.request.get("model", state.model))
    item.messages = list(event.request.get("messages", []))
    item.attempts += 1
    state.totals.attempts += 1


def _response(state: RunState, event: Response) -> None:
    item = state.open.get(key_of(event.item_id, event.sample))
    if item is None:
        return
    usage = msgspec.to_builtins(event.usage) if event.usage else None
    item.turns.append(TurnRecord(
        turn=event.turn, attempt=event.attempt, response=event.text, finish_reason=event.finish_reason,
        usage=usage, latency=event.latency, endpoint=event.endpoint, ts=event.ts,
    ))
    item.messages.append({"role": "assistant", "content": event.text})
    totals = state.totals
    totals.latencies.append(event.latency)
    if usage:
        totals.prompt_tokens += usage.get("prompt_tokens", 0)
        totals.completion_tokens += usage.get("completion_tokens", 0)


def _override(event: Parsed, overrides: Mapping[str, Parsed]) -> Parsed:
    newer = overrides.get(key_of(event.item_id, event.sample))
    if newer is None or newer.seq <= event.seq:
        return event
    return msgspec.structs.replace(event, parser=newer.parser, parser_version=newer.parser_version,
                                   ok=newer.ok, value=newer.value, error=newer.error)


def _parsed(state: RunState, event: Parsed) -> list[Line | ConversationFile]:
    key = key_of(event.item_id, event.sample)
    item = state.open.pop(key, None)
    if item is None:
        return []
    totals = state.totals
    correct = score(event.value, item.expected, event.ok)
    totals.done += 1
    totals.parsed += 1
    totals.parsed_ok += event.ok
    if correct is not None:
        totals.scored += 1
        totals.correct += correct
        totals.labels[key] = [_label(item.expected), _label(event.value) if event.ok else None]
    if state.failed.pop(key, None) is not None:
        totals.failed -= 1
        totals.scored -= item.expected not in (None, "")  # it had counted as scored, incorrect
    if int(state.config.get("samples", 1) or 1) > 1:
        totals.per_item.setdefault(item.item_id, []).append([correct, _label(event.value) if event.ok else None])
    return _finish(state, item, event.value if event.ok else None, correct, event.error, event)


def _failed(state: RunState, event: Failed) -> list[Line | ConversationFile]:
    key = key_of(event.item_id, event.sample)
    item = state.open.get(key)
    if item is None and event.final and key not in state.failed:  # refused before any request (--max-context)
        item = state.open[key] = OpenItem(item_id=event.item_id, sample=event.sample, model=state.model, first_ts=event.ts)
    if item is None:
        return []
    error = f"{event.error_type}: {event.message}" + (f" (HTTP {event.status})" if event.status else "")
    item.errors.append(error)
    if not event.final:
        state.totals.retries += 1
        return []
    state.open.pop(key)
    scored = item.expected not in (None, "")
    if key not in state.failed:
        state.failed[key] = item
        state.totals.failed += 1
        state.totals.scored += scored
        if scored:  # a failure is a wrong answer for its class too, until it succeeds
            state.totals.labels[key] = [_label(item.expected), None]
    return _finish(state, item, None, False if scored else None, error, event)


def _finish(state: RunState, item: OpenItem, parsed: Any, correct: bool | None, error: str | None, event: Event) -> list[Line | ConversationFile]:
    last = item.turns[-1] if item.turns else None
    usage = _sum_usage(item.turns)
    prompt = next((m.get("content") for m in reversed(item.messages) if m.get("role") == "user"), None)
    row = {
        "item_id": item.item_id,
        "sample": item.sample,
        "model": item.model,
        "prompt": prompt,
        "response": last.response if last else None,
        "parsed": parsed,
        "expected": item.expected,
        "correct": correct,
        "usage": usage,
        "latency": round(sum(t.latency for t in item.turns), 6),
        "attempts": item.attempts,
        "error": error,
        "finished_at": event.ts,
        "seq": event.seq,
    }
    conversation = {**row, "messages": item.messages, "turns": msgspec.to_builtins(item.turns), "errors": item.errors}
    name = f"q{_safe(item.item_id)}_s{item.sample}.json"
    return [Line(_json.encode(row) + b"\n"), ConversationFile(name, _json.encode(conversation))]


def _sum_usage(turns: list[TurnRecord]) -> dict[str, int] | None:
    if not any(t.usage for t in turns):
        return None
    out = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for t in turns:
        for k in out:
            out[k] += (t.usage or {}).get(k, 0)
    return out


def _label(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else _json.encode(value).decode()


_NAME_MAX = 160  # file systems allow 255 bytes per name; leave room for q..._sN.json


def _safe(item_id: str) -> str:
    """An item id as a file name: [A-Za-z0-9._~-] kept, every other UTF-8 byte as %XX
    (fixed width, so distinct ids never share a name). A long id keeps its first 100
    characters plus ``%%`` and a hash of the whole id (``%%`` never occurs in quoted text)."""
    name = quote(item_id, safe="._-") or "%"
    if len(name) > _NAME_MAX:
        name = name[:100] + "%%" + hashlib.sha256(item_id.encode()).hexdigest()[:20]
    return name
