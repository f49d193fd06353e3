"""``ledger sql``: SQL over every run of a runs directory, with DuckDB.

The tables a query reads are the views of ``sql_views.VIEWS`` (``runs``, ``rows``,
``events``): Arrow tables built from the runs' projections and logs and registered in an
in-memory DuckDB connection, which scans them in place -- there is no second database to
keep in sync. Only the views a statement names are built (DuckDB's own table-name
extraction; when it cannot tell, every view whose name appears in the text), so a query of
``runs`` never reads a log's events. Nothing takes a run's writer lock: a live run is read as
it is at that moment.

A ``Catalog`` is one connection; the interactive prompt keeps one for its whole session and
rebuilds a view only when a run's files changed since it was built (size and time of its
log, index, ``responses.jsonl``, ``summary.json`` and shard logs, whether a writer holds it,
and the set of runs), so a live run is seen afresh at each query and a finished one is not
read again.

The query reads the views and nothing else: DuckDB's own file access (``COPY ... TO``,
``read_csv``, ``ATTACH``, extensions) is turned off, so a query can neither overwrite a run's
files nor bypass ``-o``, which writes through ``outputs.py`` (checked, atomic). Times are
shown in UTC.

A run that cannot be read (a damaged log) is left out of ``rows`` and ``events`` with a
warning, and a run with no rows yet (a sharded run never merged, a live run before its first
reply: ``sql_views.rows_absent``) out of ``rows`` with a note (``Catalog.notes``, said on
standard error at every query reading the view) instead of failing every query; ``runs``
lists both, with their status (a damaged one as ``damaged: ...``).

A query is one statement (``Catalog.query`` refuses several); ``take_statements`` cuts the
prompt's input at each ';' that DuckDB's tokenizer sees outside strings and comments.

``avg`` of a boolean (``avg(correct)``: the share of true) works, although DuckDB has no
``avg(BOOLEAN)``: a statement failing on just that is run again with a temporary macro
``avg`` that counts true as 1 (for other types it is DuckDB's ``mean``), dropped after it; as
a macro it takes no ``DISTINCT`` or ``FILTER``: write ``avg(correct::int) FILTER (...)`` there.

Errors (a syntax error, an unknown table or column) are ``InputError``: one line, exit 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError, LedgerError
from llm_ledger.ledger.layout import RunPaths

from .sql_views import VIEWS

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Catalog", "run_paths", "query", "one_line", "take_statements"]

_SETTINGS = {"enable_external_access": False}
# Typed macro overloads (DuckDB >= 1.3): the boolean one counts true as 1; any other type
# goes to ``mean``, DuckDB's other name for its own avg (a macro may not call itself).
_AVG_MACRO = "CREATE OR REPLACE TEMP MACRO avg(x BOOLEAN) AS mean(x::INTEGER), (x) AS mean(x)"
_NO_BOOLEAN_AVG = "avg(BOOLEAN)"


def run_paths(runs_dir: str) -> list[RunPaths]:
    """Every run under ``runs_dir`` (a directory holding an ``events.log``), by name."""
    if not os.path.isdir(runs_dir):
        raise InputError(f"{runs_dir}: no such directory (--runs-dir names the folder holding the runs)")
    names = sorted(fs.listdir(runs_dir))
    return [RunPaths(os.path.join(runs_dir, n)) for n in names if os.path.isfile(os.path.join(runs_dir, n, "events.log"))]


def one_line(exc: BaseException) -> str:
    """DuckDB's message on one line: its first lines, without the caret drawing under the query."""
    kept: list[str] = []
    for line in str(exc).splitlines():
        if line.startswith("LINE ") or line.strip().startswith("^"):
            break
        if line.strip():
            kept.append(line.strip())
    return " ".join(kept) or type(exc).__name__


