"""The fold from events to ``conversations/q{item_id}_s{sample}.json``: one file per finished
(item, sample) with the whole conversation and per-turn metadata.

A projection of its own (its own state and checkpoint, see projector.py), separate from the
rows fold (fold.py): creating one file per conversation is the slow part of a rebuild
(a file system create + rename each), so ``responses.jsonl`` and ``summary.json`` are
rebuilt first and do not wait for it, and a damaged ``responses.jsonl`` never costs a
rewrite of every conversation file.

A file holds ``item_id``, ``sample``, ``model``, ``expected``, ``parsed``, ``correct``,
``error``, ``attempts``, ``finished_at``, ``seq`` (of the finishing event), ``messages``
(requests and replies, in order), ``turns`` (one record per reply: turn, attempt, response,
finish_reason, usage, latency, endpoint, ts) and ``errors`` (every failed attempt). When a
conversation is in flight, done or failed is ``ledger.lifecycle``'s to say, as for the rows.
The state keeps finally failed conversations, like the rows fold, so that a resume continues
a multi-turn item after its last completed turn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from llm_ledger.ledger.events import Event, Failed, Parsed, Response, ResponseView, RunStarted, Started, Usage
from llm_ledger.ledger.lifecycle import DONE, FAILED, GAVE_UP, IN_FLIGHT, PARSED, REPLIED, RETRYABLE, STARTED, STEP, State, unopened

from .fold import Key, failure_text, overridden
from .scoring import score

__all__ = ["ConversationState", "Conversation", "TurnRecord", "apply", "file_name"]

_encode = msgspec.json.Encoder(order="deterministic").encode


class TurnRecord(msgspec.Struct, kw_only=True, gc=False):
    turn: int
    attempt: int
    response: str
    finish_reason: str | None = None
    usage: Usage | None = None
    latency: float = 0.0
    endpoint: str = ""
    ts: float = 0.0


class Conversation(msgspec.Struct, kw_only=True):
    item_id: str
    sample: int
    model: str = ""
    expected: Any = None
    messages: list[Any] = []  # the conversation so far, replies included
    turns: list[TurnRecord] = []
    attempts: int = 0
    errors: list[str] = []


class ConversationFile(msgspec.Struct, gc=False):
    """A conversation file's content; the field order is the file's key order."""

    item_id: str
    sample: int
    model: str
    expected: Any
    parsed: Any
    correct: bool | None
    error: str | None
    attempts: int
    finished_at: float
    seq: int
    messages: list[Any]
    turns: list[TurnRecord]
    errors: list[str]


class ConversationState(msgspec.Struct, kw_only=True):
    model: str = ""
    open: dict[Key, Conversation] = {}
    failed: dict[Key, Conversation] = {}  # finally failed, kept for a resume to continue


def apply(state: ConversationState, event: Event, overrides: Mapping[Key, Parsed] | None = None) -> tuple[str, bytes] | None:
    """Fold one event in; return the file (name, content) it completes, if any."""
    handler = _HANDLERS.get(event.__class__)
    return handler(state, event, overrides) if handler is not None else None


def _run_started(state: ConversationState, event: RunStarted, _: Any) -> None:
    state.model = str(event.config.get("model", ""))
    return None


# An item's lifecycle state as this fold keeps it, read inline by each handler, as in fold.py
# (whose comment says which answers of the lifecycle for an item in flight are taken as given).


def _reopen(state: ConversationState, key: Key, before: State, conv: Conversation) -> Conversation:
    """Put an item in flight: a failed conversation continues (a resume's retry), any other
    starts ``conv``."""
    if before == FAILED:
        conv = state.failed[key]
    state.open[key] = conv
    return conv


def _started(state: ConversationState, event: Started, _: Any) -> None:
    key = (event.item_id, event.sample)
    conv = state.open.get(key)
    if conv is None:
        before = unopened(state.failed, key)
        if STEP[before][STARTED] != IN_FLIGHT:
            return None
        conv = _reopen(state, key, before, Conversation(item_id=event.item_id, sample=event.sample, expected=event.expected))
    conv.model = str(event.request.get("model", state.model))
    messages = event.request.get("messages")
    conv.messages = list(messages) if isinstance(messages, list) else []
    conv.attempts += 1
    return None


def _response(state: ConversationState, event: Response, _: Any) -> None:
    key = (event.item_id, event.sample)
    conv = state.open.get(key)
    if conv is None:  # e.g. its request was lost with a damaged frame that a repair cut
        before = unopened(state.failed, key)
        if STEP[before][REPLIED] != IN_FLIGHT:
            return None
        conv = _reopen(state, key, before, Conversation(item_id=event.item_id, sample=event.sample, model=state.model))
    conv.turns.append(TurnRecord(turn=event.turn, attempt=event.attempt, response=event.text,
                                 finish_reason=event.finish_reason, usage=event.usage, latency=event.latency,
                                 endpoint=event.endpoint, ts=event.ts))
    conv.messages.append({"role": "assistant", "content": event.text})
    return None


def _parsed(state: ConversationState, event: Parsed, overrides: Mapping[Key, Parsed] | None) -> tuple[str, bytes] | None:
    key = (event.item_id, event.sample)
    conv = state.open.pop(key, None)
    if conv is None:  # a parse finishes only an item in flight, as the lifecycle has it today
        before = unopened(state.failed, key)
        if STEP[before][PARSED] != DONE:
            return None
        conv = _reopen(state, key, before, Conversation(item_id=event.item_id, sample=event.sample, model=state.model))
        del state.open[key]
    state.failed.pop(key, None)
    if overrides:
        event = overridden(event, overrides)
    value = event.value if event.ok else None
    return _file(conv, value, score(value, conv.expected, event.ok), event.error, event)


def _failed(state: ConversationState, event: Failed, _: Any) -> tuple[str, bytes] | None:
    key = (event.item_id, event.sample)
    conv = state.open.get(key)
    before = IN_FLIGHT if conv is not None else unopened(state.failed, key)
    after = STEP[before][GAVE_UP if event.final else RETRYABLE]
    if after == before and before != IN_FLIGHT:
        return None
    if conv is None:  # e.g. refused before any request (--max-context)
        conv = _reopen(state, key, before, Conversation(item_id=event.item_id, sample=event.sample, model=state.model,
                                                        expected=event.expected))
    error = failure_text(event)
    conv.errors.append(error)
    if after == IN_FLIGHT:
        return None
    del state.open[key]
    state.failed[key] = conv
    return _file(conv, None, False if conv.expected not in (None, "") else None, error, event)


def _file(conv: Conversation, parsed: Any, correct: bool | None, error: str | None, event: Event) -> tuple[str, bytes]:
    content = ConversationFile(conv.item_id, conv.sample, conv.model, conv.expected, parsed, correct, error,
                               conv.attempts, event.ts, event.seq, conv.messages, conv.turns, conv.errors)
    return file_name(conv.item_id, conv.sample), _encode(content)


_HANDLERS: dict[type, Callable[[ConversationState, Any, Any], tuple[str, bytes] | None]] = {
    RunStarted: _run_started,
    Started: _started,
    Response: _response,
    ResponseView: _response,
    Parsed: _parsed,
    Failed: _failed,
}

_NAME_MAX = 160  # file systems allow 255 bytes per name; leave room for q..._sN.json


def file_name(item_id: str, sample: int) -> str:
    """``q{item_id}_s{sample}.json``, the id made safe: [A-Za-z0-9._-] kept, every other
    UTF-8 byte as %XX (fixed width, so distinct ids never share a name). A long id keeps its
    first 100 characters plus ``%%`` and a hash of the whole id (``%%`` never occurs in
    quoted text)."""
    name = quote(item_id, safe="._-") or "%"
    if len(name) > _NAME_MAX:
        name = name[:100] + "%%" + hashlib.sha256(item_id.encode()).hexdigest()[:20]
    return f"q{name}_s{sample}.json"
