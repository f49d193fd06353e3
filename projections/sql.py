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
log, ``responses.jsonl`` and ``summary.json``, and the set of runs), so a live run is seen
afresh at each query and a finished one is not read again.

The query reads the views and nothing else: DuckDB's own file access (``COPY ... TO``,
``read_csv``, ``ATTACH``, extensions) is turned off, so a query can neither overwrite a run's
files nor bypass ``-o``, which writes through ``outputs.py`` (checked, atomic). Times are
shown in UTC.

A run that cannot be read (a damaged log) is left out of ``rows`` and ``events`` with a note
(``Catalog.notes``, said on standard error) instead of failing every query; ``runs`` shows it
as ``damaged: ...``.

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

__all__ = ["Catalog", "run_paths", "query", "one_line"]

_SETTINGS = {"enable_external_access": False}
# Typed macro overloads (DuckDB >= 1.3): the boolean one counts true as 1; any other type
# goes to ``mean``, DuckDB's other name for its own avg (a macro may not call itself).
_AVG_MACRO = "CREATE OR REPLACE TEMP MACRO avg(x BOOLEAN) AS mean(x::INTEGER), (x) AS mean(x)"
_NO_BOOLEAN_AVG = "avg(BOOLEAN)"
_CONTINUED = ",(+-*/%=<>|&"
_STARTS = frozenset({"select", "with", "from", "show", "describe", "summarize", "explain", "values", "pivot", "unpivot",
                     "table", "create", "drop", "set", "pragma"})


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
    """What a view built from this run depends on, as cheap file facts."""
    facts: list[Any] = [paths.run_id]
    for path in (paths.log, paths.responses, paths.summary):
        try:
            st = fs.stat(path)
            facts.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            facts.append(None)
    return tuple(facts)


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
        self.notes: list[str] = []  # runs a view left out, said (and emptied) by the caller

    def close(self) -> None:
        self.con.close()
        self._probe.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, text: str) -> pa.Table:
        """The result of ``text`` (one or more statements: the last one's), as an Arrow table."""
        statements = self._statements(text)
        if not statements:
            raise InputError("SQL: no statement to run")
        wanted = self.named(text, statements)
        if wanted:
            runs = run_paths(self.runs_dir)
            for name in sorted(wanted):
                self._ensure(name, runs)
        return self._execute(text)

    def _statements(self, text: str) -> list[Any]:
        import duckdb

        try:
            return list(self._probe.extract_statements(text))
        except duckdb.Error as exc:
            raise InputError(f"SQL: {one_line(exc)}") from None

    def whole(self, line: str) -> bool:
        """Whether one line is a whole statement (the prompt runs it at once): DuckDB parses it,
        and it does not end in a comma, an operator or an open parenthesis (which say more is
        coming; DuckDB accepts a trailing comma)."""
        import duckdb

        text = line.strip()
        if not text or text[-1] in _CONTINUED:
            return False
        try:
            return bool(self._probe.extract_statements(text))
        except duckdb.Error:
            return False

    @staticmethod
    def starts(line: str) -> bool:
        """Whether a line begins a statement (its first word is a statement's first keyword)."""
        words = line.split(None, 1)
        return bool(words) and words[0].lower().rstrip(";") in _STARTS

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
        """The view over every run; a run that cannot be read (a damaged log) is left out
        with a note saying so, rather than failing every query of the directory."""
        build = VIEWS[name].build
        try:
            return build(runs)
        except LedgerError:
            pass
        good = []
        for paths in runs:
            try:
                build([paths])
                good.append(paths)
            except LedgerError as exc:
                self.notes.append(f"{name}: run {paths.run_id} left out: {exc}")
        return build(good)

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


def query(runs_dir: str, text: str) -> pa.Table:
    """One query over ``runs_dir`` (``ledger sql "QUERY"``)."""
    with Catalog(runs_dir) as catalog:
        return catalog.query(text)
