"""The export formats, as one table: ``ledger export`` and its CLI read nothing else.

Adding a format is one writer function (``projections/writers.py``) and one line in
``_TABLE`` below: the CLI's list, help, default file suffix and ``-o -`` check, and the
export's dispatch all come from the entry. The module stays light enough for the CLI to
import at start-up: the writers import pyarrow / openpyxl only when they run.

Every writer has one signature, ``write(data, sink) -> rows``: ``data`` is an
``ExportData`` (what the export holds; which parts a writer reads is its entry's
``source``) and ``sink`` a path, or an open binary file (standard output's duplicate,
which the writer closes; only for formats with ``stream=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any, Literal, Union

import msgspec

from llm_ledger.ledger.errors import InputError

from . import writers

if TYPE_CHECKING:
    import pyarrow as pa

    from llm_ledger.ledger.layout import RunPaths

__all__ = ["ExportData", "ExportFormat", "FORMATS", "STREAMABLE", "Sink", "Source", "find"]

Sink = Union[str, IO[bytes]]
# "rows": the export's record batches (one row per (item, sample), or with --events one per
# event) and their schema; "log": the runs' logs, read by the writer itself (--events does
# not change what it writes).
Source = Literal["rows", "log"]


class ExportData(msgspec.Struct, frozen=True):
    """What an export holds for its writer. ``batches`` is a single-use stream (bounded
    memory), empty for a ``"log"`` format; ``summaries`` is called only by a writer that
    shows them (it costs a fold of each run). (Structs, here and below, because they cost
    less to define than dataclasses, and this module loads with the CLI.)"""

    runs: Sequence[RunPaths]
    schema: pa.Schema | None
    batches: Iterable[pa.RecordBatch]
    summaries: Callable[[], list[dict[str, Any]]]


class ExportFormat(msgspec.Struct, frozen=True):
    """One export format. ``stream``: written front to back with nothing to go back for
    (no footer, no zip directory), so it may go to standard output (``-o -``)."""

    name: str
    suffix: str  # of the default output file, ``<run>[-events]<suffix>``
    title: str  # what a person calls it, in the command's help
    source: Source
    write: Callable[[ExportData, Sink], int]
    stream: bool = False


_TABLE = (
    ExportFormat("arrow", ".arrow", "Arrow (IPC file)", "rows", writers.write_arrow),
    ExportFormat("parquet", ".parquet", "Parquet", "rows", writers.write_parquet),
    ExportFormat("csv", ".csv", "CSV", "rows", writers.write_csv, stream=True),
    ExportFormat("jsonl", ".jsonl", "JSONL", "rows", writers.write_jsonl, stream=True),
    ExportFormat("jsonl.gz", ".jsonl.gz", "gzipped JSONL", "rows", writers.write_jsonl_gz, stream=True),
    ExportFormat("xlsx", ".xlsx", "xlsx", "rows", writers.write_xlsx),
    ExportFormat("openai-batch", ".batch.jsonl", "OpenAI Batch output", "log", writers.write_openai_batch, stream=True),
)

FORMATS: dict[str, ExportFormat] = {f.name: f for f in _TABLE}
STREAMABLE = tuple(f.name for f in _TABLE if f.stream)


def find(name: str) -> ExportFormat:
    """The format called ``name``; a bad call (exit 2) naming the choices otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise InputError(f"unknown export format {name!r} (use one of {', '.join(FORMATS)})") from None
