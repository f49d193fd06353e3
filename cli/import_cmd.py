"""`ledger import FILE --format responses-jsonl|csv|openai-batch-output --run-id ID [--dataset D]
[--model M] [--parser P]`: a run made from existing results (runners/importer.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app
from .common import RunsDir, handled, out

_FORMATS = "responses-jsonl, csv or openai-batch-output"


@app.command("import")
def import_(
    file: Annotated[str, typer.Argument(help="The file of results.", metavar="FILE")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"What FILE is: {_FORMATS}.", metavar="FORMAT")],
    run_id: Annotated[str, typer.Option("--run-id", help="The new run's id (an existing run is never added to).")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="The dataset the results answer: prompts, expected answers and metadata by id (a Batch output holds none).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="The model that answered (default: the file's).")] = None,
    parser: Annotated[str, typer.Option("--parser", help="How replies are parsed, as for `ledger run` (text, regex:P, json[:f], choice, number, yesno, module:function).")] = "text",
    runs_dir: RunsDir = "runs",
) -> None:
    """Bring existing results in as a run (responses.jsonl, CSV, OpenAI Batch output): compare, view, sql and export it like any other."""
    from llm_ledger.projections.numbers import percent
    from llm_ledger.runners.importer import import_file

    with handled():
        summary = import_file(file, fmt, runs_dir, run_id, dataset=dataset, model=model, parser=parser)
        counts = summary["counts"]
        out.print(f"imported {summary['imported']} results from {file} into run {run_id} ({summary['run_dir']}): "
                  f"{counts['done']} done, {counts['failed']} failed; accuracy {percent(summary['accuracy'])}",
                  markup=False)