def _stamp(paths: RunPaths) -> tuple[Any, ...]:
    """What a view built from this run depends on, as cheap file facts: what ``ledger ls`` and
    the viewer watch (``runs.files_version``: the log, index and summary, a sharded run's shard
    logs, and whether a writer holds each -- a run whose writer died, or whose shards go on
    while its top level's files stay still, is not the run it was), and ``responses.jsonl``."""
    from .runs import files_version

    try:
        st = fs.stat(paths.responses)
        rows: Any = (st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        rows = None
    return (paths.run_id, rows, *files_version(paths))


class Catalog:
    """One DuckDB connection over the runs of ``runs_dir``, its views built on demand."""

    def __init__(self, runs_dir: str) -> None:
        import duckdb

        self.runs_dir = runs_dir
        run_paths(runs_dir)  # a wrong --runs-dir is said before anything else
        self.con = duckdb.connect(":memory:", config=_SETTINGS)
        try:
            self.con.execute("SET TimeZone = 'UTC'")
        except duckdb.Error:  # a build without time zones (no ICU) shows UTC anyway
            pass
        self._probe = duckdb.connect(":memory:", config=_SETTINGS)  # table names are read on an empty catalog
        self._built: dict[str, tuple[Any, ...]] = {}  # view -> the stamps it was built from
        self._macro = False  # the avg macro is defined (for one statement)
        self._left_out: dict[str, list[str]] = {}  # view -> the runs its last build left out, said
        self.notes: list[str] = []  # lines for standard error ("warning: ...", "note: ..."), said and emptied by the caller

    def close(self) -> None:
        self.con.close()
        self._probe.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, text: str) -> pa.Table:
        """The result of ``text``, ONE statement, as an Arrow table. Several are refused: a
        result is one table (one JSON array, one ``-o`` file), and printing only the last
        one's would hide the others; the prompt runs several in turn (``take_statements``).
        Every run a view it reads leaves out is in ``notes``, at each query that reads it."""
        statements = self._statements(text)
        if not statements:
            raise InputError("SQL: no statement to run")
        if len(statements) > 1:
            raise InputError(f"SQL: {len(statements)} statements in one query: give one (`ledger sql` reading "
                             "them from standard input runs several, each ended by ';', in turn)")
        wanted = self.named(text, statements)
        if wanted:
            runs = run_paths(self.runs_dir)
            for name in sorted(wanted):
                self._ensure(name, runs)
                self.notes += self._left_out[name]
        return self._execute(text)

    def _statements(self, text: str) -> list[Any]:
        import duckdb

        try:
            return list(self._probe.extract_statements(text))
        except duckdb.Error as exc:
            raise InputError(f"SQL: {one_line(exc)}") from None

    def named(self, text: str, statements: Sequence[Any]) -> set[str]:
        """The views the statements read."""
        import duckdb

        names: set[str] = set()
        try:
            for statement in statements:
                names |= {n.rsplit(".", 1)[-1].strip('"').lower() for n in self._probe.get_table_names(statement.query)}
        except duckdb.Error:  # it binds table functions too (read_parquet ...): when in doubt, by the text
            return {v for v in VIEWS if re.search(rf"\b{v}\b", text, re.IGNORECASE)}
        return names & VIEWS.keys()

    def _ensure(self, name: str, runs: Sequence[RunPaths]) -> None:
        stamps = tuple(_stamp(p) for p in runs)
        if self._built.get(name) == stamps:
            return
        table = self._build(name, runs)
        if name in self._built:
            self.con.unregister(name)
        self.con.register(name, table)
        self._built[name] = stamps

    def _build(self, name: str, runs: Sequence[RunPaths]) -> pa.Table:
        """The view over every run; a run with nothing for it yet (``View.absent``), or one
        that cannot be read (a damaged log), is left out with a note saying so, rather than
        failing every query of the directory."""
        view, notes = VIEWS[name], []
        self._left_out[name] = notes
        if view.absent is not None:
            runs, notes[:] = self._present(name, runs)
        try:
            return view.build(runs)
        except LedgerError:
            pass
        good = []
        for paths in runs:
            try:
                view.build([paths])
                good.append(paths)
            except LedgerError as exc:
                notes.append(f"warning: {name}: run {paths.run_id} left out: {exc}")
        return view.build(good)

    @staticmethod
    def _present(name: str, runs: Sequence[RunPaths]) -> tuple[list[RunPaths], list[str]]:
        """The runs that have something for view ``name``, and a note for each that has not."""
        absent = VIEWS[name].absent
        assert absent is not None
        kept, notes = [], []
        for paths in runs:
            try:
                why = absent(paths)
            except LedgerError as exc:
                why, level = f"{name}: run {paths.run_id} left out: {exc}", "warning"
            else:
                level = "note"
            if why is None:
                kept.append(paths)
            else:
                notes.append(f"{level}: {why}")
        return kept, notes

    def _execute(self, text: str) -> pa.Table:
        import duckdb
        import pyarrow as pa

        try:
            relation = self.con.sql(text)
            return relation.to_arrow_table() if relation is not None else pa.table({})
        except duckdb.Error as exc:
            if _NO_BOOLEAN_AVG in str(exc) and not self._macro:
                return self._with_boolean_avg(text)
            raise InputError(f"SQL: {one_line(exc)}") from None

    def _with_boolean_avg(self, text: str) -> pa.Table:
        """``text`` again with the ``avg`` macro, dropped afterwards: only a statement that
        needs it does without the aggregate's DISTINCT and FILTER."""
        self.con.execute(_AVG_MACRO)
        self._macro = True
        try:
            return self._execute(text)
        finally:
            self._macro = False
            self.con.execute("DROP MACRO IF EXISTS temp.avg")


def take_statements(text: str) -> tuple[list[str], str]:
    """The statements ``text`` ends with ';' (each with its ';'), and what follows the last
    one ("" when it is only blanks and finished comments): the prompt runs the first and keeps
    the rest until a ';' ends it. DuckDB's tokenizer tells a ';' that ends a statement from one
    in a string, a quoted name or a comment."""
    import duckdb

    cut = [pos + 1 for pos, kind in duckdb.tokenize(text)
           if kind == duckdb.token_type.operator and text[pos] == ";"]
    pieces = [text[a:b] for a, b in zip([0, *cut], cut)]
    rest = text[cut[-1]:] if cut else text
    return [p for p in pieces if _meaningful(p)], rest if _meaningful(rest) else ""


def _meaningful(text: str) -> bool:
    """Whether ``text`` holds more than blanks, ';' and comments (an unfinished ``/*``
    comment counts: what follows it is still to come)."""
    import duckdb

    tokens = duckdb.tokenize(text)
    ends = [pos for pos, _ in tokens[1:]] + [len(text)]
    for (pos, kind), end in zip(tokens, ends):
        piece = text[pos:end].strip()
        if kind != duckdb.token_type.comment:
            if piece != ";":
                return True
        elif piece.startswith("/*") and not piece.endswith("*/"):
            return True
    return False


def query(runs_dir: str, text: str) -> pa.Table:
    """One query over ``runs_dir`` (``ledger sql "QUERY"``)."""
    with Catalog(runs_dir) as catalog:
        return catalog.query(text)
