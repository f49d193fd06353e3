"""The export writers, one per format, with one signature: ``write(data, sink) -> rows``
(``data`` an ``ExportData``, ``sink`` a path or an open binary file; see
``projections/formats.py``, the table that names them).

Every rows format has the same columns in the same order, the schema's (``export.py``):
Arrow (IPC file), Parquet and CSV are written by pyarrow itself batch by batch (Parquet with
a dictionary only for the columns whose values repeat: see ``_DISTINCT``; CSV has no list
type, so a list column -- ``conversation`` -- is written as its JSON text); JSONL encodes rows
with msgspec, keys in the schema's order (timestamps as RFC 3339); xlsx goes through
openpyxl's write-only mode (the "rows" sheet first, the one Excel opens on, with its
header row frozen and its columns sized, then a "summary" sheet; Excel holds at most
1,048,575 data rows, so larger exports are refused with a hint to use Parquet); openai-batch
reads the runs' logs.

pyarrow and openpyxl are imported inside the writers: the CLI imports this module (through
the format table) at start-up, and ``ledger --help`` should not pay for them.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Failed, Response
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lifecycle import DONE, FAILED, PENDING, State, kind_of, transition
from llm_ledger.ledger.reader import iter_events

if TYPE_CHECKING:
    import pyarrow as pa

    from .formats import ExportData, Sink

__all__ = ["write_arrow", "write_parquet", "write_csv", "write_jsonl", "write_jsonl_gz", "write_xlsx", "write_openai_batch"]

_json = msgspec.json.Encoder(order="deterministic")
_rows_json = msgspec.json.Encoder()  # a row's keys as the schema orders them, not sorted
_EXCEL_ROWS = 1_048_575


@contextmanager
def _binary(sink: Sink) -> Iterator[IO[bytes]]:
    """The sink as a binary file, closed at the end: a path is opened (through ``fs``); an
    open file is standard output's duplicate, whose closing leaves standard output open."""
    with fs.open_file(sink, "wb") if isinstance(sink, str) else sink as f:
        yield f


def _drain(writer: Any, batches: Iterable[pa.RecordBatch]) -> int:
    rows = 0
    for batch in batches:
        writer.write_batch(batch)
        rows += batch.num_rows
    return rows


def write_arrow(data: ExportData, sink: Sink) -> int:
    import pyarrow as pa

    with _binary(sink) as f, pa.ipc.new_file(f, data.schema) as writer:
        return _drain(writer, data.batches)


# Columns whose values are nearly all distinct (ids, prompts, replies, times; ``data``: an
# event's JSON in ``export --events``). Parquet's default dictionary-encodes every column;
# for these the dictionary overflows its page limit and is thrown away, which cost a third
# of the write time of an export, for a larger file.
_DISTINCT = frozenset({"item_id", "prompt", "response", "latency", "finished_at", "seq", "data"})


def write_parquet(data: ExportData, sink: Sink) -> int:
    import pyarrow.parquet as pq

    assert data.schema is not None
    dictionary = [name for name in data.schema.names if name not in _DISTINCT]
    with _binary(sink) as f, pq.ParquetWriter(f, data.schema, use_dictionary=dictionary) as writer:
        return _drain(writer, data.batches)


def write_csv(data: ExportData, sink: Sink) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    assert data.schema is not None
    nested = [i for i, field in enumerate(data.schema) if pa.types.is_nested(field.type)]
    schema = data.schema
    for i in nested:
        schema = schema.set(i, pa.field(schema.field(i).name, pa.string()))

    def flat(batch: pa.RecordBatch) -> pa.RecordBatch:
        if not nested:
            return batch
        columns = list(batch.columns)
        for i in nested:
            columns[i] = pa.array([None if v is None else _rows_json.encode(v).decode() for v in columns[i].to_pylist()], pa.string())
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    with _binary(sink) as f, pacsv.CSVWriter(f, schema) as writer:
        return _drain(writer, (flat(batch) for batch in data.batches))


def write_jsonl(data: ExportData, sink: Sink) -> int:
    rows = 0
    with _binary(sink) as f:
        for batch in data.batches:
            f.write(_rows_json.encode_lines(batch.to_pylist()))
            rows += batch.num_rows
    return rows


def write_jsonl_gz(data: ExportData, sink: Sink) -> int:
    """JSONL through gzip, byte for byte ``write_jsonl``'s lines once decompressed: a large
    run's text compresses several times over, and pandas, polars, DuckDB and ``zcat`` read
    ``.jsonl.gz`` as it is. Level 6 (gzip's own default; 9 is much slower for little), and
    no file name or time in the header: the same run exports to the same bytes, to a file
    or down a pipe."""
    import gzip

    with _binary(sink) as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0) as f:
        return write_jsonl(data, f)


def write_xlsx(data: ExportData, sink: Sink) -> int:
    from openpyxl import Workbook

    assert data.schema is not None
    book = Workbook(write_only=True)
    rows_sheet = book.create_sheet("rows")  # first: the sheet a workbook opens on
    rows_sheet.freeze_panes = "A2"
    for letter, width in _widths(data.schema):
        rows_sheet.column_dimensions[letter].width = width
    rows_sheet.append(data.schema.names)
    rows = 0
    for batch in data.batches:
        rows += batch.num_rows
        if rows > _EXCEL_ROWS:
            raise InputError(f"{rows:,}+ rows do not fit in an Excel sheet: export parquet or csv instead")
        for row in batch.to_pylist():
            rows_sheet.append([_cell(v) for v in row.values()])
    sheet = book.create_sheet("summary")
    sheet.column_dimensions["A"].width = 28
    sheet.column_dimensions["B"].width = 24
    for summary in data.summaries():
        for key, value in _flatten(summary):
            sheet.append([key, value])
        sheet.append([])
    with _binary(sink) as f:
        book.save(f)
    return rows


# Column widths in characters (the write-only sheet is streamed: widths are set before the
# first row, from the column's name and type, not measured): long text wide, numbers narrow.
_WIDE = {"prompt": 60, "response": 60, "conversation": 60, "error": 40, "parsed": 24, "expected": 24}


def _widths(schema: pa.Schema) -> Iterator[tuple[str, float]]:
    import pyarrow as pa
    from openpyxl.utils import get_column_letter

    for i, field in enumerate(schema, 1):
        if field.name in _WIDE:
            width = _WIDE[field.name]
        elif pa.types.is_timestamp(field.type):
            width = 20
        elif pa.types.is_string(field.type):
            width = 16
        else:
            width = 10
        yield get_column_letter(i), max(width, len(field.name) + 2)


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
        return _rows_json.encode(value).decode()
    return value


def write_openai_batch(data: ExportData, sink: Sink) -> int:
    """The Batch API's output lines: ``{"id", "custom_id", "response": {"status_code",
    "request_id", "body"}, "error"}``. ``custom_id`` is the item id, with ``#s<sample>`` when
    the run has several samples, and ``<run_id>/`` before it when several runs are exported
    together (so lines stay unique). Successes are written as they finish; failures wait
    until the end in case a resume finished them after all."""
    runs = data.runs
    rows = 0
    with _binary(sink) as f:
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
