"""`ledger compare RUN_A RUN_B ... [--only-diff] [--json] [-o FILE.csv]`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from llm_ledger.ledger.layout import find_run
from llm_ledger.projections import numbers as num

from .app import app
from .common import RunsDir, handled, out

if TYPE_CHECKING:
    from rich.table import Column

    from llm_ledger.projections.compare import Comparison


@app.command("compare")
def compare(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Two or more runs (ids or run directories).", metavar="RUN_A RUN_B ...")] = None,
    only_diff: Annotated[bool, typer.Option("--only-diff", help="List the items whose parsed answers differ.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Write the per-item table to this CSV file.")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", help="Compare the arms of this experiment (`ledger run eval.toml`): accuracy, cost, latency, tokens, parse rate, McNemar p against the best arm.")] = None,
    runs_dir: RunsDir = "runs",
) -> None:
    """Accuracy with 95% intervals, agreement and McNemar's exact test, paired over shared items."""
    from llm_ledger.projections.compare import compare_runs, write_csv
    from llm_ledger.projections.outputs import check_output_path
    from llm_ledger.projections.runs import read_summary, run_status

    if experiment is not None:
        from .experiment_cmd import compare_experiment

        with handled():
            compare_experiment(experiment, runs or [], runs_dir, as_json=as_json, only_diff=only_diff, output=output)
        return
    with handled():
        paths = [find_run(runs_dir, run) for run in runs or []]
        result = compare_runs(paths)
        written = write_csv(result, check_output_path(output), only_diff) if output else None
        if as_json:
            out.print(json.dumps(result.to_json(only_diff), ensure_ascii=False), soft_wrap=True, markup=False)
        elif only_diff:
            print_diff(result)
        else:
            # a whole run's cost and latency only from a summary.json that vouches for its log
            _print_stats(result, {p.run_id: read_summary(p) if run_status(p).summary_current else {} for p in paths})
        if written is not None and not as_json:
            out.print(f"wrote {written} rows to {escape(output or '')}")


def _print_coverage(result: Comparison) -> None:
    """The sentence the viewer's banner says too (projections.compare.coverage)."""
    cover = result.coverage
    out.print(cover.message() + ("" if cover.complete else f"; compared on the {cover.shared} shared"), markup=False)


def _print_stats(result: Comparison, summaries: dict[str, dict]) -> None:
    """Accuracy per run (with each whole run's cost and median latency, from its summary.json),
    agreement, and the paired test."""
    from rich.table import Column, Table

    _print_coverage(result)
    reviewed = any(r["reviewed"] or r["stale_reviews"] for r in result.runs)
    table = Table(*_ids("run"), Column("model", overflow="fold"),
                  *_right("scored", "correct", "accuracy", "95% CI", "cost (run)", "p50 (run)"),
                  title="accuracy on shared items", **_COMPACT)
    for r in result.runs:
        acc, ci = r["accuracy"], r["ci95"]
        summary = summaries.get(r["run_id"], {})
        table.add_row(escape(r["run_id"]), escape(r["model"]), num.count(r["scored"]), num.count(r["correct"]),
                      num.percent(acc), num.MISSING if ci is None else f"{num.percent(ci[0])}-{num.percent(ci[1])}",
                      num.usd(summary.get("cost_usd")), num.ms((summary.get("latency_s") or {}).get("p50")))
    out.print(table)
    if not result.coverage.complete:  # the two last columns are each whole run's (summary.json)
        out.print("cost (run) and p50 (run) are each whole run's, not the shared items'", markup=False)
    if reviewed:
        _print_reviewed(result)
    matrix = Table(*_ids(""), *_right(*(escape(r) for r in result.run_ids)), title="agreement (same parsed answer)",
                   **_COMPACT)
    for run, row in zip(result.run_ids, result.agreement):
        matrix.add_row(escape(run), *(num.percent(v) for v in row))
    out.print(matrix)
    pairs = Table(*_ids("A", "B"), *_right("agree", "only A right", "only B right", "p"), "p < 0.05",
                  *(_right("p reviewed") if reviewed else ()), title="paired differences (McNemar exact test)", **_COMPACT)
    for p in result.pairs:
        pairs.add_row(escape(p["a"]), escape(p["b"]), num.percent(p["agreement"]), num.count(p["only_a_correct"]),
                      num.count(p["only_b_correct"]), num.p_value(p["p_value"]), "[bold]yes[/bold]" if p["significant"] else "no",
                      *((num.p_value(p["reviewed"]["p_value"]),) if reviewed else ()))
    out.print(pairs)
    cached = [f"{r['run_id']} {num.count(r['cached'])} of {num.count(len(result.shared))}"
              for r in result.runs if r["cached"]]
    if cached:
        out.print("answers copied from the cross-run cache (nothing sent): " + ", ".join(cached), markup=False)
    failed = [f"{r['run_id']} {num.count(r['failed'])} of {num.count(len(result.shared))}"
              for r in result.runs if r.get("failed")]
    if failed:  # a gap made of errors is not a gap between models: said beside the test
        out.print("failed, no answer (counted as wrong above; `ledger resume RUN` retries them): " + ", ".join(failed),
                  markup=False)


