"""Re-parses as a rebuild applies them: the newest ``parsed`` per key of the re-parse blocks.

A re-parse (``ledger replay --reparse``, ``runners/reparse.py``) appends a block to the log:
``session_started(reason="reparse")``, one new ``parsed`` per finished item, then
``session_ended``. A fold cannot apply those where they stand -- rows would be finished
twice and out of log order -- so a rebuild first collects them (``overrides``), newest
winning per key, and the folds apply each at the position of the item's *original* parse
(``fold.overridden``): rows stay in log order, one per finish, and carry the new value. The
map holds one small entry per re-parsed key (the one place a rebuild's memory grows with the
number of items).
"""

from __future__ import annotations

from llm_ledger.ledger.events import Parsed, SessionStarted
from llm_ledger.ledger.reader import iter_events

from .fold import Key, key_of

__all__ = ["overrides"]


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
