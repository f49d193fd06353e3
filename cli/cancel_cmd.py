"""`ledger cancel RUN`: cancel a --batch run's open batches at the provider."""

from __future__ import annotations

from typing import Annotated

import typer

from llm_ledger.ledger.layout import find_run

from .app import app
from .common import RunsDir, handled, out


@app.command("cancel")
def cancel(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    runs_dir: RunsDir = "runs",
) -> None:
    """Cancel the open batches of a --batch run (stop the run first); `ledger resume` then records what they completed."""
    from llm_ledger.runners.batch_cancel import cancel_run

    with handled():
        paths = find_run(runs_dir, run)
        lines = cancel_run(paths)
        if not lines:
            out.print(f"run {paths.run_id} has no open batches: nothing to cancel", markup=False)
            return
        for line in lines:
            out.print(f"chunk {line.chunk}: {line.batch_id}: {line.status}", markup=False)
        asked = sum(not line.status.startswith("not ") for line in lines)
        out.print(f"{asked} of {len(lines)} open batches asked to cancel; recorded in the log"
                  + (f"; `ledger resume {paths.run_id}` records what they completed" if asked else ""), markup=False)
