"""`ledger replay`: bring projections up to date, or rebuild them from the log.

Takes the run's lock: a live run's projector owns the files. Re-parsing (``--reparse``)
appends events, so it is a use case of its own: ``runners/reparse.py``.

A sharded run's top-level log is itself derived from its shards (projections/merge.py):
replaying it is merging it -- the log written afresh from the shard logs and its own log,
then every projection rebuilt -- so that the figures are the shards', never those of a top
log older than them (a run whose coordinator stopped before merging).
"""

from __future__ import annotations

import os
from typing import Any

from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import RunLock

from .projector import Projector, rebuild
from .summary import summarize

__all__ = ["replay"]


def replay(paths: RunPaths, *, full: bool = False) -> dict[str, Any]:
    """Returns the summary after the replay, plus ``rebuilt`` (seconds per projection
    folded from zero, for a rebuild)."""
    lock = RunLock.acquire(paths.lock)  # a live run's projector owns the files: refuse
    timings: dict[str, float] = {}
    if os.path.isdir(paths.shards):
        from .merge import merge_locked

        try:
            report, lock = merge_locked(paths, lock)
        finally:
            lock.release()
        return {**report.summary, "reparsed": 0, "rebuilt": {}, "merged": report.shards}
    try:
        if full:
            projector = rebuild(paths, timings=timings)
        else:
            projector = Projector.open(paths)
            projector.close()
    finally:
        lock.release()
    return {**summarize(projector.state), "reparsed": 0, "rebuilt": timings}
