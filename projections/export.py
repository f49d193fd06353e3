"""``ledger export``: one row per (item, sample), typed columns, in bounded memory.

Rows come from ``responses.jsonl`` after the projections are brought up to date with the log
(so an export is a fold of the log, like every other output), the last line per key
winning. Columns keep the names of ``responses.jsonl``, with ``usage`` flattened into
``prompt_tokens`` / ``completion_tokens`` / ``total_tokens``:

    run_id (several runs only) string, item_id string, sample int64, model string,
    prompt string, response string, parsed string, expected string, correct bool,
    prompt_tokens int64, completion_tokens int64, total_tokens int64, latency float64,
    attempts int64, error string, finished_at timestamp[us, UTC], seq int64

``prompt``, ``parsed`` and ``expected`` hold JSON values of any type; they are exported as text
(a string as itself, anything else as its compact JSON, keys sorted) so that a column has one
type. Arrow is the IPC *file* format.

The file is read in chunks of about ``_CHUNK`` bytes, each cut after its last newline and
written as one record batch before the next is read. pyarrow's JSON reader parses a chunk
straight into columns (no Python object per value); only when a text column holds a
non-string does msgspec decode those three columns (``_texts``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError, LedgerError
from llm_ledger.ledger.layout import RunPaths

from .fold import RunState
from .formats import FORMATS, STREAMABLE, ExportData, ExportFormat, find
from .outputs import STDOUT, atomic_output
from .projector import checkpointed_state, refresh
from .runs import first_event
from .summary import summarize

__all__ = ["FORMATS", "SCHEMA", "export", "row_batches"]

_CHUNK = 8 << 20  # bytes of responses.jsonl per record batch (~23,000 of bench/replay.py's lines)
_BLOCK = 2 << 20  # pyarrow's JSON block: a chunk is parsed by several threads, a block each
_json = msgspec.json.Encoder(order="deterministic")

SCHEMA = pa.schema([
    ("item_id", pa.string()), ("sample", pa.int64()), ("model", pa.string()), ("prompt", pa.string()),
    ("response", pa.string()), ("parsed", pa.string()), ("expected", pa.string()), ("correct", pa.bool_()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("total_tokens", pa.int64()),
    ("latency", pa.float64()), ("attempts", pa.int64()), ("error", pa.string()),
    ("finished_at", pa.timestamp("us", tz="UTC")), ("seq", pa.int64()),
])

_TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")
_TEXT = ("prompt", "parsed", "expected")  # any JSON value; exported as text
# A responses.jsonl line as pyarrow's JSON reader types it (keys in any order, extra keys
# ignored). With the text columns typed as strings, a number or a list there is an error, not
# a silent conversion: that is what sends a chunk to the slower path.
_LINE = pa.schema([
    *(f for f in SCHEMA if f.name not in (*_TOKENS, "finished_at")),
    ("usage", pa.struct([(name, pa.int64()) for name in _TOKENS])), ("finished_at", pa.float64()),
])
_TYPED = pa.schema([f for f in _LINE if f.name not in _TEXT])
# What the fold leaves out of a line reads as these (as a msgspec default would).
_DEFAULTS: dict[str, Any] = {"model": "", "latency": 0.0, "attempts": 0, "finished_at": 0.0, "seq": 0}


class _Key(msgspec.Struct):
    """What ``_superseded`` needs of a line; msgspec skips the other values unbuilt."""

    item_id: str
    sample: int


class _Text(msgspec.Struct, gc=False):
    """The columns that may hold any JSON value, decoded by msgspec when pyarrow cannot type
    them (``gc=False``: decoded JSON holds no cycles, and 3 objects a row need no tracking)."""

    prompt: Any = None
    parsed: Any = None
    expected: Any = None


_decode_key = msgspec.json.Decoder(_Key).decode
_decode_texts = msgspec.json.Decoder(_Text).decode_lines


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return _json.encode(value).decode()


def _superseded(path: str) -> set[int]:
    """Line numbers whose key finishes again later (rare: retried failures, old re-parses)."""
    last: dict[tuple[str, int], int] = {}
    dropped: set[int] = set()
    with fs.open_file(path, "rb") as f:
        for n, line in enumerate(f):
            if not line.endswith(b"\n"):
                break
            row = _decode_key(line)
            key = (row.item_id, row.sample)
            if key in last:
                dropped.add(last[key])
            last[key] = n
    return dropped


def _complete_lines(path: str) -> int:
    """Lines ending in a newline (a live writer's line in progress is not one), counted in
    one reused buffer."""
    buf, lines = bytearray(_CHUNK), 0
    with fs.open_file(path, "rb", buffering=0) as f:
        while size := f.readinto(buf):
            lines += buf.count(b"\n", 0, size)
    return lines


def _unique(paths: RunPaths) -> bool:
    """Whether every line of ``responses.jsonl`` is a distinct key: the fold counts one
    finished key per line, so equal counts mean no line was superseded. (A function of its
    own so that the fold's state, large for a large run, is freed before the export.)"""
    state = refresh(paths)
    return state is not None and _complete_lines(paths.responses) == state.totals.done + state.totals.failed


def _chunks(path: str) -> Iterator[memoryview]:
    """The file's complete lines, about ``_CHUNK`` bytes at a time, each cut after a newline.
    The bytes after the cut are read again with the next chunk rather than copied into it; a
    chunk without a newline (a line longer than ``_CHUNK``) is read again, twice as long."""
    size = _CHUNK
    with fs.open_file(path, "rb") as f:
        while data := f.read(size):
            cut = data.rfind(b"\n") + 1
            if cut:
                f.seek(cut - len(data), os.SEEK_CUR)
                size = _CHUNK
                yield memoryview(data)[:cut]
            elif len(data) < size:
                return  # a live writer's line in progress
            else:
                f.seek(-len(data), os.SEEK_CUR)
                size *= 2


def _kept_chunks(path: str, dropped: set[int]) -> Iterator[bytes]:
    """Like ``_chunks``, without the lines in ``dropped``."""
    kept: list[bytes] = []
    size = 0
    with fs.open_file(path, "rb") as f:
        for n, line in enumerate(f):
            if not line.endswith(b"\n"):
                break  # a live writer's line in progress
            if n not in dropped:
                kept.append(line)
                size += len(line)
            if size >= _CHUNK:
                yield b"".join(kept)
                kept, size = [], 0
    if kept:
        yield b"".join(kept)


def _run_chunks(paths: RunPaths) -> Iterator[bytes | memoryview]:
    """A run's rows as chunks of lines, the last line per key winning: up to date with its
    log, or as its live writer has them so far."""
    if _unique(paths):
        return _chunks(paths.responses)
    return _kept_chunks(paths.responses, _superseded(paths.responses))


def _read(chunk: bytes | memoryview, schema: pa.Schema) -> pa.Table:
    """Parse a chunk of lines with pyarrow (in ``_BLOCK``s, in parallel). A line longer than
    a block cannot be parsed in blocks: on any error, one more try in a single block, which
    raises again if the error was a real one."""
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        return pj.read_json(pa.BufferReader(chunk), read_options=pj.ReadOptions(block_size=_BLOCK), parse_options=parse)
    except pa.ArrowInvalid:
        return pj.read_json(pa.BufferReader(chunk), read_options=pj.ReadOptions(block_size=len(chunk)), parse_options=parse)


def _texts(chunk: bytes | memoryview) -> dict[str, pa.Array]:
    """The text columns of a chunk whose values are not all strings, via msgspec; a column
    that is all strings after all converts without a Python call per value."""
    rows = _decode_texts(chunk)
    out: dict[str, pa.Array] = {}
    for name in _TEXT:
        values = [getattr(r, name) for r in rows]
        try:
            out[name] = pa.array(values, pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            out[name] = pa.array([_text(v) for v in values], pa.string())
    return out


def _columns(table: pa.Table, texts: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """The export's columns from a parsed chunk: usage flattened, timestamps in
    microseconds, left-out fields at their defaults."""
    cols: dict[str, Any] = {name: table.column(name).combine_chunks() for name in table.column_names}
    cols.update(texts)
    usage = cols.pop("usage")
    for name, tokens in zip(_TOKENS, usage.flatten()):
        cols[name] = pc.if_else(usage.is_null(), None, tokens.fill_null(0)) if tokens.null_count > usage.null_count else tokens
    for name, value in _DEFAULTS.items():
        if cols[name].null_count:
            cols[name] = cols[name].fill_null(value)
    micros = pc.multiply(cols["finished_at"], 1_000_000.0).cast(pa.int64(), safe=False)  # truncated, as int() does
    cols["finished_at"] = micros.cast(SCHEMA.field("finished_at").type)
    return cols


def row_batches(runs: Sequence[RunPaths]) -> Iterator[pa.RecordBatch]:
    """Record batches of every run's rows; a ``run_id`` column first when several runs."""
    schema = _schema(len(runs) > 1)
    for paths in runs:
        try:
            yield from _run_batches(paths, schema)
        except (pa.ArrowInvalid, msgspec.DecodeError) as exc:  # only a live run's file is read unrepaired
            raise LedgerError(f"{paths.responses}: a line cannot be exported ({exc}); "
                              f"`ledger replay {paths.run_id} --rebuild` rewrites the file from the log") from exc


def _run_batches(paths: RunPaths, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    strings = True  # until a chunk's text columns hold something else; then for the whole run
    for chunk in _run_chunks(paths):
        cols, strings = _parse(chunk, strings)
        if "run_id" in schema.names:
            cols["run_id"] = pa.repeat(paths.run_id, len(cols["seq"]))
        yield pa.RecordBatch.from_arrays([cols[name] for name in schema.names], schema=schema)


def _parse(chunk: bytes | memoryview, strings: bool) -> tuple[dict[str, pa.Array], bool]:
    """A chunk's export columns, and whether its text columns were all strings. Those are
    read by pyarrow alone (the usual case) when ``strings``; otherwise, or when that fails,
    pyarrow reads the typed columns and msgspec the text ones (``_texts``). Runs with
    numeric or structured answers usually have them throughout, hence one failure per run."""
    if strings:
        try:
            table = _read(chunk, _LINE)
        except pa.ArrowInvalid:
            pass  # a non-string text value, or a damaged line (the reads below raise again)
        else:
            return _columns(table, {}), True
    return _columns(_read(chunk, _TYPED), _texts(chunk)), False


def _schema(multi: bool) -> pa.Schema:
    return pa.schema([("run_id", pa.string()), *SCHEMA]) if multi else SCHEMA


def export(runs: Sequence[RunPaths], fmt: str, out: str, *, events: bool = False) -> int:
    """Write ``out`` (checked by ``outputs.check_output_path``, then written aside and renamed;
    ``-`` is standard output, for the formats that stream); returns the number of rows."""
    form = find(fmt)
    if out == STDOUT:
        if not form.stream:
            raise InputError(f"-o -: {fmt} is a binary format and cannot go to standard output; "
                             f"name a file, or use {', '.join(STREAMABLE)}")
        return form.write(_data(runs, form, events), _stdout_sink())
    _not_a_dataset(runs, out)
    with atomic_output(out) as tmp:
        return form.write(_data(runs, form, events), tmp)


def _not_a_dataset(runs: Sequence[RunPaths], out: str) -> None:
    """Refuse to overwrite an exported run's dataset (``-o data.jsonl`` beside it is an easy
    slip): resume re-reads it and checks its sha256, so the run could never finish."""
    real = os.path.realpath(out)
    for paths in runs:
        first = first_event(paths)
        if first is not None and first.dataset and os.path.realpath(first.dataset) == real:
            raise InputError(f"{out}: refusing to write there: it is the dataset of run {paths.run_id} "
                             f"(a resume re-reads it); name another file")


def _data(runs: Sequence[RunPaths], form: ExportFormat, events: bool) -> ExportData:
    """What the format's writer reads: the row table (or with ``events`` the event table)
    when its source is ``rows``; the summaries only if it asks."""
    def summaries() -> list[dict[str, Any]]:
        return [summarize(_state(p)) for p in runs]

    if form.source != "rows":
        return ExportData(runs, None, (), summaries)
    from . import event_table

    multi = len(runs) > 1
    if events:
        return ExportData(runs, event_table.schema(multi), event_table.event_batches(runs), summaries)
    return ExportData(runs, _schema(multi), row_batches(runs), summaries)


def _stdout_sink() -> IO[bytes]:
    """Standard output as a binary file the writer may close: a duplicate of its
    descriptor, so stdout stays open and keeps its offset (``>> file`` appends, a pipe
    streams; nothing is truncated or renamed)."""
    sys.stdout.flush()
    return fs.fdopen(fs.dup(sys.stdout.fileno()), "wb")


def _state(paths: RunPaths) -> RunState:
    """The fold's state, current; for a live run, as of its projector's last checkpoint."""
    state = refresh(paths)
    return state if state is not None else checkpointed_state(paths)

