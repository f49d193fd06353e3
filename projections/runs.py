"""Reading runs without opening them for writing: status from the index, listings.

``run_status`` reads the LMDB index read-only (a consistent snapshot, O(1) in the log's
size) and whether a writer holds the lock; it works from another terminal during a run.
A run without an index (never opened since it was deleted) falls back to summary.json.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from ledger.errors import IndexError_
from ledger.events import RunStarted
from ledger.index import RunIndex
from ledger.layout import RunPaths
from ledger.lock import is_locked
from ledger.reader import iter_events

__all__ = ["run_status", "list_runs", "read_summary", "first_event"]


def read_summary(paths: RunPaths) -> dict[str, Any]:
    try:
        with open(paths.summary, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return {}


def first_event(paths: RunPaths) -> RunStarted | None:
    event = next(iter_events(paths.log), None)
    return event if isinstance(event, RunStarted) else None


def run_status(paths: RunPaths) -> dict[str, Any]:
    live = is_locked(paths.lock)
    try:
        index = RunIndex.open_readonly(paths.index)
    except IndexError_:
        return _from_summary(paths, live)
    try:
        counts = index.counts()
    finally:
        index.close()
    status = "running" if live else (counts["status"] if counts["status"] != "running" else "interrupted")
    return {"run_id": paths.run_id, "status": status, "planned": counts["planned"], "done": counts["done"],
            "failed": counts["failed"], "in_flight": counts["in_flight"], "pending": counts["pending"],
            "events": counts["applied_seq"]}


def _from_summary(paths: RunPaths, live: bool) -> dict[str, Any]:
    summary = read_summary(paths)
    counts = summary.get("counts", {})
    return {"run_id": paths.run_id, "status": "running" if live else summary.get("status", "unknown"),
            "planned": counts.get("planned", 0), "done": counts.get("done", 0), "failed": counts.get("failed", 0),
            "in_flight": 0, "pending": counts.get("pending", 0), "events": summary.get("last_seq", 0)}


def list_runs(runs_dir: str) -> list[dict[str, Any]]:
    if not os.path.isdir(runs_dir):
        return []
    rows = []
    for name in sorted(os.listdir(runs_dir)):
        paths = RunPaths(os.path.join(runs_dir, name))
        if os.path.isfile(paths.log):
            rows.append(_row(paths))
    return sorted(rows, key=lambda r: r["started"])


def _row(paths: RunPaths) -> dict[str, Any]:
    summary = read_summary(paths)
    started = first_event(paths)
    counts = summary.get("counts", {})
    when = datetime.datetime.fromtimestamp(started.ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S") if started else ""
    status = "running" if is_locked(paths.lock) else summary.get("status", "unknown")
    return {"run_id": paths.run_id, "status": status, "model": summary.get("model") or (started.config.get("model", "") if started else ""),
            "dataset": started.dataset if started else "", "done": counts.get("done", 0), "failed": counts.get("failed", 0),
            "planned": counts.get("planned", 0), "accuracy": summary.get("accuracy"), "started": when}
