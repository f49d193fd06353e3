"""`ledger export RUN... FORMAT [-o PATH] [--events]`: names, help and default suffixes come
from the format table (``projections/formats.py``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.layout import find_run
from llm_ledger.projections.formats import FORMATS, STREAMABLE, find

from .app import app
from .common import RunsDir, err, handled, out

_TITLES = [f.title for f in FORMATS.values()]


@app.command("export", help=f"Export runs as {', '.join(_TITLES[:-1])} or {_TITLES[-1]}.")
def export(
    args: Annotated[list[str], typer.Argument(help="One or more runs, then the format: " + ", ".join(FORMATS) + ".", metavar="RUN... FORMAT")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", help=f"Output file (default: <run>.<format> here); - is standard output ({', '.join(STREAMABLE)}).")] = None,
    events: Annotated[bool, typer.Option("--events", help="Export the raw event table instead of one row per item.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    from llm_ledger.projections.export import export as export_runs

    with handled():
        if len(args) < 2:
            raise InputError("name at least one run and a format, e.g. `ledger export RUN parquet`")
        *names, fmt = args
        runs = [find_run(runs_dir, name) for name in names]
        form = find(fmt)
        path = output or ("-".join(r.run_id for r in runs) + ("-events" if events else "") + form.suffix)
        rows = export_runs(runs, fmt, path, events=events)
        if path == "-":  # the rows went to stdout: the count goes to stderr
            err.print(f"wrote {rows} rows to standard output", markup=False)
        else:
            out.print(f"wrote {rows} rows to {path}", markup=False)
