"""``ledger export``: one row per (item, sample), typed columns, in bounded memory.

Rows come from ``responses.jsonl`` after the projections are brought up to date with the log
(so an export is a fold of the log, like every other output), the last line per key
winning. Columns keep the names of ``responses.jsonl``, with ``usage`` flattened into
``prompt_tokens`` / ``completion_tokens`` / ``total_tokens``:

    run_id (several runs only) string, item_id string, sample int64, model string,
    prompt string, response string, parsed string, expected string, correct bool,
    prompt_tokens int64, completion_tokens int64, total_tokens int64, latency float64,
    attempts int64, error string, finished_at timestamp[us, UTC], seq int64

``parsed`` and ``expected`` hold JSON values of any type; they are exported as text (a
string as itself, anything else as JSON) so that a column has one type. Arrow is the IPC
*file* format. Batches of ``BATCH`` rows are written as they are read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pyarrow as pa

from ledger.errors import InputError
from ledger.layout import RunPaths

from .formats import FORMATS
from .fold import RunState
from .projector import Checkpoint, refresh
from .summary import summarize

__all__ = ["FORMATS", "SCHEMA", "export", "row_batches"]

BATCH = 65536
_json = msgspec.json.Encoder(order="deterministic")


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _Row(msgspec.Struct):
    item_id: str
    sample: int
    model: str = ""
    prompt: Any = None
    response: str | None = None
    parsed: Any = None
    expected: Any = None
    correct: bool | None = None
    usage: _Usage | None = None
    latency: float = 0.0
    attempts: int = 0
    error: str | None = None
    finished_at: float = 0.0
    seq: int = 0


_decode_row = msgspec.json.Decoder(_Row).decode

SCHEMA = pa.schema([
    ("item_id", pa.string()), ("sample", pa.int64()), ("model", pa.string()), ("prompt", pa.string()),
    ("response", pa.string()), ("parsed", pa.string()), ("expected", pa.string()), ("correct", pa.bool_()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("total_tokens", pa.int64()),
    ("latency", pa.float64()), ("attempts", pa.int64()), ("error", pa.string()),
    ("finished_at", pa.timestamp("us", tz="UTC")), ("seq", pa.int64()),
])


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return _json.encode(value).decode()


def _superseded(path: str) -> set[int]:
    """Line numbers whose key finishes again later (rare: retried failures, old re-parses)."""
    last: dict[bytes, int] = {}
    dropped: set[int] = set()
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            if not line.endswith(b"\n"):
                break
            row = _decode_row(line)
            key = row.item_id.encode() + b"\0" + str(row.sample).encode()
            if key in last:
                dropped.add(last[key])
            last[key] = n
    return dropped


def _rows(paths: RunPaths) -> Iterator[_Row]:
    """Rows of a run: up to date with its log, or as its live writer has them so far."""
    state = refresh(paths)
    with open(paths.responses, "rb") as f:
        lines = sum(1 for line in f if line.endswith(b"\n"))
    unique = state is not None and lines == state.totals.done + state.totals.failed
    dropped = set() if unique else _superseded(paths.responses)
    with open(paths.responses, "rb") as f:
        for n, line in enumerate(f):
            if not line.endswith(b"\n"):
                break  # a live writer's line in progress
            if n not in dropped:
                yield _decode_row(line)


def row_batches(runs: Sequence[RunPaths]) -> Iterator[pa.RecordBatch]:
    """Record batches of every run's rows; a ``run_id`` column first when several runs."""
    schema = _schema(len(runs) > 1)
    for paths in runs:
        cols: dict[str, list[Any]] = {name: [] for name in schema.names}
        for row in _rows(paths):
            _append(cols, row, paths.run_id if len(runs) > 1 else None)
            if len(cols["seq"]) >= BATCH:
                yield pa.RecordBatch.from_pydict(cols, schema=schema)
                cols = {name: [] for name in schema.names}
        if cols["seq"]:
            yield pa.RecordBatch.from_pydict(cols, schema=schema)


def _schema(multi: bool) -> pa.Schema:
    return pa.schema([("run_id", pa.string()), *SCHEMA]) if multi else SCHEMA


def _append(cols: dict[str, list[Any]], row: _Row, run_id: str | None) -> None:
    if run_id is not None:
        cols["run_id"].append(run_id)
    usage = row.usage
    cols["item_id"].append(row.item_id)
    cols["sample"].append(row.sample)
    cols["model"].append(row.model)
    cols["prompt"].append(_text(row.prompt))
    cols["response"].append(row.response)
    cols["parsed"].append(_text(row.parsed))
    cols["expected"].append(_text(row.expected))
    cols["correct"].append(row.correct)
    cols["prompt_tokens"].append(usage.prompt_tokens if usage else None)
    cols["completion_tokens"].append(usage.completion_tokens if usage else None)
    cols["total_tokens"].append(usage.total_tokens if usage else None)
    cols["latency"].append(row.latency)
    cols["attempts"].append(row.attempts)
    cols["error"].append(row.error)
    cols["finished_at"].append(int(row.finished_at * 1_000_000))
    cols["seq"].append(row.seq)


def export(runs: Sequence[RunPaths], fmt: str, out: str, *, events: bool = False) -> int:
    """Write ``out`` (atomically: temp file, then rename); returns the number of rows."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r} (use one of {', '.join(FORMATS)})")
    from . import event_table, writers

    batches = event_table.event_batches(runs) if events else row_batches(runs)
    schema = event_table.schema(len(runs) > 1) if events else _schema(len(runs) > 1)
    tmp = f"{out}.tmp.{os.getpid()}"
    try:
        if fmt == "openai-batch":
            rows = writers.write_openai_batch(runs, tmp)
        elif fmt == "xlsx":
            rows = writers.write_xlsx(batches, schema, tmp, [summarize(_state(p)) for p in runs])
        else:
            rows = writers.WRITERS[fmt](batches, schema, tmp)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return rows


def _state(paths: RunPaths) -> RunState:
    """The fold's state, current; for a live run, as of its projector's last checkpoint."""
    state = refresh(paths)
    if state is not None:
        return state
    try:
        with open(paths.checkpoint, "rb") as f:
            return msgspec.msgpack.decode(f.read(), type=Checkpoint).state
    except (OSError, msgspec.DecodeError):
        return RunState()

