"""`ledger status RUN` and `ledger ls`: live state from other processes, cheaply. Both show
``projections.runs.run_status`` (``ls`` through ``describe``), as the viewer does."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Optional

import msgspec
import typer

from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.layout import find_run
from llm_ledger.projections.numbers import count, ms, percent, usd

from .app import app
from .common import RunsDir, handled, out, resume_line

if TYPE_CHECKING:
    from rich.table import Table

    from llm_ledger.ledger.layout import RunPaths
    from llm_ledger.projections.runs import RunRow, RunStatus
    from llm_ledger.runners.config import RunConfig


@app.command("status")
def status(
    run: Annotated[str, typer.Argument(help="Run id (or run directory), or an experiment's name (a line per arm).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """Progress of a run, running or stopped: its status, counts and accuracy; instant even on a large run."""
    from llm_ledger.projections.batches import read_batches
    from llm_ledger.projections.runs import read_summary, run_status

    from .experiment_cmd import experiment_status, is_experiment

    if is_experiment(runs_dir, run):  # an experiment's name: a line per arm
        with handled():
            experiment_status(run, runs_dir, as_json)
        return
    with handled():
        paths = find_run(runs_dir, run)
        info = run_status(paths)
        config = _config(paths)
        stale = _catch_up_batches(paths) if config.runner == "batch" and info.status != "running" else ""
        batches = read_batches(paths) if config.runner == "batch" else []  # another run's has none to read
        if as_json:
            extra = {"batches": batches} if batches else {}  # a --batch run's chunks (batches.json), beside RunStatus
            out.print(json.dumps({**msgspec.to_builtins(info), **extra}), soft_wrap=True)
            return
        summary = read_summary(paths) if info.summary_current else {}
        from llm_ledger.projections.merge_status import unmerged

        stale_merge = unmerged(paths) if info.source == "shards" and not info.summary_current else ""
        for key, value in _status_lines(info, summary, stale_merge):
            out.print(f"{key:>10}: {value}", markup=False)
        for line in batch_lines(batches, simulator_gone=bool(batches) and info.status != "running" and config.embedded):
            out.print(line, markup=False)
        if stale:
            out.print(f"{'':>10}  (batches.json could not be brought up to date: {stale}; it may lag the log)", markup=False)
        unfinished = info.counts.pending + info.counts.in_flight
        if info.status in RESUMABLE or (info.status != "running" and unfinished):
            out.print(resume_line(paths), markup=False)


SHOWN_BATCHES = 20  # the open ones first, then the latest done


def batch_lines(batches: list[dict], now: float | None = None, *, simulator_gone: bool = False) -> list[str]:
    """One line per Batch API chunk (batches.json): id, state, counts, age, time to expiry.
    ``simulator_gone``: the run's endpoint is the built-in simulator and no session runs, so
    its open batches ended with the last session (it keeps none): said, not shown as open."""
    import time

    if not batches:
        return []
    now = time.time() if now is None else now
    open_ = [b for b in batches if b["status"] != "done"]
    shown = (open_ + [b for b in reversed(batches) if b["status"] == "done"])[:SHOWN_BATCHES]
    opened = f"{count(len(open_))} ended with the built-in simulator's session: `ledger resume` sends their " \
             "requests again" if simulator_gone and open_ else f"{count(len(open_))} open"
    lines = [f"{'batches':>10}: {count(len(batches))} ({opened})"]
    for b in shown:
        state = b["status"] if b["status"] != "done" else f"{b['final_status']}, recorded"
        if simulator_gone and b["status"] != "done":
            state = f"{state} when its session ended, gone"
        since = b["created_at"] or b["submitted_at"] or b["planned_at"]
        left = b["expires_at"] - now if b["status"] != "done" and b["expires_at"] and not simulator_gone else None
        expiry = "" if left is None else f", expires in {_duration(left)}" if left > 0 else ", past its expiry"
        lines.append(f"  chunk {b['chunk']}: {b['batch_id'] or '(not submitted)'} {state}: {count(b['completed'])} done, "
                     f"{count(b['failed'])} failed of {count(b['total'])}{_unresolved(b)}, age {_duration(now - since)}{expiry}")
    if len(batches) > len(shown):
        lines.append(f"  ... and {count(len(batches) - len(shown))} more in batches.json")
    return lines


def _config(paths: "RunPaths") -> "RunConfig":
    """The run's config (run_started); the defaults for a log without one."""
    from llm_ledger.projections.runs import first_event
    from llm_ledger.runners.config import RunConfig

    started = first_event(paths)
    return RunConfig.from_dict(started.config) if started is not None else RunConfig()


