"""`ledger compare RUN_A RUN_B ... [--only-diff] [--json] [-o FILE.csv]`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from llm_ledger.ledger.layout import find_run

from .app import app

if TYPE_CHECKING:
    from llm_ledger.projections.compare import Comparison
from .common import RunsDir, handled, out


@app.command("compare")
def compare(
    runs: Annotated[list[str], typer.Argument(help="Two or more runs (ids or run directories).", metavar="RUN_A RUN_B ...")],
    only_diff: Annotated[bool, typer.Option("--only-diff", help="List the items whose parsed answers differ.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Write the per-item table to this CSV file.")] = None,
    runs_dir: RunsDir = "runs",
) -> None:
    """Accuracy with 95% intervals, agreement and McNemar's exact test, paired over shared items."""
    from llm_ledger.projections.compare import compare_runs, write_csv
    from llm_ledger.projections.outputs import check_output_path

    with handled():
        result = compare_runs([find_run(runs_dir, run) for run in runs])
        written = write_csv(result, check_output_path(output), only_diff) if output else None
        if as_json:
            out.print(json.dumps(result.to_json(only_diff), ensure_ascii=False), soft_wrap=True, markup=False)
        elif only_diff:
            _print_diff(result)
        else:
            _print_stats(result)
        if written is not None and not as_json:
            out.print(f"wrote {written} rows to {escape(output or '')}")


def _print_coverage(result: Comparison) -> None:
    """The sentence the viewer's banner says too (projections.compare.coverage)."""
    cover = result.coverage
    out.print(cover.message() + ("" if cover.complete else f"; compared on the {cover.shared} shared"), markup=False)


def _print_stats(result: Comparison) -> None:
    from rich.table import Table

    _print_coverage(result)
    table = Table("run", "model", "scored", "correct", "accuracy", "95% CI", title="accuracy on shared items")
    for r in result.runs:
        acc, ci = r["accuracy"], r["ci95"]
        table.add_row(escape(r["run_id"]), escape(r["model"]), str(r["scored"]), str(r["correct"]),
                      "-" if acc is None else f"{acc:.1%}", "-" if ci is None else f"{ci[0]:.1%}-{ci[1]:.1%}")
    out.print(table)
    matrix = Table("", *(escape(r) for r in result.run_ids), title="agreement (same parsed answer)")
    for run, row in zip(result.run_ids, result.agreement):
        matrix.add_row(escape(run), *(f"{v:.1%}" for v in row))
    out.print(matrix)
    pairs = Table("A", "B", "agree", "only A right", "only B right", "p", "p < 0.05", title="paired differences (McNemar exact test)")
    for p in result.pairs:
        pairs.add_row(escape(p["a"]), escape(p["b"]), f"{p['agreement']:.1%}", str(p["only_a_correct"]), str(p["only_b_correct"]),
                      f"{p['p_value']:.4g}", "[bold]yes[/bold]" if p["significant"] else "no")
    out.print(pairs)


def _print_diff(result: Comparison) -> None:
    from rich.table import Table

    from llm_ledger.projections.compare import as_text

    diffs = result.differences()
    _print_coverage(result)
    table = Table("item", "sample", "expected", *(escape(r) for r in result.run_ids))
    for d in diffs:
        cells = [_answer(d["answers"][r], d["correct"][r]) for r in result.run_ids]
        table.add_row(escape(d["item_id"]), str(d["sample"]), escape(str(as_text(d["expected"]))), *cells)
    out.print(table)
    out.print(f"{len(diffs)} of {len(result.shared)} shared items differ")


def _answer(parsed: object, correct: bool | None) -> str:
    from llm_ledger.projections.compare import as_text

    text = escape(str(as_text(parsed)))
    return {True: f"[green]{text}[/green]", False: f"[red]{text}[/red]"}.get(correct, text)  # type: ignore[arg-type]
