"""`ledger import FILE [--format responses-jsonl|csv|openai-batch-output] --run-id ID [--dataset D]
[--model M] [--parser P]`: a run made from existing results (runners/importer.py).

``--format`` may be left out only where the file's suffix says it without doubt: ``.csv`` is
csv (and the output line says the format was taken from the suffix). A ``.jsonl`` file is
either ledger's responses or a Batch output file, so it needs ``--format``; leaving it out is
a one-line error naming the formats (exit 2), not Typer's boxed usage message; so is a missing
FILE or ``--run-id`` (every error is one line)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from .app import app
from .common import RunsDir, handled, out

_FORMATS = "responses-jsonl, csv or openai-batch-output"
_BY_SUFFIX = {".csv": "csv"}  # the suffixes that name one format only


def _format(file: str, fmt: str | None) -> tuple[str, str]:
    """The format, and how it was chosen ('' when given)."""
    from llm_ledger.ledger.errors import InputError

    if fmt is not None:
        return fmt, ""
    suffix = os.path.splitext(file)[1].lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix], f" (as {_BY_SUFFIX[suffix]}: its {suffix} suffix)"
    raise InputError(f"{file}: say what it is with --format: {_FORMATS} (only a .csv file's format is "
                     "taken from its name)")


@app.command("import")
def import_(
    file: Annotated[Optional[str], typer.Argument(help="The file of results (required).", metavar="FILE", show_default=False)] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="The new run's id (required; an existing run is never added to).", metavar="ID")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help=f"What FILE is: {_FORMATS}. May be left out for a .csv file (csv); a .jsonl file needs it.", metavar="FORMAT")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="The dataset the results answer: prompts, expected answers and metadata by id (a Batch output holds none).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="The model that answered (default: the file's).")] = None,
    parser: Annotated[str, typer.Option("--parser", help="How replies are parsed, as for `ledger run` (text, regex:P, json[:f], choice, number, yesno, module:function).")] = "text",
    runs_dir: RunsDir = "runs",
) -> None:
    """Bring existing results in as a run (responses.jsonl, a `ledger export` jsonl/csv, any CSV, OpenAI Batch output): compare, view, sql and export it like any other."""
    from llm_ledger.projections.numbers import percent
    from llm_ledger.runners.importer import import_file

    from llm_ledger.ledger.errors import InputError

    with handled():
        if file is None:
            raise InputError(f"ledger import: name the FILE of results to import ({_FORMATS})")
        if run_id is None:
            raise InputError(f"{file}: name the new run with --run-id ID")
        fmt, chosen = _format(file, fmt)
        summary = import_file(file, fmt, runs_dir, run_id, dataset=dataset, model=model, parser=parser)
        counts = summary["counts"]
        out.print(f"imported {summary['imported']} results from {file}{chosen} into run {run_id} ({summary['run_dir']}): "
                  f"{counts['done']} done, {counts['failed']} failed; accuracy {percent(summary['accuracy'])}",
                  markup=False)
