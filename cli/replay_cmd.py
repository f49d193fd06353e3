"""`ledger replay RUN [--rebuild] [--reparse PARSER]`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llm_ledger.ledger.layout import find_run
from llm_ledger.projections.replay import replay as replay_run
from llm_ledger.runners.reparse import reparse as reparse_run

from .app import app
from .common import RunsDir, handled, out
from .progress import summary_table


@app.command("replay")
def replay(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Delete every projection and fold the whole log again.")] = False,
    reparse: Annotated[Optional[str], typer.Option("--reparse", help="Parse every stored reply with this parser (no requests), then rebuild.")] = None,
    runs_dir: RunsDir = "runs",
) -> None:
    """Bring responses.jsonl, conversations/ and summary.json up to date from the log."""
    with handled():
        paths = find_run(runs_dir, run)
        summary = reparse_run(paths, reparse) if reparse else replay_run(paths, full=rebuild)
        if reparse:
            out.print(f"re-parsed {summary['reparsed']} replies with {reparse}; no request sent")
        rebuilt = summary.pop("rebuilt", {})
        if rebuilt:
            out.print(f"rebuilt responses.jsonl and summary.json in {rebuilt.get('rows', 0):.1f} s, "
                      f"conversations/ in {rebuilt.get('conversations', 0):.1f} s")
        out.print(summary_table(summary))
