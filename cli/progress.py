"""The live progress bar and the closing summary table of `run` / `resume`."""

from __future__ import annotations

import json
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_ledger.runners.runner import Progress as RunProgress

from .common import err


def make_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[extra]}"),
        console=err,
        transient=False,
    )


def ticker(bar: Progress, task: Any, price: tuple[float | None, float | None], show_first: bool = False):
    shown = [not show_first]

    def tick(p: "RunProgress") -> None:
        if not shown[0] and p.first_reply is not None:
            shown[0] = True
            request, reply = p.first_reply
            bar.console.print("[bold]first request[/bold]", json.dumps(request, indent=2, ensure_ascii=False), markup=True, highlight=False)
            bar.console.print("[bold]first reply[/bold]", reply, markup=True, highlight=False)
        finished = p.done + p.failed
        speed = bar.tasks[task].speed or 0.0
        extra = f"failed {p.failed}  retries {p.retrying}  in flight {p.in_flight}  tokens {p.prompt_tokens + p.completion_tokens:,}"
        if price[0] is not None or price[1] is not None:
            cost = (p.prompt_tokens * (price[0] or 0) + p.completion_tokens * (price[1] or 0)) / 1e6
            projected = cost / finished * p.total if finished else 0.0
            extra += f"  ${cost:.4f} (projected ${projected:.4f})"
        if p.limit:
            extra += f"  limit {p.limit}"
        if p.paused:
            extra += "  [red]endpoint down: paused, probing[/red]"
        if p.stopping:
            extra += "  [yellow]stopping: draining in-flight requests (Ctrl-C again to quit now)[/yellow]"
        bar.update(task, completed=finished, total=p.total, rate=f"{speed:.1f}/s", extra=extra)

    return tick


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"run {summary.get('run_id')}", show_header=False)
    counts = summary.get("counts", {})
    latency = summary.get("latency_s", {})
    tokens = summary.get("tokens", {})
    rows = [
        ("status", summary.get("status")),
        ("done / failed / pending", f"{counts.get('done')} / {counts.get('failed')} / {counts.get('pending')} of {counts.get('planned')}"),
        ("accuracy", _accuracy(summary)),
        ("parse success", _pct(summary.get("parse_success_rate"))),
        ("latency p50 / p90 / p99 (s)", " / ".join(_num(latency.get(q)) for q in ("p50", "p90", "p99"))),
        ("tokens prompt / completion", f"{tokens.get('prompt', 0):,} / {tokens.get('completion', 0):,}"),
        ("cost (USD)", _num(summary.get("cost_usd"))),
        ("attempts / retries", f"{summary.get('attempts')} / {summary.get('retries')}"),
        ("throughput (items/s)", _num(summary.get("throughput_per_s"))),
        ("wall time (s)", _num(summary.get("wall_time_s"))),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _accuracy(summary: dict[str, Any]) -> str:
    acc = summary.get("accuracy")
    if acc is None:
        return "-"
    lo, hi = summary.get("accuracy_ci95") or (acc, acc)
    return f"{acc:.1%} (95% CI {lo:.1%}-{hi:.1%}, n={summary.get('scored')})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