def _print_reviewed(result: Comparison) -> None:
    """The accuracies with people's verdicts where given (``correct_reviewed``): their own
    run's, or carried from another run for the same reply; stale ones are not applied."""
    from rich.table import Table

    table = Table(*_ids("run"), *_right("scored", "correct", "accuracy", "95% CI", "verdicts", "carried", "stale"),
                  title="accuracy with reviews (people's verdicts where given)", **_COMPACT)
    for r in result.runs:
        ci = r["ci95_reviewed"]
        table.add_row(escape(r["run_id"]), num.count(r["scored_reviewed"]), num.count(r["correct_reviewed"]),
                      num.percent(r["accuracy_reviewed"]), num.MISSING if ci is None else f"{num.percent(ci[0])}-{num.percent(ci[1])}",
                      num.count(r["reviewed"]), num.count(r["carried"]), num.count(r["stale_reviews"]))
    out.print(table)


# Tables without vertical rules: eight columns of figures fit 80 columns.
_COMPACT = {"box": None, "padding": (0, 1), "header_style": "bold"}


def _ids(*names: str) -> list["Column"]:
    """Columns of run ids: never cut."""
    from rich.table import Column

    return [Column(name, no_wrap=True, min_width=len(name)) for name in names]


def _right(*names: str) -> list["Column"]:
    """Columns of figures, right-aligned so their digits line up, never cut short (a narrow
    terminal wraps the header instead: a figure with an ellipsis would be a wrong figure)."""
    from rich.table import Column

    return [Column(name, justify="right", no_wrap=True, min_width=len(name)) for name in names]


def print_diff(result: Comparison) -> None:
    from rich.table import Table

    from llm_ledger.projections.compare import as_text

    diffs = result.differences()
    _print_coverage(result)
    table = Table("item", "sample", "expected", *(escape(r) for r in result.run_ids))
    for d in diffs:
        cells = [_answer(d["answers"][r], d["correct"][r]) + (" (cached)" if d["cached"][r] else "") for r in result.run_ids]
        table.add_row(escape(d["item_id"]), str(d["sample"]), escape(str(as_text(d["expected"]))), *cells)
    out.print(table)
    out.print(f"{num.count(len(diffs))} of {num.plural(len(result.shared), 'shared item')} differ")


def _answer(parsed: object, correct: bool | None) -> str:
    from llm_ledger.projections.compare import as_text

    text = escape(str(as_text(parsed)))
    return {True: f"[green]{text}[/green]", False: f"[red]{text}[/red]"}.get(correct, text)  # type: ignore[arg-type]
