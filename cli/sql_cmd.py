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

    try:
        table = catalog.query(query)
    finally:
        for note in catalog.notes:
            err.print(f"warning: {note}", markup=False, highlight=False)
        catalog.notes.clear()
    if output:
        rows = write_file(table, form, output)
        out.print(f"wrote {rows} rows to {output}", markup=False)
        return
    stdout.put_bytes(render(table, form))
    stdout.flush_bytes()


def _prompt(catalog: Catalog, form: str, output: str | None) -> None:
    """Read queries from standard input until its end or .quit; an error is its one line on
    standard error, and the prompt goes on. The prompt and its banner show on a terminal only.

    A query ends at a line ending in ';', at a blank line, or at the end of the input; a line
    that is a whole statement by itself runs at once (``Catalog.whole``), and a first line that
    is not is run (its error said) when the next line begins a statement, not glued to it."""
    from llm_ledger.projections.sql_views import VIEWS

    interactive = sys.stdin.isatty()
    if interactive:
        err.print(f"ledger sql: views {', '.join(VIEWS)}; end a query with ';' (.tables lists the views, .quit leaves)",
                  markup=False)
    pending = ""  # lines of a query not run yet
    while True:
        line = _read_line("   ...> " if pending else "ledger> ") if interactive else sys.stdin.readline()
        if line is None:  # Ctrl-C: the lines typed so far are dropped, as in psql
            pending = ""
            continue
        if not line:
            break
        word = line.strip()
        if not pending and word.lower() in _QUIT:
            break
        if not pending and word.lower() in _TABLES:
            for name, view in VIEWS.items():
                out.print(f"{name}: {view.about}", markup=False)
            continue
        if pending and "\n" not in pending.strip() and not catalog.whole(pending) and catalog.starts(line):
            _one(catalog, pending, form, output)  # a first line that never parsed: said now
            pending = ""
        pending += line
        if not word or word.endswith(";") or ("\n" not in pending.strip() and catalog.whole(pending)):
            if pending.strip():
                _one(catalog, pending, form, output)
            pending = ""
    if pending.strip():
        _one(catalog, pending, form, output)


def _read_line(prompt: str) -> str | None:
    """A line typed at a terminal, with line editing and history (readline, where there is
    one); "" at Ctrl-D, None at Ctrl-C."""
    try:
        import readline  # noqa: F401  (input() edits lines once it is loaded)
    except ImportError:
        pass
    try:
        return input(prompt) + "\n"
    except EOFError:
        return ""
    except KeyboardInterrupt:
        err.print("", markup=False)
        return None


def _one(catalog: Catalog, text: str, form: str, output: str | None) -> None:
    from llm_ledger.ledger.errors import LedgerError

    try:
        _answer(catalog, text, form, output)
    except (LedgerError, OSError) as exc:
        message, _ = error_line(exc)
        err.print(f"error: {message}", markup=False, highlight=False)
