"""`ledger cancel RUN`: cancel a --batch run's open batches at the provider, and record it.

A use case that appends to the log, under the writer's lock (never beside a live run: stop it
first; Ctrl-C leaves its batches running). It appends ``session_started(reason="cancel")``,
one ``batch_cancel_requested`` per batch the provider was asked to cancel (with the state it
answered), and ``session_ended`` with the run's last end reason (a cancel does not finish
the run). Chunks planned but not recorded as submitted are looked up by their metadata first
(a crash may have hidden their batch). What the cancelled batches did complete is collected
by the next `ledger resume`: those results are recorded, and the requests left without one
fail (error ``batch_cancelled``), so the run ends instead of sending them again; a later
resume retries failed items as always (``--skip-failed`` keeps them failed).
"""

from __future__ import annotations

import asyncio
import os
from typing import NamedTuple

from llm_ledger.ledger import __version__
from llm_ledger.ledger.errors import EndpointError, InputError
from llm_ledger.ledger.events import BatchCancelRequested, SessionEnded, SessionStarted
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.batches import BATCHES, GIVEN_UP, OPEN, Chunk, fold
from llm_ledger.projections.projector import refresh

from .batch_client import BatchClient, run_key
from .config import RunConfig
from .prepare import _api_key, secrets_of

__all__ = ["Cancelled", "cancel_run"]


class Cancelled(NamedTuple):
    chunk: str
    batch_id: str
    status: str  # the state the provider answered, or why it was not cancelled


def cancel_run(paths: RunPaths) -> list[Cancelled]:
    """Cancel every open batch of the run; returns one line per batch."""
    config = _config(paths)
    if config.runner != "batch":
        raise InputError(f"run {paths.run_id} does not use the Batch API (runner {config.runner}): it has no batches "
                         "to cancel; a running run stops with Ctrl-C")
    if config.embedded:
        raise InputError(f"run {paths.run_id} used the built-in simulator: its batches ended with the session that "
                         "made them (a resume sends their requests again); nothing to cancel")
    api_key = _api_key(config)
    with LogWriter.open(paths.log, lambda: RunIndex.durable_end(paths.index)) as writer:
        events = list(iter_events(paths.log))
        last = next((e.reason for e in reversed(events) if isinstance(e, SessionEnded)), "interrupted")
        chunks = [c for c in fold(events).chunks.values() if c.status != "done"]
        if not chunks:  # nothing to ask the provider: the log is left as it is
            return []
        writer.append(SessionStarted(pid=os.getpid(), version=__version__, reason="cancel"))
        done = asyncio.run(_cancel(config, api_key, run_key(paths.log), chunks))
        writer.append_many([*(BatchCancelRequested(chunk=c.chunk, batch_id=c.batch_id, status=c.status)
                              for c in done if not c.status.startswith("not ")), SessionEnded(reason=last)])
    refresh(paths, (BATCHES,))  # batches.json (what `ledger status` shows) says "cancelling" now, not later
    return done


def _config(paths: RunPaths) -> RunConfig:
    from llm_ledger.projections.runs import first_event

    started = first_event(paths)
    if started is None:
        raise InputError(f"{paths.log}: the log does not begin with run_started")
    return RunConfig.from_dict(started.config)


async def _cancel(config: RunConfig, api_key: str, run_id: str, chunks: list[Chunk]) -> list[Cancelled]:
    client = BatchClient(config.endpoints()[0], api_key, secrets_of(api_key, config), config.timeout)
    try:
        unsure = [c.chunk for c in chunks if c.status in OPEN]
        found = await client.find(run_id, unsure) if unsure else {}
        targets = [(c.chunk, c.batch_id) for c in chunks if c.batch_id]
        targets += [(chunk, b.id) for chunk, batches in found.items() for b in batches]
        return [await _one(client, chunk, batch_id) for chunk, batch_id in targets]
    finally:
        await client.close()


async def _one(client: BatchClient, chunk: str, batch_id: str) -> Cancelled:
    try:
        batch = await client.cancel(batch_id)
    except EndpointError as exc:
        if exc.status == 404:  # recorded: a resume then gives its requests up (failed) instead of stopping on it
            return Cancelled(chunk, batch_id, GIVEN_UP)
        return Cancelled(chunk, batch_id, f"not cancelled: {exc.message}")
    return Cancelled(chunk, batch_id, batch.status)

