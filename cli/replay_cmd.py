"""`ledger replay RUN [--rebuild] [--reparse PARSER]`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llm_ledger.ledger.layout import RunPaths, find_run

from .app import app
from .common import RunsDir, handled, out


@app.command("replay")
def replay(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Delete the output files and write them again from the whole log.")] = False,
    reparse: Annotated[Optional[str], typer.Option("--reparse", help="Parse every stored reply with this parser (no requests), then rebuild.")] = None,
    runs_dir: RunsDir = "runs",
) -> None:
    """Bring responses.jsonl, conversations/ and summary.json up to date from the log."""
    with handled():
        paths = find_run(runs_dir, run)
        from llm_ledger.projections.replay import replay as replay_run  # here: keeps every command's start light
        from llm_ledger.runners.reparse import reparse as reparse_run

        from .progress import summary_table

        summary = reparse_run(paths, reparse) if reparse else replay_run(paths, full=rebuild)
        if reparse:
            out.print(f"re-parsed {summary['reparsed']} replies with {reparse}; no request sent")
        rebuilt = summary.pop("rebuilt", {})
        merged = summary.pop("merged", 0)
        if merged:
            out.print(f"a sharded run is rebuilt from its shards: merged {merged} shards, every output written again")
        if rebuilt:
            out.print("rebuilt " + _timings(rebuilt))
        out.print(f"run {paths.run_id}", markup=False)  # whose figures the table below says
        out.print(summary_table(summary))


def _timings(rebuilt: dict[str, float]) -> str:
    """``responses.jsonl, summary.json, failures.jsonl in 1.2 s; conversations/ in 9.8 s``:
    the files of each pass over the log (projections folded together took the same time)."""
    from llm_ledger.projections.registry import output_names

    passes: dict[float, list[str]] = {}
    for name, seconds in rebuilt.items():
        passes.setdefault(seconds, []).append(name)
    return "; ".join(f"{', '.join(output_names(RunPaths(''), tuple(names)))} in {seconds:.1f} s"
                     for seconds, names in passes.items())
