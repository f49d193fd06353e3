"""``ledger export``: one row per (item, sample), typed columns, in dataset order.

This is the rows table people load into pandas, DuckDB or Excel. Rows come from
``responses.jsonl`` after the projections are brought up to date with the log (so an export
is a fold of the log, like every other output), the last line per key winning. That file is
in log order (DESIGN: appended live, rebuilt byte for byte; a resume appends the lines that
supersede earlier ones); an export is in the dataset's order: by the item's line in its
dataset (carried by the events since this field exists), then by sample. Lines without one
(a log written before it) come first, their items in the order they first finished.

Columns, in this order in every format (JSONL keys too): ``run_id`` (always, so that
exports of several runs concatenate), ``item_id``, ``sample``, then a column per metadata
field of the dataset records (``topic`` ...; by name; a field named like a fixed column is
``metadata.<name>``), then the names of ``responses.jsonl`` with ``usage`` flattened:

    run_id string, item_id string, sample int64, <metadata...>, model string,
    prompt string, response string, parsed string, expected string, correct bool,
    correct_reviewed bool, prompt_tokens int64, completion_tokens int64, total_tokens int64, latency float64,
    attempts int64, error string, finished_at timestamp[us, UTC], seq int64,
    conversation list<struct<role string, content string>>

and, when some row's reply was copied from the cross-run cache, ``cached_from_run string,
cached_from_seq int64`` (the run and event where it was paid for; null for a reply sent).

``prompt``, ``parsed`` and ``expected`` hold JSON values of any type; they are exported as text
(a string as itself, anything else as its compact JSON, keys sorted) so that a column has one
type. A metadata column keeps its values' type when they share one (bool, int64, float64 for
ints and floats, string), else it is text the same way. ``prompt``/``response`` are the last
turn's; ``conversation`` is a multi-turn item's every message, its last reply included (null
for one turn: prompt and response are all of it). ``correct`` is the machine's verdict,
``correct_reviewed`` a person's where one is in effect (``ledger review``), else the
machine's; a line written before reviews existed has none: it is ``correct`` there too.
Arrow is the IPC *file* format.

Bounded memory: a first pass (``_Survey``) reads each line's key, dataset line and metadata
and keeps two integers per row (where the line is in the file); their sorted order is read
back about ``_CHUNK`` bytes at a time (neighbouring lines in one read: rows finish roughly in
dataset order), and each chunk is written as one record batch before the next is read. When
the file is in dataset order already, it is read straight through. pyarrow's JSON reader
parses a chunk straight into columns (no Python object per value); only when a text column
holds a non-string does msgspec decode those three columns (``_texts``), and only runs with
metadata or conversations have those decoded by msgspec (``_extras``).
"""

from __future__ import annotations

import os
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
from .merge_status import require_merged
from .outputs import STDOUT, atomic_output
from .projector import checkpointed_state, refresh
from .runs import first_event
from .summary import summarize

__all__ = ["FORMATS", "SCHEMA", "export", "row_batches", "rows_table"]

_CHUNK = 8 << 20  # bytes of responses.jsonl per record batch (~23,000 of bench/replay.py's lines)
_BLOCK = 2 << 20  # pyarrow's JSON block: a chunk is parsed by several threads, a block each
_json = msgspec.json.Encoder(order="deterministic")

_CONVERSATION = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("item_id", pa.string()), ("sample", pa.int64()), ("model", pa.string()),
    ("prompt", pa.string()), ("response", pa.string()), ("parsed", pa.string()), ("expected", pa.string()),
    ("correct", pa.bool_()), ("correct_reviewed", pa.bool_()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("total_tokens", pa.int64()), ("latency", pa.float64()), ("attempts", pa.int64()), ("error", pa.string()),
    ("finished_at", pa.timestamp("us", tz="UTC")), ("seq", pa.int64()), ("conversation", _CONVERSATION),
])
# With a reply copied from the cross-run cache in some run: where it was paid for (null: sent by this run).
CACHE_COLUMNS = [pa.field("cached_from_run", pa.string()), pa.field("cached_from_seq", pa.int64())]
_GAP = 64 << 10  # bytes between two wanted lines that are read through rather than sought over

_TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")
_TEXT = ("prompt", "parsed", "expected")  # any JSON value; exported as text
# A responses.jsonl line as pyarrow's JSON reader types it (keys in any order, extra keys
# ignored). With the text columns typed as strings, a number or a list there is an error, not
# a silent conversion: that is what sends a chunk to the slower path.
_LINE = pa.schema([
    *(f for f in SCHEMA if f.name not in (*_TOKENS, "finished_at", "run_id", "conversation")),
    ("usage", pa.struct([(name, pa.int64()) for name in _TOKENS])), ("finished_at", pa.float64()),
])
_TYPED = pa.schema([f for f in _LINE if f.name not in _TEXT])
# What the fold leaves out of a line reads as these (as a msgspec default would).
_DEFAULTS: dict[str, Any] = {"model": "", "attempts": 0, "finished_at": 0.0, "seq": 0}  # latency: null stays null


class _Place(msgspec.Struct, gc=False):
    """Where a line goes in the export; msgspec skips the other values unbuilt."""

    sample: int
    line: int = 0


class _Id(msgspec.Struct, gc=False):
    item_id: str


class _Described(_Place, gc=False):
    """A place and the metadata beside it, for chunks that have some."""

    metadata: dict[str, Any] = {}


class _Extra(msgspec.Struct, gc=False):
    """The values that become the metadata columns, the conversation column and the cache's."""

    metadata: dict[str, Any] = {}
    conversation: Any = None
    cached_from: Any = None


class _Text(msgspec.Struct, gc=False):
    """The columns that may hold any JSON value, decoded by msgspec when pyarrow cannot type
    them (``gc=False``: decoded JSON holds no cycles, and 3 objects a row need no tracking)."""

    prompt: Any = None
    parsed: Any = None
    expected: Any = None


_decode_described = msgspec.json.Decoder(_Described).decode_lines
_decode_places = msgspec.json.Decoder(_Place).decode_lines
_decode_ids = msgspec.json.Decoder(_Id).decode_lines
_decode_extras = msgspec.json.Decoder(_Extra).decode_lines
_decode_texts = msgspec.json.Decoder(_Text).decode_lines


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return _json.encode(value).decode()


