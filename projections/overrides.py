"""Re-parses as a rebuild applies them: the newest ``parsed`` per key of the re-parse blocks.

A re-parse (``ledger replay --reparse``, ``runners/reparse.py``) appends a block to the log:
``session_started(reason="reparse")``, one new ``parsed`` per finished item, then
``session_ended``. A fold cannot apply those where they stand -- rows would be finished
twice and out of log order -- so a rebuild first collects them (``overrides``), newest
winning per key, and the folds apply each at the position of the item's *original* parse
(``fold.overridden``): rows stay in log order, one per finish, and carry the new value. The
map holds one small entry per re-parsed key (the one place a rebuild's memory grows with the
number of items).

Reviews (``reviewed`` events, ``ledger review``) are applied the same way: a rebuild collects
the latest review per key (``Overrides.reviews``) and the rows fold applies it at the item's
finishing parse, where ``correct_reviewed`` is decided (``fold._reviewed``).
"""

from __future__ import annotations

from llm_ledger.ledger.events import Parsed, Reviewed, SessionStarted
from llm_ledger.ledger.reader import iter_events

from .fold import Key, key_of

__all__ = ["overrides", "Overrides"]


class Overrides(dict[Key, Parsed]):
    """key -> the newest re-parse of that key; ``reviews``: key -> its latest review. True
    when it holds either (the checkpoint's ``reparsed`` flag: keep applying them)."""

    def __init__(self) -> None:
        super().__init__()
        self.reviews: dict[Key, Reviewed] = {}

    def __bool__(self) -> bool:
        return bool(len(self) or self.reviews)


def overrides(log_path: str) -> Overrides:
    """The re-parses and reviews of a log (empty when it has neither)."""
    out = Overrides()
    in_block = False
    for event in iter_events(log_path):
        match event:
            case SessionStarted(reason=reason):
                in_block = reason == "reparse"
            case Parsed() if in_block:
                out[key_of(event.item_id, event.sample)] = event
            case Reviewed():
                out.reviews[key_of(event.item_id, event.sample)] = event
    return out
