"""`ledger review RUN ITEM [--sample N] --correct|--incorrect|--clear [--note TEXT]`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.layout import find_run

from .app import app
from .common import RunsDir, handled, out


@app.command("review")
def review(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    item: Annotated[str, typer.Argument(help="Item id (the dataset's id field).")],
    sample: Annotated[int, typer.Option(help="Which sample of the item, with --samples N: 0 to N-1.", metavar="N")] = 0,
    correct: Annotated[bool, typer.Option("--correct", help="The reply is right, whatever the parser said.")] = False,
    incorrect: Annotated[bool, typer.Option("--incorrect", help="The reply is wrong, whatever the parser said.")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="Withdraw the verdict: the machine's stands again.")] = False,
    note: Annotated[str, typer.Option("--note", help="Why (kept with the verdict).", metavar="TEXT")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the appended event and both accuracies as JSON.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """A person's verdict on an item's reply, appended to the run's log as a `reviewed` event."""
    with handled():
        chosen = [name for name, on in (("correct", correct), ("incorrect", incorrect), ("cleared", clear)) if on]
        if len(chosen) != 1:
            raise InputError("give exactly one of --correct, --incorrect, --clear")
        paths = find_run(runs_dir, run)
        from llm_ledger.runners.review import review as review_item  # loads the writer: only for this command

        result = review_item(paths, item, sample, chosen[0], note)
        if as_json:
            out.print(json.dumps(result, ensure_ascii=False), soft_wrap=True, markup=False)
            return
        event, summary = result["reviewed"], result["summary"]
        said = {"correct": "correct", "incorrect": "incorrect", "cleared": "cleared (the machine's verdict stands)"}
        out.print(f"run {escape(paths.run_id)} item {escape(item)} sample {sample}: {said[event['verdict']]}, "
                  f"by {escape(event['who'])} (event #{event['seq']}, reply #{event['target_seq']})")
        out.print(f"accuracy {_pct(summary['accuracy'])} (machine), {_pct(summary['accuracy_reviewed'])} (reviewed)")


def _pct(value: float | None) -> str:
    from llm_ledger.projections import numbers as num

    return num.percent(value)
