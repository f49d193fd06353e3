"""One writer per export format; each consumes record batches and returns the row count.

Arrow (IPC file), Parquet and CSV are written by pyarrow itself batch by batch (Parquet with
a dictionary only for the columns whose values repeat: see ``_DISTINCT``); JSONL encodes rows
with msgspec (timestamps as RFC 3339); xlsx goes through openpyxl's write-only mode (a
"summary" sheet, then a "results" sheet; Excel holds at most 1,048,575 data rows, so larger
exports are refused with a hint to use Parquet).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Failed, Response
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lifecycle import DONE, FAILED, PENDING, State, kind_of, transition
from llm_ledger.ledger.reader import iter_events

__all__ = ["WRITERS", "write_xlsx", "write_openai_batch"]

_json = msgspec.json.Encoder(order="deterministic")
_EXCEL_ROWS = 1_048_575


def _drain(writer: Any, batches: Iterable[pa.RecordBatch]) -> int:
    rows = 0
    for batch in batches:
        writer.write_batch(batch)
        rows += batch.num_rows
    return rows


def write_arrow(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: str) -> int:
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        return _drain(writer, batches)


# Columns whose values are nearly all distinct (ids, prompts, replies, times; ``data``: an
# event's JSON in ``export --events``). Parquet's default dictionary-encodes every column;
# for these the dictionary overflows its page limit and is thrown away, which cost a third
# of the write time of an export, for a larger file.
_DISTINCT = frozenset({"item_id", "prompt", "response", "latency", "finished_at", "seq", "data"})


def write_parquet(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: str) -> int:
    dictionary = [name for name in schema.names if name not in _DISTINCT]
    with pq.ParquetWriter(path, schema, use_dictionary=dictionary) as writer:
        return _drain(writer, batches)


def write_csv(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: str) -> int:
    with pacsv.CSVWriter(path, schema) as writer:
        return _drain(writer, batches)


def write_jsonl(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: str) -> int:
    rows = 0
    with open(path, "wb") as f:
        for batch in batches:
            f.write(_json.encode_lines(batch.to_pylist()))
            rows += batch.num_rows
    return rows


WRITERS: dict[str, Callable[[Iterable[pa.RecordBatch], pa.Schema, str], int]] = {
    "arrow": write_arrow, "parquet": write_parquet, "csv": write_csv, "jsonl": write_jsonl,
}


def write_xlsx(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: str, summaries: Sequence[dict[str, Any]]) -> int:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("summary")
    for summary in summaries:
        for key, value in _flatten(summary):
            sheet.append([key, value])
        sheet.append([])
    results = book.create_sheet("results")
    results.append(schema.names)
    rows = 0
    for batch in batches:
        rows += batch.num_rows
        if rows > _EXCEL_ROWS:
            raise InputError(f"{rows:,}+ rows do not fit in an Excel sheet: export parquet or csv instead")
        for row in batch.to_pylist():
            results.append([_cell(v) for v in row.values()])
    book.save(path)
    return rows


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, _cell(value)


def _cell(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).replace(tzinfo=None)  # Excel has no time zones: UTC
    if isinstance(value, (list, dict)):
        return _json.encode(value).decode()
    return value


def write_openai_batch(runs: Sequence[RunPaths], path: str) -> int:
    """The Batch API's output lines: ``{"id", "custom_id", "response": {"status_code",
    "request_id", "body"}, "error"}``. ``custom_id`` is the item id, with ``#s<sample>`` when
    the run has several samples, and ``<run_id>/`` before it when several runs are exported
    together (so lines stay unique). Successes are written as they finish; failures wait
    until the end in case a resume finished them after all."""
    rows = 0
    with open(path, "wb") as f:
        for paths in runs:
            rows += _batch_lines(paths, f, f"{paths.run_id}/" if len(runs) > 1 else "")
    return rows


def _batch_lines(paths: RunPaths, f: Any, prefix: str) -> int:
    """A success line when an item becomes done, a failure line kept for the end while it is
    failed: when each happens is ``ledger.lifecycle``'s to say, as for every projection."""
    replies: dict[tuple[str, int], Response] = {}
    failures: dict[tuple[str, int], bytes] = {}
    states: dict[tuple[str, int], State] = {}
    samples, rows = 1, 0
    for event in iter_events(paths.log):
        if event.__class__.__name__ == "RunStarted":
            samples = int(event.config.get("samples", 1) or 1)  # type: ignore[attr-defined]
            continue
        if kind_of(event) is None:
            continue
        key = (event.item_id, event.sample)  # type: ignore[attr-defined]
        before = states.get(key, PENDING)
        after = states[key] = transition(before, event)
        if isinstance(event, Response) and event.final:
            replies[key] = event
        if after == before or after not in (DONE, FAILED):
            continue
        if after == DONE:
            failures.pop(key, None)
            reply = replies.pop(key, None)
            if reply is None:
                continue  # its reply is not in the log (a damaged frame cut): no body to show
            body = reply.raw or {}
            line = {"id": f"batch_req_{reply.seq}", "custom_id": prefix + _custom_id(reply.item_id, reply.sample, samples),
                    "response": {"status_code": 200, "request_id": str(body.get("id", "")), "body": body}, "error": None}
            f.write(_json.encode(line) + b"\n")
            rows += 1
        elif isinstance(event, Failed):
            line = {"id": f"batch_req_{event.seq}", "custom_id": prefix + _custom_id(event.item_id, event.sample, samples),
                    "response": {"status_code": event.status, "request_id": "", "body": None} if event.status else None,
                    "error": {"code": event.error_type, "message": event.message}}
            failures[key] = _json.encode(line) + b"\n"
    for line in failures.values():
        f.write(line)
    return rows + len(failures)


def _custom_id(item_id: str, sample: int, samples: int) -> str:
    return item_id if samples == 1 else f"{item_id}#s{sample}"
