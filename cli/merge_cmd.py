"""`ledger merge RUN`, and what `ledger run/resume` print for a sharded run (--shards N)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.layout import find_run
from llm_ledger.projections.numbers import count, plural

from .app import app
from .common import RunsDir, err, handled, out, resume_line, run_command

if TYPE_CHECKING:
    from llm_ledger.runners.prepare import Prepared
    from llm_ledger.runners.shard_worker import ShardSpec
    from llm_ledger.runners.shards import ShardedRun


@app.command("merge")
def merge(
    run: Annotated[str, typer.Argument(help="Run id (or run directory) of a sharded run (--shards N).")],
    runs_dir: RunsDir = "runs",
) -> None:
    """Merge a sharded run's shards into one run (a sharded `run`/`resume` does it at its end).

    Refuses (exit 2, nothing changed) a missing shard, a shard of another config or dataset, and an item present in two shards. Every figure is recomputed on the pooled rows."""
    from llm_ledger.projections.merge import merge as merge_run

    from .progress import summary_table

    with handled():
        paths = find_run(runs_dir, run)
        report = merge_run(paths)
        out.print(f"merged {plural(report.shards, 'shard')} of run {report.run_id}: {count(report.events)} events",
                  markup=False)
        out.print(summary_table(report.summary))
        out.print(f"outputs: {paths.dir}", markup=False)


def execute_sharded(prepared: Prepared) -> int:
    """`ledger run --shards N` / `ledger resume` of a sharded run: header, the shards, the
    merged summary, what is left and how to continue; returns the exit code."""
    from llm_ledger.runners.shards import run_sharded

    with handled():
        result = run_sharded(prepared, on_started=lambda specs: _header(prepared, specs),
                             on_tick=_ticker(prepared) if err.is_terminal else None)
    if err.is_terminal:
        err.print("\r\x1b[K", end="", markup=False, highlight=False)
    return _report(prepared, result)


def _ticker(prepared: Prepared):
    """A line on the terminal, once a second: the shards' live states, summed."""
    import time

    from llm_ledger.projections.runs import run_status

    last = [0.0]

    def tick() -> None:
        if time.monotonic() - last[0] < 1.0:
            return
        last[0] = time.monotonic()
        try:
            info = run_status(prepared.paths)
        except (LedgerError, OSError):  # a shard's files between two states: the next tick says it
            return
        err.print(f"\r\x1b[K{info.done:,} / {info.planned:,} done, {info.failed:,} failed, {info.in_flight:,} in flight",
                  end="", markup=False, highlight=False)

    return tick


def _header(prepared: Prepared, specs: list[ShardSpec]) -> None:
    from llm_ledger.projections.runs import run_status

    from .run_cmd import print_run_lines

    config = prepared.config
    print_run_lines(prepared)
    running = ", ".join(str(s.index) for s in specs) or "none"
    out.print(f"shards {config.shards} ({config.workers} workers); running now: {running}", markup=False)
    if prepared.resume:
        info = run_status(prepared.paths)
        left = info.planned - info.done - (info.failed if prepared.skip_failed else 0)
        out.print(f"resume: {info.done:,} done, {info.failed:,} failed{' (skipped)' if prepared.skip_failed else ''}, "
                  f"{info.pending:,} never started, {info.in_flight:,} in flight at the crash (sent again); "
                  f"{left:,} to send", markup=False)


def _report(prepared: Prepared, result: ShardedRun) -> int:
    from .exit_codes import exit_code
    from .progress import summary_table

    paths = prepared.paths
    for outcome in result.outcomes:
        for line in ([outcome.error] if outcome.error else []) + outcome.internal:
            err.print(f"shard {outcome.index}: {line}" if not line.startswith("shard ") else line, markup=False, highlight=False)
    if result.merge_error:
        err.print(f"error: not merged: {result.merge_error}", markup=False, highlight=False)
        err.print(resume_line(paths), markup=False, highlight=False)
        return 1
    try:
        summary = _summary(paths)
    except (OSError, ValueError) as exc:  # no figure can be vouched for: one line, never a traceback or a 0
        detail = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else f"not JSON ({exc})"
        err.print(f"error: run {paths.run_id}: summary.json unreadable: {detail}; `{run_command('replay', paths, '--rebuild')}` "
                  "rewrites it", markup=False, highlight=False)
        return 1
    out.print(summary_table(summary))
    out.print(f"outputs: {paths.dir}", markup=False)
    stop = next((o.stop_reason for o in result.outcomes if o.stop_reason.startswith("endpoint down")), "")
    failed_shard = any(o.error for o in result.outcomes)
    code = 1 if failed_shard else exit_code(result.reason, stop, False, summary)
    pending = (summary.get("counts") or {}).get("pending") or 0
    reason = _pending_line(prepared, result, pending, code)
    if reason:
        err.print(reason, markup=False, highlight=False)
    if pending or code in (75, 130) or failed_shard:
        err.print(resume_line(paths), markup=False, highlight=False)
    return code


def _pending_line(prepared: Prepared, result: ShardedRun, pending: int, code: int) -> str:
    """Items left pending, and why, in the words `ledger run` uses (run_cmd.end_lines, whose
    session a sharded run does not have: its shards' stop reasons stand in for it)."""
    from .run_cmd import batches_left

    items = f"{plural(pending, 'item')} pending"
    batch = prepared.config.runner == "batch"
    stops = [o.stop_reason for o in result.outcomes]
    errors = [f"shard {o.index}, said above" for o in result.outcomes if o.error]
    errors += [f"shard {o.index}: {s[len('error: '):]}" for o, s in zip(result.outcomes, stops) if s.startswith("error")]
    if any(s.startswith("batch window") for s in stops):
        return f"--batch-window passed: {items}{batches_left(prepared)}"
    if code == 75:
        return f"every endpoint stayed down past --give-up-after; {items}"
    if code == 130 or result.reason == "interrupted":
        return f"interrupted; {items}{batches_left(prepared) if batch and pending else ''}"
    if pending and errors:
        return f"stopped by an error ({'; '.join(errors)}); {items}"
    if pending:
        return f"the session ended with {items} (neither done nor failed)"
    return ""


def _summary(paths) -> dict:
    with fs.open_file(paths.summary, "rb") as f:
        return json.loads(f.read())
