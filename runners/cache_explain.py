"""``ledger cache stats | explain | clear``: the store, seen and debugged from the command line.

``explain RUN ITEM [--sample N]`` answers "why did this request (not) come from the cache?",
the question Inspect AI users cannot answer for their cache: it recomputes the request's key
from the run's log (the request as sent, the run's endpoint identity), shows its parts, says
how the run got the reply (copied from the cache, or sent), and looks the key up now. On a
miss it finds the nearest cached request among the *other* runs' entries -- most parts in
common: messages, then model and endpoint, then parameters, then the sample -- and names
every part that differs, down to the parameter (``temperature: 0.2 here, 0.7 cached``) or the
first differing message. Nearest is a scan of the store (O(entries): a debugging command).
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from llm_ledger.ledger.cache_store import CacheStore, Entry, store_path
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import ResponseView, RunStarted, SessionStarted, Started
from llm_ledger.ledger.layout import find_run
from llm_ledger.ledger.reader import iter_frames

from . import cache_key
from .cache import KEYER

__all__ = ["stats", "clear", "explain", "when"]


def when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _runs_dir(runs_dir: str) -> str:
    if not os.path.isdir(runs_dir):
        raise InputError(f"{runs_dir}: no runs directory here (see --runs-dir)")
    return runs_dir


def stats(runs_dir: str) -> dict[str, Any]:
    """What the store holds, caught up with every log first."""
    store = CacheStore.open(_runs_dir(runs_dir), KEYER)
    try:
        entries = originals = per_sample = 0
        oldest, newest = float("inf"), 0.0
        runs: set[str] = set()
        for _, entry in store.entries():
            entries += 1
            originals += not entry.copied
            per_sample += entry.keyed_sample >= 0
            oldest, newest = min(oldest, entry.ts), max(newest, entry.ts)
            runs.add(entry.origin_run if entry.copied else entry.run)
        return {"store": store_path(runs_dir), "entries": entries, "originals": originals, "copies": entries - originals,
                "per_sample": per_sample, "deterministic": entries - per_sample, "runs_with_entries": len(runs),
                "runs_walked": store.runs(), "oldest": oldest if entries else None, "newest": newest if entries else None,
                "size_bytes": os.path.getsize(store_path(runs_dir)), "cleared_before": store.cleared or None}
    finally:
        store.close()


def clear(runs_dir: str, older_than: float | None) -> dict[str, Any]:
    """Forget the replies received more than ``older_than`` seconds ago (all without it)."""
    store = CacheStore.open(_runs_dir(runs_dir), KEYER)
    try:
        before = time.time() - (older_than or 0.0)
        removed = store.clear(before)
        return {"removed": removed, "remaining": store.count(), "before": before}
    finally:
        store.close()


class _Request:
    """One (item, sample, turn) of a run as its log has it."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.config: dict[str, Any] = {}
        self.reply: Any = None
        self.turn = 0


def _find(log: str, item_id: str, sample: int, turn: int | None) -> tuple[_Request, dict[str, Any]]:
    """The latest request of the item (its last turn, or ``turn``), the reply to it and the
    run's config (with the overrides of the session that sent it)."""
    found, base, current = _Request(), {}, {}
    for frame in iter_frames(log, decode=_view):
        for event in frame.events:
            cls = event.__class__
            if cls is RunStarted:
                base = current = dict(event.config)
            elif cls is SessionStarted:
                current = {**base, **event.overrides}
            elif cls is Started and (event.item_id, event.sample) == (item_id, sample) and \
                    (turn is None or event.turn == turn) and (found.body is None or event.turn >= found.turn):
                found.body, found.config, found.reply, found.turn = event.request, current, None, event.turn
            elif issubclass(cls, ResponseView) and found.body is not None and \
                    (event.item_id, event.sample, event.turn) == (item_id, sample, found.turn):
                found.reply = event
    return found, base


