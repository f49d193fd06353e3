"""Re-parsing a run: new ``parsed`` events that supersede the old ones, without a request.

A use case, not a fold: it appends to the log (a sharded run's top level: to its own log
too, which every merge keeps: ledger/own_log.py). Under the writer's lock (never beside a live
run) it appends ``session_started(reason="reparse")``, one new ``parsed`` per item that is
done, from its latest final reply and the new parser, and a ``session_ended`` with the run's
last end reason (a re-parse does not change whether the run completed); then every
projection is rebuilt from the log, which applies the new parses at the position of the
original ones (``projections/overrides.py``). Which items are done is the lifecycle's to say
(``ledger.lifecycle``), as for every reader of the log.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from llm_ledger.ledger import __version__
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Parsed, ResponseView, SessionEnded, SessionStarted, decode_many_view
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.own_log import own_writer
from llm_ledger.ledger.lifecycle import DONE, PENDING, State, kind_of, transition
from llm_ledger.ledger.reader import iter_frames
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.fold import Key
from llm_ledger.projections.merge_status import require_merged
from .parsers import Parser, make_parser
from llm_ledger.projections.projector import rebuild
from llm_ledger.projections.summary import summarize

__all__ = ["reparse", "reparse_events"]

_BATCH = 4096


def reparse(paths: RunPaths, spec: str) -> dict[str, Any]:
    """Append the new parses and rebuild, all under the writer's lock. Returns the summary,
    plus ``reparsed`` (parses appended) and ``rebuilt`` (seconds per projection)."""
    parser = _reparse_parser(spec)
    require_merged(paths)  # a sharded run: re-parse the run, not a merge older than its shards
    with own_writer(paths, LogWriter.open(paths.log, lambda: RunIndex.durable_end(paths.index))) as writer:
        _require_finished(paths)
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


def _require_finished(paths: RunPaths) -> None:
    """A run with items still to send is refused: their replies, parsed by the run's own
    parser when it resumes, would sit beside these re-parses in one accuracy (two parsers,
    unsaid). Finish it first (`ledger resume`), then re-parse."""
    from llm_ledger.projections.runs import run_status

    counts = run_status(paths).counts
    left = counts.pending + counts.in_flight
    if left:
        raise InputError(f"run {paths.run_id} has {left} item(s) not finished: `ledger resume {paths.run_id}` first, "
                         "then re-parse (replies it receives later are parsed with the run's own parser)")


def reparse_events(log_path: str, parser: Parser) -> Iterator[Parsed]:
    """One new parsed event per item done at the end of the log, from its latest final reply,
    in the order the items first became done."""
    replies: dict[Key, ResponseView] = {}
    states: dict[Key, State] = {}
    done: dict[Key, None] = {}  # ordered: when each key first became done
    for frame in iter_frames(log_path, decode=decode_many_view):  # replies without their raw body
        for event in frame.events:
            if kind_of(event) is None:
                continue
            key = (event.item_id, event.sample)  # type: ignore[union-attr]
            state = states[key] = transition(states.get(key, PENDING), event)
            if isinstance(event, ResponseView) and event.final:
                replies[key] = event
            if state == DONE:
                done.setdefault(key)
    for key in done:
        reply = replies.get(key)
        if states[key] == DONE and reply is not None:
            result = parser(reply.text)
            yield Parsed(item_id=reply.item_id, sample=reply.sample, turn=reply.turn, parser=parser.spec,
                         parser_version=parser.version, ok=result.ok, value=result.value, error=result.error)


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
    """The reason the run's last session ended with (interrupted if none did)."""
    status = "interrupted"
    for frame in iter_frames(paths.log, decode=decode_many_view):
        for event in frame.events:
            if isinstance(event, SessionEnded):
                status = event.reason
    return status
