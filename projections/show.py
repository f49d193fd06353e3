"""``ledger show RUN ITEM``: one (item, sample)'s whole story, straight from the log.

The conversation as the fold assembled it (the conversation file when the item finished,
else the events so far) and every attempt: started, reply or failure, parse; and the latest
review of it, if a person gave one (``reviews.jsonl``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any, NamedTuple

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Failed, Parsed, Response, Started
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events

from . import numbers
from .conversations import file_name
from .reviews import read_reviews

__all__ = ["item_story", "AttemptLine", "attempt_lines", "conversation_messages", "message_text"]


def item_story(paths: RunPaths, item_id: str, sample: int) -> dict[str, Any]:
    attempts: list[dict[str, Any]] = []
    for event in iter_events(paths.log):
        if isinstance(event, (Started, Response, Failed, Parsed)) and event.item_id == item_id and event.sample == sample:
            attempts.append(_brief(event))
    if not attempts:
        raise InputError(f"run {paths.run_id} has no events for item {item_id!r} sample {sample}")
    conversation, notes = None, []
    path = os.path.join(paths.conversations, file_name(item_id, sample))
    if os.path.exists(path):
        with fs.open_file(path, "rb") as f:
            data = f.read()
        try:
            conversation = json.loads(data)
        except ValueError:  # a derived file damaged: the events below still tell the item's story
            notes.append(f"{path} is damaged (not JSON): `ledger replay {paths.run_id} --rebuild` rewrites it; "
                         "the answer and verdict it holds are not shown")
    review = next((r for r in read_reviews(paths) if r.latest and (r.item_id, r.sample) == (item_id, sample)), None)
    return {"item_id": item_id, "sample": sample, "conversation": conversation, "events": attempts,
            "review": None if review is None else msgspec.to_builtins(review), "notes": notes}


def _brief(event: Any) -> dict[str, Any]:
    data = msgspec.to_builtins(event)
    data.pop("raw", None)  # the raw reply repeats the text; `ledger log` has it whole
    return data


# -- how a person reads it (``ledger show`` without --json) -------------------------------


class AttemptLine(NamedTuple):
    """One request of the item, in words: ``label`` (``turn 2 attempt 2``), ``outcome``
    (ok / failed / no reply), ``details`` (latency, tokens, finish reason or the error)."""

    label: str
    outcome: str
    details: str


def conversation_messages(story: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages: the conversation file's when the item finished, else the last request
    sent and the reply to it, if any (an item still in flight, or stopped)."""
    if story["conversation"]:
        return list(story["conversation"]["messages"])
    started = [e for e in story["events"] if e["type"] == "started"]
    if not started:
        return []
    last = started[-1]
    messages = list((last.get("request") or {}).get("messages") or [])
    reply = next((e for e in story["events"] if e["type"] == "response" and e["seq"] > last["seq"]), None)
    return messages + ([{"role": "assistant", "content": reply["text"]}] if reply else [])


def message_text(content: Any) -> str:
    """A message's content as text: a string as itself, parts (text, images) by their text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", f"[{p.get('type', 'part')}]") if isinstance(p, dict) else str(p) for p in content)
    return json.dumps(content, ensure_ascii=False)


def attempt_lines(events: list[dict[str, Any]]) -> list[AttemptLine]:
    """A line per request made for the item; ``turn N`` only for a conversation of several
    turns, ``attempt K`` only for a turn that was tried more than once (K counts that turn's
    requests; the events' own attempt numbers run on across turns)."""
    turns = {e.get("turn", 0) for e in events if e["type"] in ("started", "failed", "response")}
    tries = Counter(e.get("turn", 0) for e in events if e["type"] == "started")
    lines: list[AttemptLine] = []
    seen: Counter[int] = Counter()
    previous = ""  # the type of the last started / response / failed event
    for i, e in enumerate(events):
        if e["type"] == "failed" and previous != "started":
            lines.append(AttemptLine("before sending", "failed", _error(e)))  # e.g. over --max-context
        if e["type"] in ("started", "response", "failed"):
            previous = e["type"]
        if e["type"] != "started":
            continue
        turn = e.get("turn", 0)
        seen[turn] += 1
        label = " ".join([*([f"turn {turn + 1}"] if len(turns) > 1 or turn else []),
                          *([f"attempt {seen[turn]}"] if tries[turn] > 1 else [])]) or "reply"
        outcome = next((o for o in events[i + 1:] if o["type"] in ("started", "response", "failed")), None)
        lines.append(AttemptLine(label, *_outcome(outcome)))
    lines += [AttemptLine("parse", "failed", f"{e['parser']}: {e.get('error') or 'no value'}")
              for e in events if e["type"] == "parsed" and not e.get("ok")]
    return lines


def _outcome(event: dict[str, Any] | None) -> tuple[str, str]:
    if event is None or event["type"] == "started":
        return "no reply", "none recorded (in flight, or the session stopped first)"
    if event["type"] == "failed":
        return "failed", _error(event)
    usage = event.get("usage") or {}
    origin = event.get("cached_from")
    if origin:  # nothing was sent: no latency of its own, its tokens not paid here
        parts = [f"copied from the cache (run {origin.get('run')}, event #{origin.get('seq')}), nothing sent"]
    else:
        parts = [numbers.ms(event.get("latency"))]
    if usage:
        parts.append(f"{numbers.count(usage.get('prompt_tokens', 0))} prompt + "
                     f"{numbers.count(usage.get('completion_tokens', 0))} completion tokens")
    if event.get("finish_reason") not in (None, "stop"):
        parts.append(f"finish reason {event['finish_reason']}")
    return "ok", ", ".join(parts)


def _error(event: dict[str, Any]) -> str:
    status = f"HTTP {event['status']} " if event.get("status") else ""
    then = "gave up" if event.get("final") else "retried" if event.get("retryable") else ""
    message = re.sub(r"^Error code: \d+ - ", "", event.get("message") or "")  # the SDK's prefix repeats the status
    return f"{status}{event.get('error_type') or 'error'}: {message}" + (f" ({then})" if then else "")
