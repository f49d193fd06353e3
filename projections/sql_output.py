"""How ``ledger sql`` gives its result: ``table`` (for people), ``csv``, ``json``, ``parquet``.

* ``table``: aligned text columns under a header, numbers right-aligned, NULL for null, a
  line break in a value shown as ``\\n``, values longer than ``CELL`` characters cut with
  ``…`` and at most ``SHOWN`` rows on the terminal; the last line counts the rows (and says
  how many are shown). Written with ``-o``, every row and every character is kept.
* ``csv``: pyarrow's CSV writer (header row, RFC 4180 quoting, null as empty); a nested or
  interval value is written as its JSON text.
* ``json``: ONE JSON array of row objects, keys in the result's column order; times in RFC
  3339 (UTC), decimals (DuckDB's ``sum`` of integers) as numbers, intervals as
  ``{"months", "days", "nanoseconds"}``, bytes as base64.
* ``parquet``: a file (``-o`` only: it is binary), columns typed as DuckDB returned them.

``-o`` goes through ``outputs.atomic_output``: checked (never a run's own files), written
aside, synced and renamed.
"""

from __future__ import annotations

import datetime
import decimal
import os
from typing import IO, TYPE_CHECKING, Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError

from .outputs import atomic_output

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["FORMATS", "CELL", "SHOWN", "render", "write_file", "format_for"]

FORMATS = ("table", "csv", "json", "parquet")
CELL = 60  # characters of a value a table shows
SHOWN = 200  # rows a table shows on the terminal
_SUFFIXES = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".txt": "table"}


def format_for(fmt: str | None, out: str | None) -> str:
    """The format asked for; without one, the -o file's suffix says it (none: ``table``).
    A suffix we do not write is refused rather than filled with a text table: ``out.xlsx``
    that Excel cannot open, yet reported as written, is worse than an error."""
    if fmt is None:
        suffix = os.path.splitext(out)[1].lower() if out else ""
        if suffix and suffix not in _SUFFIXES:
            raise InputError(f"{out}: suffix {suffix}: use {', '.join(_SUFFIXES)}, or --format")
        return _SUFFIXES.get(suffix, "table")
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def _extra(value: Any) -> Any:
    """What msgspec does not encode by itself: intervals (pyarrow's MonthDayNano)."""
    if hasattr(value, "months") and hasattr(value, "nanoseconds"):
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    raise NotImplementedError(f"cannot write a {type(value).__name__} value")


_json = msgspec.json.Encoder(enc_hook=_extra, decimal_format="number")


def _rows_json(table: pa.Table) -> bytes:
    return _json.encode(table.to_pylist()) + b"\n"


def _plain(table: pa.Table) -> pa.Table:
    """The table with every column CSV cannot hold (lists, structs, maps, intervals) as JSON text."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        kind = field.type
        if pa.types.is_nested(kind) or pa.types.is_interval(kind):
            texts = [None if v is None else _json.encode(v).decode() for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(texts, pa.string()))
    return table


def _csv(table: pa.Table, sink: Any) -> None:
    import pyarrow.csv as pacsv

    pacsv.write_csv(_plain(table), sink)


def _cell(value: Any, cut: bool) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):
        text = value.isoformat(sep=" ")
    elif isinstance(value, (int, float, decimal.Decimal, str)):
        text = str(value)
    else:
        text = _json.encode(value).decode()
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text[: CELL - 1] + "…" if cut and len(text) > CELL else text


def _numeric(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _table(table: pa.Table, every: bool) -> bytes:
    """The result as aligned text; ``every``: all rows and whole values (a file)."""
    shown = table if every else table.slice(0, SHOWN)
    names = table.column_names
    right = [_numeric(f.type) for f in table.schema]
    cells = [[_cell(v, not every) for v in row.values()] for row in shown.to_pylist()]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]

    def line(values: list[str]) -> str:
        return " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    lines = [line(names), "-+-".join("-" * w for w in widths)] if names else []
    lines += [line(r) for r in cells]
    n = table.num_rows
    count = f"({n:,} row{'' if n == 1 else 's'}"
    count += f", the first {shown.num_rows:,} shown; --format csv or json, or -o, for all)" if shown.num_rows < n else ")"
    return ("\n".join([*lines, count]) + "\n").encode()


def render(table: pa.Table, fmt: str) -> bytes:
    """The result for standard output; ``parquet`` is refused (binary: it needs ``-o``)."""
    if fmt == "parquet":
        raise InputError("--format parquet writes a binary file: name it with -o PATH")
    if fmt == "json":
        return _rows_json(table)
    if fmt == "csv":
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        _csv(table, sink)
        return sink.getvalue().to_pybytes()
    return _table(table, every=False)


def write_file(table: pa.Table, fmt: str, out: str) -> int:
    """Write the result to ``out`` (checked, atomic); returns its rows."""
    with atomic_output(out) as tmp, fs.open_file(tmp, "wb") as f:
        if fmt == "parquet":
            _parquet(table, f, out)
        elif fmt == "csv":
            _csv(table, f)
        elif fmt == "json":
            f.write(_rows_json(table))
        else:
            f.write(_table(table, every=True))
    return table.num_rows


def _parquet(table: pa.Table, sink: IO[bytes], out: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.write_table(table, sink)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
        raise InputError(f"{out}: Parquet cannot hold this result ({exc}); use --format csv or json") from None
