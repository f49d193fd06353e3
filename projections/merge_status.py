"""The status of a sharded run: the sum of its shards' live states.

While the shards run, the top level's merged log is as of the last merge (or holds only
``run_started``): the counts come from each shard (``runs.run_status`` of the shard, its
index read-only, O(1) each), summed; ``planned`` is the top's. Live: the top's lock is held
(a `ledger run`/`resume` coordinating) or any shard's is. Stopped: the worst of the
shards' last sessions (error > interrupted > completed; a shard never started counts as
interrupted), with the counts, decides as for any run (``runs.decide``). The accuracy is
the merged ``summary.json``'s, when ``shards/merged.json`` says it was merged from the
shards as they are now (each shard's last seq); ``events`` is then the merged log's (what
``ledger log`` shows), else the shards' events and the top level's own summed.
"""

from __future__ import annotations

import json
import os
from typing import Any

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import is_locked
from llm_ledger.ledger.shard_keys import planned_keys

from .runs import Counts, RunStatus, decide, first_event, read_summary, run_status, status_text

__all__ = ["sharded_status", "shard_statuses", "unmerged", "require_merged", "last_seq"]

_SESSION = {"running": "running", "interrupted": "interrupted", "error": "error"}  # others: completed*


def shard_statuses(paths: RunPaths, of: int) -> list[RunStatus | None]:
    """Each shard's status; None for a shard never started (no log, or no event in it)."""
    out: list[RunStatus | None] = []
    for k in range(of):
        shard = paths.shard(k)
        started = os.path.isfile(shard.log) and first_event(shard) is not None
        out.append(run_status(shard) if started else None)
    return out


def sharded_status(paths: RunPaths) -> RunStatus:
    top = first_event(paths)
    of = int(top.config.get("shards", 1) or 1) if top else 0
    planned = planned_keys(top.items, top.config) if top else 0
    shards = shard_statuses(paths, of)
    started = [s for s in shards if s is not None]
    done, failed, in_flight = (sum(getattr(s, name) for s in started) for name in ("done", "failed", "in_flight"))
    counts = Counts(planned, done, failed, in_flight, max(0, planned - done - failed - in_flight))
    live = is_locked(paths.lock) or any(s.status == "running" for s in started)
    status = decide(_session(shards), live, counts)
    current = _merged_current(paths, shards)
    accuracy = read_summary(paths).get("accuracy") if current else None
    return RunStatus(run_id=paths.run_id, status=status, status_text=status_text(status, counts), **counts._asdict(),
                     events=last_seq(paths.log) if current else sum(s.events for s in started) + last_seq(paths.own_log),
                     accuracy=accuracy, summary_current=current,
                     source="shards")


def last_seq(log: str) -> int:
    """Events in a log (0 when there is none): a shard's for the merge record; the merged
    log's when it is current (the figure `ledger log` shows), else the top level's own."""
    from llm_ledger.ledger.recovery import locate_end

    if not os.path.isfile(log):
        return 0
    with fs.open_file(log, "rb") as f:
        return locate_end(f, log).last_seq


def _session(shards: list[RunStatus | None]) -> str:
    words = ["interrupted" if s is None else _SESSION.get(s.status, "completed") for s in shards]
    for word in ("running", "error", "interrupted"):
        if word in words:
            return word
    return "completed"


def _merged_current(paths: RunPaths, shards: list[RunStatus | None]) -> bool:
    """Whether the top's merged files were made from the shards as they are now."""
    try:
        with fs.open_file(paths.merged, "rb") as f:
            manifest: dict[str, Any] = json.loads(f.read())
    except (OSError, ValueError):
        return False
    now = [s.events if s is not None else 0 for s in shards]
    return manifest.get("shards") == now


def unmerged(paths: RunPaths) -> str:
    """Why a sharded run's top-level files are not the run now, in one line to act on; ""
    when they are (or the run is not sharded). Readers of rows (export, compare) refuse such
    a run rather than show the last merge -- or nothing -- as the run."""
    if not os.path.isdir(paths.shards):
        return ""
    top = first_event(paths)
    of = int(top.config.get("shards", 1) or 1) if top else 0
    shards = shard_statuses(paths, of)
    if _merged_current(paths, shards):
        return ""
    run = paths.run_id
    if is_locked(paths.lock) or any(s is not None and s.status == "running" for s in shards):
        return (f"run {run} is sharded and running: its rows are merged from its shards at its end "
                f"(`ledger status {run}` shows its progress now)")
    try:
        with fs.open_file(paths.merged, "rb") as f:
            json.loads(f.read())
    except (OSError, ValueError):  # the record, not the merge, may be what is missing
        return (f"run {run}'s merge record {paths.merged} is missing or damaged, so its merged files may not be its "
                f"shards': `ledger merge {run}` merges them again")
    return (f"run {run}'s shards hold work its merged files do not (it stopped before merging them): "
            f"`ledger merge {run}` merges them")


def require_merged(paths: RunPaths) -> None:
    why = unmerged(paths)
    if why:
        raise InputError(why)
