"""`ledger status RUN` and `ledger ls`: live state from other processes, cheaply. Both show
``projections.runs.run_status`` (``ls`` through ``describe``), as the viewer does."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer

from llm_ledger.ledger.layout import find_run

from .app import app

if TYPE_CHECKING:
    from llm_ledger.projections.runs import RunRow, RunStatus
from .common import RunsDir, handled, out


@app.command("status")
def status(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """Progress of a running or stopped run: from its index when current (O(1)), else from the log."""
    from llm_ledger.projections.runs import run_status

    with handled():
        info = run_status(find_run(runs_dir, run))
        if as_json:
            out.print(json.dumps(msgspec.to_builtins(info)), soft_wrap=True)
            return
        for key, value in _status_lines(info):
            out.print(f"{key:>10}: {value}", markup=False)


def _status_lines(info: RunStatus) -> list[tuple[str, object]]:
    """What a person reads: the status in words, the counts, and accuracy when it is current."""
    acc = info.accuracy
    shown = f"{acc:.1%}" if acc is not None else "-"
    if not info.summary_current and info.done:
        shown += f" (summary.json is out of date: `ledger replay {info.run_id} --rebuild` rewrites it)"
    return [("run_id", info.run_id), ("status", info.status_text), *info.counts._asdict().items(),
            ("events", info.events), ("accuracy", shown)]


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array: each run as `status --json` has it, "
                                                          "plus model, dataset and started.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """Every run under the runs directory: status, model, dataset, counts, accuracy, start.

    A table on a terminal; tab-separated lines with a header when piped (nothing cut short,
    so `ledger ls | grep completed` works)."""
    from rich.table import Table

    from llm_ledger.projections.runs import list_runs

    with handled():
        runs = list_runs(runs_dir)
        if as_json:
            sys.stdout.write(json.dumps(msgspec.to_builtins(runs)) + "\n")
            return
        header = ("run", "status", "model", "dataset", "done", "failed", "planned", "accuracy", "started")
        rows = [_ls_cells(row) for row in runs]
        if not out.is_terminal:
            for cells in (header, *rows):
                sys.stdout.write("\t".join(cells) + "\n")
            return
        table = Table(*header)
        for cells in rows:
            table.add_row(*cells)
        out.print(table)


def _ls_cells(row: RunRow) -> tuple[str, ...]:
    acc = row.accuracy
    return (row.run_id, row.status_text, row.model, os.path.basename(row.dataset), str(row.done),
            str(row.failed), str(row.planned), "-" if acc is None else f"{acc:.1%}", row.started)
