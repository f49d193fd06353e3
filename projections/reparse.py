"""Re-parsing: new ``parsed`` events that supersede the old ones, without a single request.

``reparse_events`` reads every final reply in the log and yields, per (item, sample) that
finished with a reply, a new ``parsed`` event from the new parser. The caller appends them
after a ``session_started`` with ``reason="reparse"``.

On rebuild, ``overrides`` collects the ``parsed`` events of the newest re-parse blocks (a
block is everything after a reparse session start), newest winning per key, and the fold
applies each override at the position of the item's *original* parse: rows stay in log
order, one per finish, and carry the new value. The map holds one small entry per re-parsed
key (the one place a rebuild's memory grows with the number of items).
"""

from __future__ import annotations

from collections.abc import Iterator

from llm_ledger.ledger.events import Parsed, Response, SessionStarted
from llm_ledger.ledger.reader import iter_events

from .fold import Key, key_of
from llm_ledger.runners.parsers import Parser

__all__ = ["reparse_events", "overrides"]


def reparse_events(log_path: str, parser: Parser) -> Iterator[Parsed]:
    """One new parsed event per key whose latest final reply was parsed before."""
    replies: dict[Key, Response] = {}
    parsed_keys: list[Key] = []
    seen: set[Key] = set()
    for event in iter_events(log_path):
        if isinstance(event, Response) and event.final:
            replies[key_of(event.item_id, event.sample)] = event
        elif isinstance(event, Parsed):
            key = key_of(event.item_id, event.sample)
            if key not in seen:
                seen.add(key)
                parsed_keys.append(key)
    for key in parsed_keys:
        reply = replies[key]
        result = parser(reply.text)
        yield Parsed(item_id=reply.item_id, sample=reply.sample, turn=reply.turn, parser=parser.spec,
                     parser_version=parser.version, ok=result.ok, value=result.value, error=result.error)


def overrides(log_path: str) -> dict[Key, Parsed]:
    """key -> the newest re-parse of that key (empty when the log was never re-parsed)."""
    out: dict[Key, Parsed] = {}
    in_block = False
    for event in iter_events(log_path):
        match event:
            case SessionStarted(reason=reason):
                in_block = reason == "reparse"
            case Parsed() if in_block:
                out[key_of(event.item_id, event.sample)] = event
    return out