class _Survey:
    """One pass over a run's ``responses.jsonl``: where each kept line is, in the order the
    export writes them (``starts``/``ends``, byte ranges; None when that is the file's own
    order), and the metadata fields it holds with the kinds of their values. Memory: two
    64-bit integers per row, whatever the size of the rows."""

    def __init__(self, paths: RunPaths, unique: bool) -> None:
        self.paths = paths
        self.rows = 0
        self.kinds: dict[str, set[str]] = {}  # metadata field -> kinds of its values
        self.conversations = False  # some line has a conversation (a multi-turn item)
        self.cached = False  # some line's reply was copied from the cross-run cache
        self.starts: array[int] | None = None
        self.ends: array[int] | None = None
        self._scan(unique)

    def _scan(self, unique: bool) -> None:
        """msgspec decodes each chunk's samples and dataset lines (skipping the rest: faster
        than pyarrow here), item ids only when some key has several lines; the line lengths
        come from splitting the chunk at its newlines."""
        samples, lines, ends = array("q"), array("q"), array("q")
        ids: list[str] | None = None if unique else []
        end = 0
        for chunk in _chunks(self.paths.responses):
            data = bytes(chunk)
            described = b'"metadata":' in data
            places = (_decode_described if described else _decode_places)(data)
            sizes = _line_sizes(data)
            if len(sizes) != len(places):  # e.g. an empty line
                raise pa.ArrowInvalid(f"{len(sizes)} lines but {len(places)} rows in a chunk")
            samples.extend([p.sample for p in places])
            lines.extend([p.line for p in places])
            ends.extend(pc.add(pc.cumulative_sum(sizes), end).to_pylist())
            end = ends[-1] if ends else 0
            if ids is not None:
                ids += [r.item_id for r in _decode_ids(data)]
            if described:
                self._kinds(places)  # type: ignore[arg-type]
            self.conversations = self.conversations or b'"conversation":' in data
            self.cached = self.cached or b'"cached_from":' in data
        every = pa.array(range(len(lines)), pa.int64())
        first = _first_seen(lines, samples, ids, lambda: self._ids(len(lines)))
        table = pa.table({"line": _int64(lines), "first": _int64(first), "sample": _int64(samples), "n": every})
        if ids is not None:
            table = table.take(_last_per_key(ids, samples))
        order = pc.sort_indices(table, [("line", "ascending"), ("first", "ascending"), ("sample", "ascending"), ("n", "ascending")])
        ranks = table.column("n").take(order).combine_chunks()
        self.rows = len(ranks)
        if unique and ranks.equals(every):
            return  # the file's order already (one worker, a small run, a log without lines): read as it is
        ends_array = _int64(ends)
        sizes_all = pc.subtract(ends_array, pa.concat_arrays([pa.array([0], pa.int64()), ends_array.slice(0, len(ends) - 1)]))
        self.starts = array("q", pc.subtract(pc.take(ends_array, ranks), pc.take(sizes_all, ranks)).to_pylist())
        self.ends = array("q", pc.take(ends_array, ranks).to_pylist())

    def _ids(self, count: int) -> list[str]:
        """Every line's item id (a second pass: only for a log older than the dataset line
        with several samples per item)."""
        ids: list[str] = []
        for chunk in _chunks(self.paths.responses):
            ids += [r.item_id for r in _decode_ids(chunk)]
        return ids[:count]

    def _kinds(self, rows: list[_Described]) -> None:
        """The kinds of each metadata field's values (a set of (field, type) pairs built in
        one comprehension; ints checked to fit in 64 bits)."""
        pairs = {(name, value.__class__) for row in rows for name, value in row.metadata.items()}
        for name, cls in pairs:
            kind = _KINDS.get(cls, "text")
            if kind == "int":
                values = [v for row in rows if (v := row.metadata.get(name)).__class__ is int]
                kind = "int" if -(1 << 63) <= min(values) and max(values) < (1 << 63) else "text"
            self.kinds.setdefault(name, set()).add(kind)

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The kept lines in the export's order, about ``_CHUNK`` bytes at a time."""
        if self.starts is None:
            return _chunks(self.paths.responses)
        return _gathered(self.paths.responses, self.starts, self.ends)  # type: ignore[arg-type]


def _line_sizes(data: bytes) -> pa.Array:
    """The byte length of each line of ``data`` (which ends in a newline), newline included."""
    offsets = pa.array([0, len(data)], pa.int64()).buffers()[1]
    blob = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    pieces = pc.list_flatten(pc.split_pattern(blob, b"\n"))
    sizes = pc.binary_length(pieces.slice(0, len(pieces) - 1))  # (the empty piece after the last newline)
    return pc.add(sizes, 1).cast(pa.int64())


def _int64(values: array[int]) -> pa.Array:
    """An ``array('q')`` as an Arrow int64 array, without a Python object per value."""
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _first_seen(lines: array[int], samples: array[int], ids: list[str] | None, read_ids: Callable[[], list[str]]) -> array[int]:
    """Per row without a dataset line (a log older than the field), the rank of its item
    in the order items first finished; 0 elsewhere. With one line per key and one sample,
    that is the row's rank among those rows: no item ids needed."""
    first = array("q", bytes(8 * len(lines)))
    if 0 not in lines:
        return first
    zero = [n for n, line in enumerate(lines) if not line]
    if ids is None and not any(samples[n] for n in zero):
        for rank, n in enumerate(zero):
            first[n] = rank
        return first
    names = ids if ids is not None else read_ids()
    rank: dict[str, int] = {}
    for n in zero:
        first[n] = rank.setdefault(names[n], len(rank))
    return first


def _last_per_key(ids: list[str], samples: array[int]) -> list[int]:
    """Row numbers of the last line of each key, in file order (rare: retried failures)."""
    last = {(item_id, samples[n]): n for n, item_id in enumerate(ids)}
    return sorted(last.values())


