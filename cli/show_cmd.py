"""`ledger show RUN ITEM [--sample N]`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from llm_ledger.ledger.layout import find_run

from .app import app
from .common import RunsDir, handled, out


@app.command("show")
def show(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    item: Annotated[str, typer.Argument(help="Item id.")],
    sample: Annotated[int, typer.Option(help="Sample number.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """The conversation of one item and every attempt made for it."""
    from llm_ledger.projections.show import item_story

    with handled():
        story = item_story(find_run(runs_dir, run), item, sample)
        if as_json:
            out.print(json.dumps(story, ensure_ascii=False), soft_wrap=True, markup=False)
            return
        conversation = story["conversation"]
        if conversation:
            for m in conversation["messages"]:
                out.print(f"[bold]{m['role']}[/bold]: {escape(str(m['content']))}")
            out.print(f"parsed: {conversation['parsed']!r}  expected: {conversation['expected']!r}  correct: {conversation['correct']}")
        for e in story["events"]:
            out.print(escape(_line(e)))


def _line(e: dict) -> str:
    head = f"#{e['seq']} {e['type']} turn {e.get('turn', 0)}"
    match e["type"]:
        case "started":
            return f"{head} attempt {e['attempt']}"
        case "response":
            return f"{head} attempt {e['attempt']}: {e['latency']:.3f}s {e['finish_reason']} usage {e['usage']}"
        case "failed":
            return f"{head} attempt {e['attempt']}: {e['error_type']} {e['message']} (HTTP {e['status']}) retryable={e['retryable']} final={e['final']}"
        case _:
            return f"{head} {e.get('parser')}: ok={e.get('ok')} value={e.get('value')!r} {e.get('error') or ''}"
