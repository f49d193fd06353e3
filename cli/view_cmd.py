"""`ledger view [RUN...] [--port N] [--host H] [--review]`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from .app import app
from .common import RunsDir, err, handled, out


@app.command("view")
def view(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Runs to show side by side (default: a list of every run); an experiment's name stands for its arms.", metavar="RUN")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", help="Open this experiment, its arms side by side.")] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback lets others read your runs.")] = "127.0.0.1",
    review: Annotated[bool, typer.Option("--review", help="Review mode: mark answers correct or incorrect (appends `reviewed` events).")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """A local web page: runs side by side, disagreements marked, every attempt; read-only unless --review."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/yellow] listening on {escape(host)}: anyone who can reach it can read these runs"
                  + (" and review them" if review else ""))
    from llm_ledger.viewer import serve  # starlette and uvicorn load only for this command

    with handled():
        if experiment:  # named as an experiment: said as one when there is none
            from llm_ledger.projections.experiments import require_arms

            require_arms(runs_dir, experiment)
        serve(runs_dir, [*(runs or []), *([experiment] if experiment else [])], host=host, port=port, review=review,
              on_ready=lambda url: out.print(f"ledger view: {url}  ({'review mode; ' if review else ''}Ctrl-C to stop)", markup=False))