def _catch_up_batches(paths: "RunPaths") -> str:
    """batches.json as of the whole log (a stopped run -- one killed before its projector
    wrote the file last -- has nobody else to write it). Returns why it could not, or ""."""
    from llm_ledger.ledger.errors import LedgerError
    from llm_ledger.projections.batches import BATCHES
    from llm_ledger.projections.projector import refresh

    try:
        refresh(paths, (BATCHES,))
    except (LedgerError, OSError) as exc:
        return " ".join(str(exc).split())
    return ""


def _unresolved(b: dict) -> str:
    """A done chunk's requests left without a result: failed, or sent again in a later chunk."""
    n = b.get("unresolved") or 0
    return f", {count(n)} without a result" if b["status"] == "done" and n else ""


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# Stopped with work left: Ctrl-C, an outage (exit 75), a crash or kill, an error.
RESUMABLE = ("interrupted", "error", "completed_with_pending")


def _status_lines(info: RunStatus, summary: dict, unmerged: str = "") -> list[tuple[str, str]]:
    """What a person reads: the status in words, the counts, and the figures of summary.json
    when it vouches for this log (accuracy; cost and median latency when known). ``unmerged``:
    why a sharded run's merged figures are not the run (merge_status.unmerged)."""
    shown = percent(info.accuracy)
    if unmerged:
        shown += f" ({unmerged})"
    elif not info.summary_current and info.done:
        shown += f" (summary.json is out of date: `ledger replay {info.run_id} --rebuild` rewrites it)"
    lines = [("run_id", info.run_id), ("status", info.status_text),
             *((name, count(n)) for name, n in info.counts._asdict().items()), ("events", count(info.events)),
             ("accuracy", shown)]
    if summary.get("cost_usd") is not None:
        lines.append(("cost", usd(summary["cost_usd"])))
    if (summary.get("latency_s") or {}).get("p50") is not None:
        lines.append(("latency", f"p50 {ms(summary['latency_s']['p50'])}, p90 {ms(summary['latency_s'].get('p90'))}"))
    return lines


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array, newest run first: each run as "
                                                          "`status --json` has it, plus model, dataset and start time.")] = False,
    experiment: Annotated[Optional[str], typer.Option("--experiment", help="Only the arms of this experiment (`ledger run eval.toml`).")] = None,
    runs_dir: RunsDir = "runs",
) -> None:
    """List the runs, newest first: status, model, dataset, counts, accuracy, start time.

    A table on a terminal; tab-separated lines with a header when piped (nothing cut short,
    so `ledger ls | grep completed` works)."""
    from llm_ledger.projections.runs import list_runs

    with handled():
        runs = newest_first(list_runs(runs_dir))
        if experiment is not None:
            runs = [r for r in runs if r.experiment == experiment]
            if not runs:
                raise InputError(f"no experiment {experiment!r} under {runs_dir} (no run {experiment}.<arm> records it)")
        if as_json:
            sys.stdout.write(json.dumps(msgspec.to_builtins(runs)) + "\n")
            return
        header = ("run", "status", "model", "dataset", "done", "failed", "planned", "accuracy", "started")
        rows = [_ls_cells(row, out.is_terminal) for row in runs]
        if not out.is_terminal:
            for cells in (header, *rows):
                sys.stdout.write("\t".join(cells) + "\n")
            return
        out.print(_ls_table(header, rows, out.width))


def newest_first(runs: list[RunRow]) -> list[RunRow]:
    """By start time, newest first (a run id breaks a tie: ids begin with the time)."""
    return sorted(runs, key=lambda r: (r.started, r.run_id), reverse=True)


_DROPPED_FIRST = ("started", "dataset", "model", "planned")  # when the terminal is too narrow for all


def _ls_table(header: tuple[str, ...], rows: list[tuple[str, ...]], width: int) -> Table:
    """The columns that fit ``width`` (the least needed are left out first); run ids are
    never cut: their column takes its full width, and only a long status wraps."""
    from rich.table import Table

    keep = list(range(len(header)))
    widths = [max(len(c) for c in (name, *(r[i] for r in rows))) for i, name in enumerate(header)]
    for name in _DROPPED_FIRST:
        if sum(widths[i] + 2 for i in keep) - 2 <= width:
            break
        keep.remove(header.index(name))
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for i in keep:
        name = header[i]
        table.add_column(name, justify="right" if name in ("done", "failed", "planned", "accuracy") else "left",
                         no_wrap=name != "status", min_width=widths[i] if name != "status" else len(name))
    for cells in rows:
        table.add_row(*(cells[i] for i in keep))
    return table


def _ls_cells(row: RunRow, for_people: bool) -> tuple[str, ...]:
    """Counts with thousands separators on a terminal; bare integers for a program reading a pipe."""
    number = count if for_people else str
    return (row.run_id, row.status_text, row.model, os.path.basename(row.dataset), number(row.done),
            number(row.failed), number(row.planned), percent(row.accuracy), row.started)