_KINDS = {type(None): "null", bool: "bool", int: "int", float: "float", str: "string"}  # else "text"


# A metadata column's type from the kinds of its values (nulls aside): one kind keeps its
# type, ints and floats are floats, and anything else mixed is text (a string as itself,
# any other value as its JSON), as for ``prompt``/``parsed``/``expected``.
_KIND_TYPES = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string(), "text": pa.string()}


def _metadata_type(kinds: set[str]) -> tuple[pa.DataType, bool]:
    """The column's type, and whether its values go through ``_text``."""
    kinds = kinds - {"null"}
    if kinds <= {"int", "float"} and "float" in kinds:
        return pa.float64(), False
    if len(kinds) == 1:
        (kind,) = kinds
        return _KIND_TYPES[kind], kind == "text"
    return pa.string(), bool(kinds)


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


def _gathered(path: str, starts: array[int], ends: array[int]) -> Iterator[bytes]:
    """The byte ranges, in the given order, joined about ``_CHUNK`` bytes at a time."""
    with fs.open_file(path, "rb") as f:
        i, n = 0, len(starts)
        while i < n:
            j, size = i, 0
            while j < n and size < _CHUNK:
                size += ends[j] - starts[j]
                j += 1
            yield _read_ranges(f, starts[i:j], ends[i:j])
            i = j


def _read_ranges(f: IO[bytes], starts: array[int], ends: array[int]) -> bytes:
    """Ranges read in file order, neighbours (rows finish about when their dataset
    neighbours do: the usual case) in one read, then joined in the given order."""
    spans = sorted(zip(starts, ends))
    lows, highs = [spans[0][0]], [spans[0][1]]
    for start, end in spans:
        if start - highs[-1] > _GAP or end - lows[-1] > 2 * _CHUNK:
            lows.append(start)
            highs.append(end)
        elif end > highs[-1]:
            highs[-1] = end
    buffers = []
    for low, high in zip(lows, highs):
        f.seek(low)
        buffers.append(memoryview(f.read(high - low)))
    if len(lows) == 1:
        low, buf = lows[0], buffers[0]
        return b"".join([buf[s - low:e - low] for s, e in zip(starts, ends)])
    pieces = []
    for s, e in zip(starts, ends):
        r = bisect_right(lows, s) - 1
        pieces.append(buffers[r][s - lows[r]:e - lows[r]])
    return b"".join(pieces)


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
    if "correct_reviewed" in cols and cols["correct_reviewed"].null_count:  # a line from before reviews: the machine's
        cols["correct_reviewed"] = pc.if_else(cols["correct_reviewed"].is_null(), cols["correct"], cols["correct_reviewed"])
    micros = pc.multiply(cols["finished_at"], 1_000_000.0).cast(pa.int64(), safe=False)  # truncated, as int() does
    cols["finished_at"] = micros.cast(SCHEMA.field("finished_at").type)
    return cols


class Columns(msgspec.Struct, frozen=True):
    """The export's schema for a set of runs: ``SCHEMA`` with a column per metadata field
    (after ``sample``, by name) and which of them hold text."""

    schema: pa.Schema
    metadata: dict[str, str]  # column name -> metadata field
    texts: frozenset[str]  # metadata columns whose values go through ``_text``
    extras: bool  # some run has metadata or conversations: a chunk's extras are decoded

    @classmethod
    def of(cls, surveys: Sequence[_Survey]) -> Columns:
        kinds: dict[str, set[str]] = {}
        for survey in surveys:
            for name, seen in survey.kinds.items():
                kinds.setdefault(name, set()).update(seen)
        fields, metadata, texts = [], {}, set()
        for name, seen in sorted(kinds.items()):  # by name: the same columns in the same order whatever finished first
            column = f"metadata.{name}" if name in SCHEMA.names else name  # a field called e.g. "model"
            kind, text = _metadata_type(seen)
            fields.append(pa.field(column, kind))
            metadata[column] = name
            if text:
                texts.add(column)
        at = SCHEMA.get_field_index("sample") + 1
        fixed = list(SCHEMA)
        cached = any(s.cached for s in surveys)  # two more columns, last, only when some reply came from the cache
        schema = pa.schema([*fixed[:at], *fields, *fixed[at:], *(CACHE_COLUMNS if cached else [])])
        return cls(schema, metadata, frozenset(texts), bool(kinds) or cached or any(s.conversations for s in surveys))


