"""`ledger replay`: bring projections up to date, rebuild them, or re-parse and rebuild.

Re-parsing takes the run's lock (never under a live writer), appends a
``session_started(reason="reparse")``, the new ``parsed`` events and a ``session_ended``,
then rebuilds every projection from the log. No request is sent.
"""

from __future__ import annotations

import os
from typing import Any

from llm_ledger.ledger import __version__
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.events import SessionEnded, SessionStarted
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import RunLock
from llm_ledger.ledger.writer import LogWriter

from llm_ledger.runners.parsers import Parser, make_parser
from .projector import Projector, rebuild
from .reparse import reparse_events
from .summary import summarize

__all__ = ["replay"]

_BATCH = 4096


def replay(paths: RunPaths, *, full: bool = False, reparse: str | None = None) -> dict[str, Any]:
    """Returns the summary after the replay, plus ``reparsed`` (events appended) and
    ``rebuilt`` (seconds per projection folded from zero, for a rebuild)."""
    if reparse:
        return _reparse(paths, reparse)
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


def _reparse(paths: RunPaths, spec: str) -> dict[str, Any]:
    """Append the new parses and rebuild, all under the writer's lock."""
    parser = _reparse_parser(spec)
    with LogWriter.open(paths.log, lambda: RunIndex.durable_end(paths.index)) as writer:
        last_status = _last_status(paths)
        writer.append(SessionStarted(pid=os.getpid(), version=__version__, reason="reparse"))
        batch, n = [], 0
        for event in reparse_events(paths.log, parser):
            batch.append(event)
            if len(batch) >= _BATCH:
                writer.append_many(batch)
                n, batch = n + len(batch), []
        if batch:
            writer.append_many(batch)
            n += len(batch)
        writer.append(SessionEnded(reason=last_status))
        timings: dict[str, float] = {}
        projector = rebuild(paths, timings=timings)
    return {**summarize(projector.state), "reparsed": n, "rebuilt": timings}


def _reparse_parser(spec: str) -> Parser:
    """The parser of ``--reparse SPEC``; a bad spec is named as that option (make_parser's
    messages speak of ``--parser``, the option of `ledger run`)."""
    try:
        return make_parser(spec)
    except InputError as exc:
        message = str(exc)
        if message.startswith("--parser"):
            message = "--reparse" + message[len("--parser"):]
        raise InputError(message) from None


def _last_status(paths: RunPaths) -> str:
    """A re-parse does not change whether the run completed: keep its last end reason."""
    from llm_ledger.ledger.reader import iter_events

    status = "interrupted"
    for event in iter_events(paths.log):
        if isinstance(event, SessionEnded):
            status = event.reason
    return status
