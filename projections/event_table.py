"""``export --events``: the raw event table, one row per event, in log order.

Columns: run_id (always: a table of several runs reads like one of a run), seq, ts (timestamp[us, UTC]), type, item_id, sample, turn, attempt, and
``data``: the whole event as JSON, so that nothing is lost in the flattening.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pyarrow as pa

from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events

__all__ = ["SCHEMA", "event_batches"]

_json = msgspec.json.Encoder(order="deterministic")
_BATCH = 65536
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("seq", pa.int64()), ("ts", pa.timestamp("us", tz="UTC")), ("type", pa.string()), ("item_id", pa.string()),
    ("sample", pa.int64()), ("turn", pa.int64()), ("attempt", pa.int64()), ("data", pa.string()),
])


def _events(paths: RunPaths) -> Iterator[Any]:
    """A run's events in log order; a sharded run's, the k-way merge of its shards' logs by
    timestamp as they are now (merge.py), so that a running one is read whole too."""
    if os.path.isdir(paths.shards):
        from .merge import live_merged_events

        return live_merged_events(paths)
    return iter_events(paths.log)


def event_batches(runs: Sequence[RunPaths]) -> Iterator[pa.RecordBatch]:
    out_schema = SCHEMA
    for paths in runs:
        cols: dict[str, list[Any]] = {name: [] for name in out_schema.names}
        for event in _events(paths):
            cols["run_id"].append(paths.run_id)
            data = _json.encode(event)
            cols["seq"].append(event.seq)
            cols["ts"].append(int(event.ts * 1_000_000))
            cols["type"].append(type(event).__struct_config__.tag)
            cols["item_id"].append(getattr(event, "item_id", None))
            cols["sample"].append(getattr(event, "sample", None))
            cols["turn"].append(getattr(event, "turn", None))
            cols["attempt"].append(getattr(event, "attempt", None))
            cols["data"].append(data.decode())
            if len(cols["seq"]) >= _BATCH:
                yield pa.RecordBatch.from_pydict(cols, schema=out_schema)
                cols = {name: [] for name in out_schema.names}
        if cols["seq"]:
            yield pa.RecordBatch.from_pydict(cols, schema=out_schema)
