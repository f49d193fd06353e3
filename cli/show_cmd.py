"""`ledger show RUN ITEM [--sample N]`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from llm_ledger.ledger.layout import find_run

from .app import app
from .common import RunsDir, err, handled, out


@app.command("show")
def show(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    item: Annotated[str, typer.Argument(help="Item id (the dataset's id field).")],
    sample: Annotated[int, typer.Option(help="Which sample of the item, with --samples N: 0 to N-1.", metavar="N")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """One item: its conversation, its answer, and each request made for it."""
    from llm_ledger.projections.show import item_story

    with handled():
        story = item_story(find_run(runs_dir, run), item, sample)
        if as_json:
            out.print(json.dumps(story, ensure_ascii=False), soft_wrap=True, markup=False)
            return
        _print_story(story)


def _print_story(story: dict) -> None:
    """The conversation (role, then its content), the answer, then a line per request."""
    from llm_ledger.projections.show import attempt_lines, conversation_messages, message_text

    for m in conversation_messages(story):
        text = message_text(m.get("content")).replace("\n", "\n  ")
        out.print(f"[bold]{escape(str(m.get('role')))}[/bold]: {escape(text)}")
    conversation = story["conversation"]
    if conversation:
        out.print(_answer(conversation))
    review = story.get("review")
    if review and review["verdict"] != "cleared":
        how = "stale (given for another reply; not applied)" if review["stale"] else review["verdict"]
        note = f": {review['note']}" if review["note"] else ""
        out.print(f"reviewed: {how}, by {escape(review['who'])}{escape(note)}")
    for line in attempt_lines(story["events"]):
        style = {"ok": "green", "failed": "red"}.get(line.outcome, "yellow")
        out.print(f"{escape(line.label)}: [{style}]{line.outcome}[/{style}], {escape(line.details)}")
    for note in story.get("notes", []):
        err.print(f"note: {note}", markup=False, highlight=False)


def _answer(conversation: dict) -> str:
    """``answer: Cairo   expected: Cairo   right`` (no verdict without an expected answer)."""
    from llm_ledger.projections.compare import as_text

    parsed, expected = as_text(conversation.get("parsed")), as_text(conversation.get("expected"))
    said = "none" if parsed is None else escape(parsed)  # why not: the lines below say
    if expected is None:
        return f"answer: {said}"
    verdict = "[green]right[/green]" if conversation.get("correct") else "[red]wrong[/red]"
    return f"answer: {said}   expected: {escape(expected)}   {verdict}"
