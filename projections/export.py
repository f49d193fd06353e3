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
_decode_rows = msgspec.json.Decoder(list[_Row]).decode

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


def _row_chunks(paths: RunPaths) -> Iterator[list[_Row]]:
    """Rows of a run, ``BATCH`` at a time: up to date with its log, or as its live writer
    has them so far. A chunk is decoded in one call (a JSON array of the lines)."""
    state = refresh(paths)
    with open(paths.responses, "rb") as f:
        lines = sum(1 for line in f if line.endswith(b"\n"))
    unique = state is not None and lines == state.totals.done + state.totals.failed
    dropped = set() if unique else _superseded(paths.responses)
    chunk: list[bytes] = []
    with open(paths.responses, "rb") as f:
        for n, line in enumerate(f):
            if not line.endswith(b"\n"):
                break  # a live writer's line in progress
            if n not in dropped:
                chunk.append(line)
            if len(chunk) >= BATCH:
                yield _decode_rows(b"[" + b",".join(chunk) + b"]")
                chunk = []
    if chunk:
        yield _decode_rows(b"[" + b",".join(chunk) + b"]")


def _rows(paths: RunPaths) -> Iterator[_Row]:
    for chunk in _row_chunks(paths):
        yield from chunk


def row_batches(runs: Sequence[RunPaths]) -> Iterator[pa.RecordBatch]:
    """Record batches of every run's rows; a ``run_id`` column first when several runs."""
    schema = _schema(len(runs) > 1)
    for paths in runs:
        for rows in _row_chunks(paths):
            yield pa.RecordBatch.from_pydict(_columns(rows, paths.run_id if len(runs) > 1 else None), schema=schema)


def _schema(multi: bool) -> pa.Schema:
    return pa.schema([("run_id", pa.string()), *SCHEMA]) if multi else SCHEMA


def _columns(rows: list[_Row], run_id: str | None) -> dict[str, list[Any]]:
    """Column by column (a comprehension per column is several times faster than appending
    row by row)."""
    usage = [r.usage for r in rows]
    cols: dict[str, list[Any]] = {"run_id": [run_id] * len(rows)} if run_id is not None else {}
    cols.update({
        "item_id": [r.item_id for r in rows],
        "sample": [r.sample for r in rows],
        "model": [r.model for r in rows],
        "prompt": [_text(r.prompt) for r in rows],
        "response": [r.response for r in rows],
        "parsed": [_text(r.parsed) for r in rows],
        "expected": [_text(r.expected) for r in rows],
        "correct": [r.correct for r in rows],
        "prompt_tokens": [u.prompt_tokens if u else None for u in usage],
        "completion_tokens": [u.completion_tokens if u else None for u in usage],
        "total_tokens": [u.total_tokens if u else None for u in usage],
        "latency": [r.latency for r in rows],
        "attempts": [r.attempts for r in rows],
        "error": [r.error for r in rows],
        "finished_at": [int(r.finished_at * 1_000_000) for r in rows],
        "seq": [r.seq for r in rows],
    })
    return cols


def export(runs: Sequence[RunPaths], fmt: str, out: str, *, events: bool = False) -> int:
    """Write ``out`` (atomically: temp file, then rename); returns the number of rows."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r} (use one of {', '.join(FORMATS)})")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise InputError(f"{out}: no such directory {folder}")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{out}: directory {folder} is not writable")
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

