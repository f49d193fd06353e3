"""`ledger sql ["QUERY"] [--format table|csv|json|parquet] [-o PATH] [--runs-dir DIR]`: SQL over
every run (projections/sql.py); without a query, an interactive prompt reading standard input.

QUERY is ONE statement: several (``"SELECT 1; SELECT 2"``) are refused, exit 2 -- one result
is one table, one JSON array, one ``-o`` file, and printing only the last one's would hide the
others. The prompt runs several in turn.

The prompt (a terminal, or lines piped in) runs a statement when a ';' ends it, wherever the
line breaks fall: lines are gathered until DuckDB's tokenizer sees a ';' outside strings,
quoted names and comments, so a statement never runs cut short at a line that happens to
parse alone. Several statements on one line run in turn. At the end of the input, a statement
that no ';' ended is run as it is (as sqlite3 and psql do with a script): ``echo "SELECT ..." |
ledger sql`` answers, and a statement cut short gets DuckDB's own error. Before a statement's
first line, a line starting with '.' or '\\' is a command of the prompt: ``.tables``,
``.help``, ``.quit`` (also ``.exit``, ``\\q``, ``\\d``); any other is refused in one line.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from llm_ledger.projections.sql_views import VIEWS

from .app import app
from .common import RunsDir, err, error_line, handled, out, stdout

if TYPE_CHECKING:
    from llm_ledger.projections.sql import Catalog

_VIEWS = "; ".join(f"{name} ({view.about})" for name, view in VIEWS.items())
_QUIT = {".quit", ".exit", "quit", "exit", "\\q"}
_TABLES = {".tables", "\\d", "show views"}
_HELP = {".help", "\\?", "help"}
_HELP_TEXT = ("A statement runs when ';' ends it (it may span lines; several on a line run in turn; at the end "
              "of the input one without ';' runs as it is). Commands, alone on a line before a statement: "
              ".tables (the views), .help, .quit (or Ctrl-D). Ctrl-C drops the lines typed so far.")


@app.command("sql", help=f"SQL (DuckDB) over every run of the runs directory. Views: {_VIEWS}. "
                         "QUERY is one statement (several are refused; pipe them to the prompt). "
                         "Without a query: an interactive prompt reading standard input; a statement "
                         "runs when ';' ends it (at the end of the input, one without ';' runs as it is); "
                         ".tables, .help, .quit.")
def sql(
    query: Annotated[Optional[str], typer.Argument(help="The query, one statement; none: an interactive prompt.", metavar="QUERY")] = None,
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
            failed = _prompt(catalog, form, output)
            if failed and not sys.stdin.isatty():  # a script piped in: its failure is the exit code's to say
                raise typer.Exit(1)
            return
        with handled():
            _answer(catalog, query, form, output)


def _answer(catalog: Catalog, query: str, form: str, output: str | None) -> None:
    from llm_ledger.projections.sql_output import render, write_file

    try:
        table = catalog.query(query)
    finally:
        for note in catalog.notes:
            err.print(note, markup=False, highlight=False)
        catalog.notes.clear()
    if output:
        rows = write_file(table, form, output)
        out.print(f"wrote {rows} rows to {output}", markup=False)
        return
    stdout.put_bytes(render(table, form))
    stdout.flush_bytes()


def _prompt(catalog: Catalog, form: str, output: str | None) -> int:
    """Read statements from standard input until its end or .quit (the module's docstring
    says how they are cut); an error is its one line on standard error, and the prompt goes
    on. The banner and the prompts (``ledger>``, ``...>`` within a statement) show on a
    terminal only. Returns how many lines or statements failed (piped in: exit 1 if any)."""
    from llm_ledger.projections.sql import take_statements

    interactive = sys.stdin.isatty()
    if interactive:
        err.print(f"ledger sql: views {', '.join(VIEWS)}; end a statement with ';' (.help, .tables, .quit)",
                  markup=False)
    pending = ""  # the lines of a statement no ';' has ended yet
    failed = 0
    while True:
        line = _read_line("   ...> " if pending else "ledger> ") if interactive else sys.stdin.readline()
        if line is None:  # Ctrl-C: the lines typed so far are dropped, as in psql
            pending = ""
            continue
        if not line:
            break
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are no UTF-8 (read as lone surrogates): SQL is text
            err.print("error: a line of standard input is not UTF-8 text: skipped", markup=False, highlight=False)
            failed += 1
            continue
        if not pending:
            done = _command(line.strip())
            if done == "quit":
                return failed
            if done is not None:
                failed += done == "error"
                continue
        statements, pending = take_statements(pending + line)
        for statement in statements:
            failed += not _one(catalog, statement, form, output)
    if pending:
        failed += not _one(catalog, pending, form, output)  # the end of the input ends the last statement
    return failed


def _command(word: str) -> str | None:
    """Run a line of the prompt's own: "quit" to leave, "done" or "error" when taken, None
    when the line is no command (SQL). A line starting with '.' or a backslash is always
    taken: one this prompt does not know is said in one line."""
    key = word.lower().rstrip(";").strip()
    if key in _QUIT:
        return "quit"
    if key in _TABLES:
        for name, view in VIEWS.items():
            out.print(f"{name}: {view.about}", markup=False, highlight=False)
        return "done"
    if key in _HELP:
        out.print(_HELP_TEXT, markup=False, highlight=False)
        return "done"
    if word.startswith((".", "\\")):
        err.print(f"error: {word.split()[0]}: not a command of this prompt (.tables, .help, .quit; "
                  "SQL ends with ';')", markup=False, highlight=False)
        return "error"
    return None


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


def _one(catalog: Catalog, text: str, form: str, output: str | None) -> bool:
    """Run one statement of the prompt; False when it failed (its error said in one line)."""
    from llm_ledger.ledger.errors import LedgerError

    try:
        _answer(catalog, text, form, output)
    except (LedgerError, OSError) as exc:
        message, _ = error_line(exc)
        err.print(f"error: {message}", markup=False, highlight=False)
        return False
    return True