def row_batches(runs: Sequence[RunPaths]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The export's schema, and the record batches of every run's rows: run after run, each
    in its dataset's order."""
    surveys = []
    for paths in runs:
        with _readable(paths):
            surveys.append(_Survey(paths, _unique(paths)))
    columns = Columns.of(surveys)
    return columns.schema, _batches(surveys, columns)


def rows_table(runs: Sequence[RunPaths]) -> pa.Table:
    """The rows of ``runs`` as one Arrow table (``ledger sql``'s ``rows``): the batches every
    export format writes, held in memory instead."""
    schema, batches = row_batches(runs)
    return pa.Table.from_batches(list(batches), schema=schema)


@contextmanager
def _readable(paths: RunPaths) -> Iterator[None]:
    try:
        yield
    except (pa.ArrowInvalid, msgspec.DecodeError) as exc:  # only a live run's file is read unrepaired
        raise LedgerError(f"{paths.responses}: a line cannot be exported ({exc}); "
                          f"`ledger replay {paths.run_id} --rebuild` rewrites the file from the log") from exc


def _batches(surveys: Sequence[_Survey], columns: Columns) -> Iterator[pa.RecordBatch]:
    for survey in surveys:
        with _readable(survey.paths):
            yield from _run_batches(survey, columns)


def _run_batches(survey: _Survey, columns: Columns) -> Iterator[pa.RecordBatch]:
    strings = True  # until a chunk's text columns hold something else; then for the whole run
    schema = columns.schema
    for chunk in survey.chunks():
        cols, strings = _parse(chunk, strings)
        rows = len(cols["seq"])
        cols["run_id"] = pa.repeat(survey.paths.run_id, rows)
        if columns.extras:
            cols.update(_extras(chunk, columns))
        else:
            cols["conversation"] = pa.nulls(rows, _CONVERSATION)
        yield pa.RecordBatch.from_arrays([cols[name] for name in schema.names], schema=schema)


def _extras(chunk: bytes | memoryview, columns: Columns) -> dict[str, pa.Array]:
    """A chunk's metadata columns and its conversation column, via msgspec."""
    rows = _decode_extras(chunk)
    out: dict[str, pa.Array] = {}
    for column, name in columns.metadata.items():
        values = [r.metadata.get(name) for r in rows]
        if column in columns.texts:
            values = [_text(v) for v in values]
        out[column] = pa.array(values, columns.schema.field(column).type)
    out["conversation"] = pa.array([_conversation(r.conversation) for r in rows], _CONVERSATION)
    if "cached_from_run" in columns.schema.names:
        sources = [r.cached_from if isinstance(r.cached_from, dict) else {} for r in rows]
        out["cached_from_run"] = pa.array([c.get("run") for c in sources], pa.string())
        out["cached_from_seq"] = pa.array([c.get("seq") for c in sources], pa.int64())
    return out


def _conversation(messages: Any) -> list[dict[str, Any]] | None:
    """A conversation as the column holds it: each message's role and its content as text."""
    if not isinstance(messages, list):
        return None
    return [{"role": _text(m.get("role")), "content": _text(m.get("content"))} if isinstance(m, dict)
            else {"role": None, "content": _text(m)} for m in messages]


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


def export(runs: Sequence[RunPaths], fmt: str, out: str, *, events: bool = False) -> int:
    """Write ``out`` (checked by ``outputs.check_output_path``, then written aside and renamed;
    ``-`` is standard output, for the formats that stream); returns the number of rows."""
    form = find(fmt)
    if not events:  # the event table reads a sharded run's shards live; its rows are the merge's
        for paths in runs:
            require_merged(paths)
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

    if events:
        return ExportData(runs, event_table.SCHEMA, event_table.event_batches(runs), summaries)
    schema, batches = row_batches(runs)
    return ExportData(runs, schema, batches, summaries)


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

