"""`ledger verify RUN [--repair]`: scan every frame; salvage on request."""

from __future__ import annotations

from typing import Annotated

import typer

from llm_ledger.ledger.layout import find_run

from .app import app
from .common import RunsDir, err, handled, out


@app.command("verify")
def verify(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    repair: Annotated[bool, typer.Option("--repair", help="Keep every event that can be read (renumbering those after the damage); save the damaged bytes beside the log.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """Check the run's log byte by byte; exit 1 if any part is damaged (0 after a repair)."""
    from llm_ledger.ledger.maintenance import repair_log, verify_log

    with handled():
        paths = find_run(runs_dir, run)
        report = verify_log(paths.log)
        out.print(f"{paths.log}: {report.frames} frames, {report.events} events, last seq {report.last_seq}, {report.size} bytes")
        for problem in report.problems:
            err.print(f"corrupt frame at byte offset {problem.offset}: {problem.reason}")
        if report.ok:
            out.print("ok")
            return
        if not repair:
            raise typer.Exit(1)
        fixed = repair_log(paths.log)
        out.print(
            f"repaired: kept {fixed.kept_events} events ({fixed.kept_bytes} bytes); "
            f"dropped {fixed.dropped_bytes} bytes, saved to {fixed.saved_to}"
        )
        if fixed.salvaged_events:
            out.print(f"salvaged {fixed.salvaged_events} events after the damage (now seq {fixed.renumbered_from} "
                      f"onwards); the events of the damaged frames are lost: `ledger resume` runs their items again")
