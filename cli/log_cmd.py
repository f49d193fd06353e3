"""`ledger log RUN [--follow]`: every event as one JSON object per line."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer

from llm_ledger.ledger.layout import find_run

from .app import app
from .common import RunsDir, handled, stdout

_encode = msgspec.json.Encoder().encode


@app.command("log")
def log(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events as they become durable.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """Print every event the run recorded, one JSON object per line (requests, replies, failures)."""
    from llm_ledger.ledger.lock import is_locked
    from llm_ledger.ledger.reader import follow_events, iter_events

    with handled():
        paths = find_run(runs_dir, run)
        if follow:
            events = follow_events(paths.log, until=lambda: not is_locked(paths.lock))
        else:
            events = iter_events(paths.log)
        for event in events:
            stdout.put_bytes(_encode(event) + b"\n")
            if follow:
                stdout.flush_bytes()
