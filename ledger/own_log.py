"""What a sharded run's top level appends itself: reviews and re-parses, kept by every merge.

A sharded run's top-level ``events.log`` is derived: each merge (projections/merge.py)
writes it afresh from the shard logs. An event appended there by ``ledger review`` or
``ledger replay --reparse`` would be gone after the next merge (a resume merges at its end),
so it is first appended, durably, to ``shards/own.log`` -- the top level's own log, a third
kind of truth beside the shards' -- and then to the top log, so that the projections show it
at once. A merge reads ``own.log`` as one more stream beside the shards (by timestamp: a
re-parse stays after the replies it re-parses, before a later resume's). A crash between the
two appends leaves the event in ``own.log`` only: the next merge brings it back.

``OwnTee`` is the writer such a command uses: ``append`` / ``append_many`` go to ``own.log``
first, then to the top log's writer, and return the top log's events (their seqs there).
For a run that is not sharded it is the top log's writer alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .events import Event
from .layout import RunPaths
from .writer import LogWriter

__all__ = ["OwnTee", "own_writer"]


class OwnTee:
    def __init__(self, top: LogWriter, own: LogWriter | None) -> None:
        self.top, self.own = top, own

    def append(self, event: Event) -> Any:
        if self.own is not None:
            self.own.append(event)
        return self.top.append(event)

    def append_many(self, events: Sequence[Event]) -> list[Any]:
        if self.own is not None:
            self.own.append_many(events)
        return self.top.append_many(events)

    def close(self) -> None:
        try:
            if self.own is not None:
                self.own.close()
        finally:
            self.top.close()

    def __enter__(self) -> "OwnTee":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def own_writer(paths: RunPaths, top: LogWriter) -> OwnTee:
    """``top`` (the run's log writer, lock held) teed with the top level's own log when the
    run is sharded."""
    if not os.path.isdir(paths.shards):
        return OwnTee(top, None)
    try:
        own = LogWriter.open(paths.own_log)
    except BaseException:
        top.close()
        raise
    return OwnTee(top, own)
