"""The live display of an experiment: one line per arm, and the comparison table at the end.

Each arm's line is its name, a bar and the figures a single run's display puts first
(``done/total``, percent, rate, ETA: progress.RunDisplay), then its failures and in-flight
requests when they fit. Alerts (an endpoint down, stopping) follow as in a single run,
once for all arms. The table is projections.experiments.arm_table, formatted by numbers.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from llm_ledger.projections import numbers as num

from .progress import GAP, RunDisplay, bar_line, fitting, figure_parts

if TYPE_CHECKING:
    from llm_ledger.runners.runner import Progress

__all__ = ["ExperimentDisplay", "arm_table_view", "fitted_table"]


class ExperimentDisplay:
    def __init__(self, arms: list[tuple[str, tuple[float | None, float | None], int]]) -> None:
        self.arms = {name: RunDisplay(price, concurrency) for name, price, concurrency in arms}
        self.width = max((len(name) for name in self.arms), default=0)

    def tick(self, arm: str) -> Callable[["Progress"], None]:
        """The progress callback of ``arm``'s runner (run_arms' ``on_tick``)."""
        display = self.arms[arm]

        def update(p: "Progress") -> None:
            display.update(p)

        return update

    def lines(self, width: int) -> list[Text]:
        out: list[Text] = []
        alerts: dict[str, Text] = {}
        for name, display in self.arms.items():
            if display.progress is None:
                continue
            label = Text(f"{name:<{self.width}} ", style="bold")
            p = display.progress
            figures = display.essentials()
            extra = f"{GAP}failed {num.count(p.failed)}{GAP}in flight {num.count(p.in_flight)}"
            room = width - len(label) - len(figures) - 1
            if room - len(extra) >= 10:
                line = label + bar_line(display, room - len(extra), figures) + Text(extra)
            elif room >= 10:
                line = label + bar_line(display, room, figures)
            else:  # narrow: as many figures as fit, in order
                line = label + fitting(figure_parts(figures), max(0, width - len(label)))
            out.append(line)
            for alert in display.alerts():
                alerts.setdefault(alert.plain, alert)
        return out + list(alerts.values())

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.lines(options.max_width)


_DROPPED_FIRST = ("model", "tokens in/out", "p50", "parsed", "cost")  # when the terminal is too narrow for all


def arm_table_view(table: dict[str, Any], width: int = 200) -> Table:
    """The comparison of the arms for a person: every figure through numbers.py, never cut
    short -- on a narrow terminal the least needed columns are left out instead."""
    from rich.markup import escape

    header = ("arm", "model", "done", "accuracy", "95% CI", "parsed", "cost", "p50", "tokens in/out", "p vs best")
    rows = []
    for row in table["rows"]:
        if row.get("error"):  # a damaged arm: its place in the table, and why it has no figures
            rows.append((row["arm"], f"error: {row['error']}", *(num.MISSING,) * (len(header) - 2)))
            continue
        ci = row["ci95"]
        best = row["arm"] == table["best"]
        p = "best" if best else num.p_value(row["p_vs_best"]) if row["p_vs_best"] is not None else num.MISSING
        rows.append((row["arm"] + (" *" if best else ""), str(row["model"] or num.MISSING),
                     f"{num.count(row['done'])}/{num.count(row['planned'])}", num.percent(row["accuracy"]),
                     num.MISSING if not ci else f"{num.percent(ci[0])}-{num.percent(ci[1])}",
                     num.percent(row["parse_rate"]), num.usd(row["cost_usd"]), num.ms(row["latency_p50_s"]),
                     f"{num.count(row['prompt_tokens'])}/{num.count(row['completion_tokens'])}", p))
    cached = [f"{row['arm']} {num.count(row['cached'])} of {num.count(row['done'])}" for row in table["rows"]
              if row.get("cached")]
    notes = [f"copied from earlier runs (the cache; not paid, not in cost, tokens or p50): {', '.join(cached)}"] if cached else []
    return fitted_table(f"experiment {escape(str(table.get('experiment')))}", header, rows, width, _DROPPED_FIRST, 2,
                        notes=notes)


def fitted_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]], width: int,
                 dropped_first: tuple[str, ...], left: int, bold_last: bool = False, notes: list[str] | None = None) -> Table:
    """A table whose cells are never cut: each column as wide as its widest cell; when the
    terminal is narrower than all of them, the columns of ``dropped_first`` are left out, in
    that order, and the caption says which (never silently). The first ``left`` columns are
    text, the others figures (right-aligned). ``notes``: more caption lines."""
    from rich.markup import escape

    widths = [max(len(c) for c in (name, *(r[i] for r in rows))) for i, name in enumerate(header)]
    keep = list(range(len(header)))
    for name in dropped_first:
        if sum(widths[i] + 1 for i in keep) - 1 <= width:
            break
        keep.remove(header.index(name))
    left_out = [name for i, name in enumerate(header) if i not in keep]
    caption = list(notes or [])
    if left_out:
        caption.append(f"left out to fit {width} columns: {', '.join(left_out)} (a wider terminal shows them)")
    view = Table(title=title, box=None, padding=(0, 1), pad_edge=False, header_style="bold",
                 caption=escape("\n".join(caption)) if caption else None, caption_justify="left")
    for i in keep:
        view.add_column(header[i], justify="left" if i < left else "right", no_wrap=True, min_width=widths[i])
    for n, cells in enumerate(rows):
        view.add_row(*(escape(cells[i]) for i in keep), style="bold" if bold_last and n == len(rows) - 1 else None)
    return view
