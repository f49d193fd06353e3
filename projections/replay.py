"""`ledger replay`: bring projections up to date, or rebuild them from the log.

Takes the run's lock: a live run's projector owns the files. Re-parsing (``--reparse``)
appends events, so it is a use case of its own: ``runners/reparse.py``.
"""

from __future__ import annotations

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
    try:
        if full:
            projector = rebuild(paths, timings=timings)
        else:
            projector = Projector.open(paths)
            projector.close()
    finally:
        lock.release()
    return {**summarize(projector.state), "reparsed": 0, "rebuilt": timings}
