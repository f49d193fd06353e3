"""`ledger export RUN... FORMAT [-o PATH] [--events]`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.layout import find_run
from llm_ledger.projections.formats import FORMATS

from .app import app
from .common import RunsDir, err, handled, out

_SUFFIX = {"arrow": ".arrow", "parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl", "xlsx": ".xlsx", "openai-batch": ".batch.jsonl"}


@app.command("export")
def export(
    args: Annotated[list[str], typer.Argument(help="One or more runs, then the format: " + ", ".join(FORMATS) + ".", metavar="RUN... FORMAT")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Output file (default: <run>.<format> here); - is standard output (csv, jsonl, openai-batch).")] = None,
    events: Annotated[bool, typer.Option("--events", help="Export the raw event table instead of one row per item.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """Export runs as Arrow (IPC file), Parquet, CSV, JSONL, xlsx or OpenAI Batch output."""
    from llm_ledger.projections.export import export as export_runs

    with handled():
        if len(args) < 2:
            raise InputError("name at least one run and a format, e.g. `ledger export RUN parquet`")
        *names, fmt = args
        runs = [find_run(runs_dir, name) for name in names]
        if fmt not in FORMATS:
            raise InputError(f"unknown export format {fmt!r} (use one of {', '.join(FORMATS)})")
        path = output or ("-".join(r.run_id for r in runs) + ("-events" if events else "") + _SUFFIX[fmt])
        rows = export_runs(runs, fmt, path, events=events)
        if path == "-":  # the rows went to stdout: the count goes to stderr
            err.print(f"wrote {rows} rows to standard output", markup=False)
        else:
            out.print(f"wrote {rows} rows to {path}", markup=False)