def explain(runs_dir: str, run: str, item_id: str, sample: int = 0, turn: int | None = None) -> dict[str, Any]:
    paths = find_run(runs_dir, run)
    request, config = _find(paths.log, item_id, sample, turn)
    if request.body is None:
        raise InputError(f"run {paths.run_id} has no request for item {item_id!r} sample {sample}"
                         + (f" turn {turn}" if turn is not None else "") + " in its log")
    identity = KEYER.identity(request.config)
    key = cache_key.make_key(identity, request.body, sample)
    parts = cache_key.key_parts(identity, request.body, sample)
    out: dict[str, Any] = {
        "run": paths.run_id, "item_id": item_id, "sample": sample, "turn": request.turn, "key": key.hex(),
        "parts": {"endpoint": parts.endpoint, "model": parts.model, "params": parts.params,
                  "sample": parts.sample, "messages": len(parts.messages or []),
                  "messages_sha256": cache_key.messages_digest(parts.messages).hex()},
        "deterministic": parts.sample is None, "run_cache": request.config.get("cache"),
        "run_cache_max_age": request.config.get("cache_max_age"),
        "this_run": _how(request.reply),
    }
    store = CacheStore.open(os.path.dirname(os.path.abspath(paths.dir)), KEYER)
    try:
        entry = store.get(key)
        if entry is not None and (entry.origin_run if entry.copied else entry.run) != paths.run_id:
            out["lookup"] = {"found": True, **_entry(entry)}
            return out
        out["lookup"] = {"found": False, "own_reply_only": entry is not None}
        near = _nearest(store, paths.run_id, parts, cache_key.messages_digest(parts.messages))
        if near is not None:
            cached_request = store.read_request(near)
            out["nearest"] = {**_entry(near), "differs": _differences(parts, near, cached_request)}
        else:
            out["nearest"] = None
        return out
    finally:
        store.close()


def _view(data: bytes | memoryview) -> list[Any]:
    from llm_ledger.ledger.events import decode_many_view

    return decode_many_view(data)


def _how(reply: Any) -> dict[str, Any]:
    if reply is None:
        return {"reply": "none yet"}
    if reply.cached_from is not None:
        origin = reply.cached_from
        return {"reply": "cached", "from_run": origin.run, "from_seq": origin.seq, "received": when(origin.ts)}
    return {"reply": "sent", "seq": reply.seq, "received": when(reply.ts)}


def _entry(entry: Entry) -> dict[str, Any]:
    source = entry.provenance()
    return {"run": source.run, "seq": source.seq, "received": when(entry.ts), "item_id": entry.item_id,
            "sample": entry.sample, "turn": entry.turn, "copy_in_run": entry.run if entry.copied else None}


def _nearest(store: CacheStore, own_run: str, parts: cache_key.KeyParts, messages: bytes) -> Entry | None:
    """The other runs' entry sharing the most parts with this request (newest on a tie)."""
    best, best_rank = None, None
    keyed = -1 if parts.sample is None else parts.sample
    for _, entry in store.entries():
        if (entry.origin_run if entry.copied else entry.run) == own_run:
            continue
        score = (4 * (entry.messages == messages) + 2 * (entry.model == parts.model) + 2 * (entry.endpoint == parts.endpoint)
                 + (entry.params == parts.params) + (entry.keyed_sample == keyed))
        rank = (score, entry.ts)
        if best_rank is None or rank > best_rank:
            best, best_rank = entry, rank
    return best


def _differences(parts: cache_key.KeyParts, near: Entry, cached_request: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each part of the key that differs: endpoint, model, every parameter, sample, messages."""
    out: list[dict[str, Any]] = []
    if near.endpoint != parts.endpoint:
        out.append({"part": "endpoint", "here": parts.endpoint, "cached": near.endpoint})
    if near.model != parts.model:
        out.append({"part": "model", "here": parts.model, "cached": near.model})
    for name in sorted(set(parts.params) | set(near.params)):
        here, there = parts.params.get(name, _ABSENT), near.params.get(name, _ABSENT)
        if here != there:
            out.append({"part": f"body.{name}", "here": _shown(here), "cached": _shown(there)})
    keyed = -1 if parts.sample is None else parts.sample
    if near.keyed_sample != keyed:
        out.append({"part": "sample", "here": parts.sample, "cached": None if near.keyed_sample < 0 else near.keyed_sample})
    if near.messages != cache_key.messages_digest(parts.messages):
        out.append({"part": "body.messages", **_message_difference(parts.messages or [], (cached_request or {}).get("messages"))})
    return out


_ABSENT = object()


def _shown(value: Any) -> Any:
    return "(absent)" if value is _ABSENT else value


def _message_difference(here: list[Any], cached: list[Any] | None) -> dict[str, Any]:
    if cached is None:
        return {"here": f"{len(here)} messages", "cached": "(its request could not be read)"}
    for i, (a, b) in enumerate(zip(here, cached)):
        if a != b:
            return {"index": i, "here": _clip(a), "cached": _clip(b)}
    return {"index": min(len(here), len(cached)), "here": f"{len(here)} messages", "cached": f"{len(cached)} messages"}


def _clip(message: Any) -> Any:
    if isinstance(message, dict) and isinstance(message.get("content"), str) and len(message["content"]) > 200:
        return {**message, "content": message["content"][:200] + "..."}
    return message
