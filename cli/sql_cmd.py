"""`ledger sql ["QUERY"] [--format table|csv|json|parquet] [-o PATH] [--runs-dir DIR]`: SQL over
every run (projections/sql.py); without a query, an interactive prompt reading standard input."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .app import app
from .common import RunsDir, err, error_line, handled, out, stdout

if TYPE_CHECKING:
    from llm_ledger.projections.sql import Catalog

_VIEWS = ("runs (one row per run: status, counts, accuracy, cost, started/finished), rows (one row per item and "
          "sample: the export's columns with run_id), events (the raw event table)")
_QUIT = {".quit", ".exit", "quit", "exit", "\\q"}
_TABLES = {".tables", "\\d", "show views"}


@app.command("sql", help=f"SQL (DuckDB) over every run of the runs directory. Views: {_VIEWS}. "
                         "Without a query: an interactive prompt (end a query with ';'; .tables, .quit).")
def sql(
    query: Annotated[Optional[str], typer.Argument(help="The query; none: an interactive prompt.", metavar="QUERY")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="table, csv, json (one array of row objects) or parquet (with -o); default: table, or the -o file's suffix.", metavar="FORMAT")] = None,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Write the result to this file (written aside, then renamed).")] = None,
    runs_dir: RunsDir = "runs",
) -> None:
    from llm_ledger.projections.sql import Catalog
    from llm_ledger.projections.sql_output import format_for

    with handled():
        form = format_for(fmt, output)
        catalog = Catalog(runs_dir)
    with catalog:
        if query is None:
            _prompt(catalog, form, output)
            return
        with handled():
            _answer(catalog, query, form, output)


def _answer(catalog: Catalog, query: str, form: str, output: str | None) -> None:
    from llm_ledger.projections.sql_output import render, write_file

    table = catalog.query(query)
    if output:
        rows = write_file(table, form, output)
        out.print(f"wrote {rows} rows to {output}", markup=False)
        return
    stdout.put_bytes(render(table, form))
    stdout.flush_bytes()


def _prompt(catalog: Catalog, form: str, output: str | None) -> None:
    """Read queries from standard input until its end or .quit; an error is its one line on
    standard error, and the prompt goes on. The prompt and its banner show on a terminal only."""
    from llm_ledger.ledger.errors import LedgerError

    from llm_ledger.projections.sql_views import VIEWS

    interactive = sys.stdin.isatty()
    if interactive:
        err.print(f"ledger sql: views {', '.join(VIEWS)}; end a query with ';' (.tables lists the views, .quit leaves)",
                  markup=False)
    lines: list[str] = []
    while True:
        if interactive:
            err.print("ledger> " if not lines else "   ...> ", end="", markup=False)
        line = sys.stdin.readline()
        if not line:
            break
        word = line.strip()
        if not lines and word.lower() in _QUIT:
            break
        if not lines and word.lower() in _TABLES:
            for name, view in VIEWS.items():
                out.print(f"{name}: {view.about}", markup=False)
            continue
        if word or lines:
            lines.append(line)
        text = "".join(lines)
        if lines and (not word or catalog.ready(text)):
            lines = []
            _one(catalog, text, form, output, LedgerError)
    if "".join(lines).strip():
        _one(catalog, "".join(lines), form, output, LedgerError)


def _one(catalog: Catalog, text: str, form: str, output: str | None, errors: type[Exception]) -> None:
    try:
        _answer(catalog, text, form, output)
    except (errors, OSError) as exc:  # type: ignore[misc]
        message, _ = error_line(exc)  # type: ignore[arg-type]
        err.print(f"error: {message}", markup=False, highlight=False)
