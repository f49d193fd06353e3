"""The live progress display and the closing summary table of `run` / `resume`.

What matters comes first, on the first line, at any width: the bar, ``done/total``, the
percent, the rate and the time left (``ETA``). The extras (failures, retries, items in
flight, the adaptive concurrency limit, tokens, cost) follow on the same line when they fit
beside a bar of useful length, else on a second line, as many as fit there in that order:
nothing is cut mid-word. An endpoint outage or a stop in progress gets a line of its own.

    ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━    37/100   37%  12.3/s  ETA 0:05
    failed 2  retries 4  in flight 16  concurrency 5 of 16 (adaptive)  tokens 5,912  ...
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from llm_ledger.projections import numbers as num

if TYPE_CHECKING:
    from rich.live import Live

    from llm_ledger.runners.runner import Progress as RunProgress

from .common import err

__all__ = ["RunDisplay", "make_live", "start_live", "stop_live", "ticker", "summary_table", "bar_line", "figure_parts",
           "fitting"]

BAR_MIN = 10  # narrower than this, a bar says nothing: the numbers alone are shown
BAR_BESIDE_EXTRAS = 30  # extras share the first line only if the bar keeps this much
RATE_WINDOW = 10.0  # seconds of history the rate is measured over (recent speed, not the average)
GAP = "  "


class RunDisplay:
    """What the live display shows, laid out anew at each refresh for the console's width."""

    def __init__(self, price: tuple[float | None, float | None], concurrency: int = 0) -> None:
        self.price = price
        self.concurrency = concurrency  # --concurrency: the most the adaptive limit grows to
        self.progress: "RunProgress | None" = None
        self._history: deque[tuple[float, int]] = deque()

    def update(self, p: "RunProgress", now: float | None = None) -> None:
        self.progress = p
        now = time.monotonic() if now is None else now
        self._history.append((now, p.done + p.failed))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW:
            self._history.popleft()

    def rate(self) -> float | None:
        """Items finished per second over the last ``RATE_WINDOW`` seconds; None before any."""
        if len(self._history) < 2:
            return None
        (t0, n0), (t1, n1) = self._history[0], self._history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def essentials(self) -> str:
        """``  37/100   37%  12.3/s  ETA 0:05``: the figures after the bar."""
        p = self.progress
        finished, total = (p.done + p.failed, p.total) if p else (0, 0)
        share = f"{finished * 100 // total:3d}%" if total else "   -"  # floored: 100% only when all are
        rate = self.rate()
        left = 0.0 if total and finished >= total else (total - finished) / rate if rate and total else None
        width = len(num.count(total))
        return f"{num.count(finished):>{width}}/{num.count(total)}  {share}  {num.per_second(rate)}  ETA {num.clock(left)}"

    def extras(self) -> list[Text]:
        """The figures after the essentials, most useful first."""
        p = self.progress
        if p is None:
            return []
        parts = [Text(f"failed {num.count(p.failed)}", style="red" if p.failed else ""),
                 Text(f"retries {num.count(p.retrying)}"),
                 Text(f"in flight {num.count(p.in_flight)}"),
                 *([Text(self._limit(p.limit))] if p.limit else []),
                 Text(f"tokens {num.count(p.prompt_tokens + p.completion_tokens)}")]
        if p.cached:  # served from the cross-run cache: counted in done, sent nowhere, cost 0
            parts.append(Text(f"cached {num.count(p.cached)}", style="cyan"))
        if self.price[0] is not None or self.price[1] is not None:
            cost = (p.prompt_tokens * (self.price[0] or 0) + p.completion_tokens * (self.price[1] or 0)) / 1e6
            finished = p.done + p.failed
            projected = f", projected {num.usd(cost / finished * p.total)}" if finished else ""
            saved = (p.cached_prompt_tokens * (self.price[0] or 0) + p.cached_completion_tokens * (self.price[1] or 0)) / 1e6
            parts.append(Text(f"cost {num.usd(cost)}{projected}" + (f", saved {num.usd(saved)}" if p.cached else "")))
        return parts

    def _limit(self, limit: int) -> str:
        """The adaptive limit on requests sent at once: lowered after 429s, grown back after
        successes, never above --concurrency. ``concurrency 5 of 16 (adaptive)``."""
        of = f" of {num.count(self.concurrency)}" if self.concurrency and limit < self.concurrency else ""
        return f"concurrency {num.count(limit)}{of} (adaptive)"

    def alerts(self) -> list[Text]:
        p = self.progress
        if p is None:
            return []
        lines = []
        if p.paused:
            lines.append(Text("endpoint down: paused, probing", style="red"))
        if p.stopping:
            lines.append(Text(f"stopping: {p.stopping_words} (Ctrl-C again to quit now)", style="yellow"))
        return lines

    def lines(self, width: int) -> list[Text]:
        """The display at ``width`` columns: every line at most ``width`` long."""
        figures = self.essentials()
        extras = self.extras()
        inline = GAP + GAP.join(t.plain for t in extras)
        room = width - len(figures) - 1
        if extras and room - len(inline) >= BAR_BESIDE_EXTRAS:
            first = bar_line(self, room - len(inline), figures)
            first.append(GAP)
            first.append(Text(GAP).join(extras))
            return [first, *self.alerts()]
        first = bar_line(self, room, figures) if room >= BAR_MIN else fitting(figure_parts(figures), width)
        return [first, *([fitting(extras, width)] if extras else []), *self.alerts()]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.progress is not None:  # nothing to say before the first tick (the total is not known)
            yield from self.lines(options.max_width)


def bar_line(display: RunDisplay, bar_width: int, figures: str) -> Text:
    p = display.progress
    finished, total = (p.done + p.failed, p.total) if p else (0, 0)
    filled = bar_width if total and finished >= total else bar_width * finished // total if total else 0
    line = Text("━" * filled, style="green" if total and finished >= total else "magenta")
    line.append("━" * (bar_width - filled), style="grey23")
    line.append(" " + figures)
    return line


def figure_parts(figures: str) -> list[Text]:
    return [Text(part.strip()) for part in figures.split(GAP) if part.strip()]


def fitting(parts: list[Text], width: int) -> Text:
    """As many of ``parts`` as fit in ``width``, in order, joined by the gap."""
    line = Text()
    for part in parts:
        needed = len(part.plain) + (len(GAP) if line.plain else 0)
        if len(line.plain) + needed > width:
            break
        if line.plain:
            line.append(GAP)
        line.append(part)
    return line


def make_live(display: RunDisplay) -> "Live":
    """The display on stderr when it is a terminal; piped or redirected, it shows nothing
    (the summary on stdout has every figure; a log file gets no redraws, and an error
    stays the one line on stderr)."""
    from rich.live import Live

    return Live(display, console=err, refresh_per_second=4, transient=False)


def start_live(live: "Live") -> None:
    if live.console.is_terminal:
        live.start()


def stop_live(live: "Live") -> None:
    """Stop the display (again: a no-op); on a terminal its last picture stays."""
    if live.is_started:
        live.stop()


def ticker(live: "Live", display: RunDisplay, show_first: bool = False):
    shown = [not show_first]

    def tick(p: "RunProgress") -> None:
        if not shown[0] and p.first_reply is not None:
            shown[0] = True
            request, reply = p.first_reply
            live.console.print("[bold]first request[/bold]", json.dumps(request, indent=2, ensure_ascii=False), markup=True, highlight=False)
            live.console.print("[bold]first reply[/bold]", reply, markup=True, highlight=False)
        display.update(p)

    return tick


def summary_table(summary: dict[str, Any]) -> Table:
    """The closing figures; the run id is said once, by the header above."""
    table = Table(show_header=False)
    counts = summary.get("counts", {})
    latency = summary.get("latency_s", {})
    tokens = summary.get("tokens", {})
    rows = [
        ("status", str(summary.get("status"))),
        ("done / failed / pending", f"{num.count(counts.get('done'))} / {num.count(counts.get('failed'))} / "
                                    f"{num.count(counts.get('pending'))} of {num.count(counts.get('planned'))}"),
        ("accuracy", _accuracy(summary)),
        ("parse success", num.percent(summary.get("parse_success_rate"))),
        ("latency p50 / p90 / p99", " / ".join(num.ms(latency.get(q)) for q in ("p50", "p90", "p99"))),
        ("tokens prompt / completion", f"{num.count(tokens.get('prompt', 0))} / {num.count(tokens.get('completion', 0))}"),
        ("cost", num.usd(summary.get("cost_usd"))),
        ("cached", _cached(summary.get("cache"))),
        ("attempts / retries", f"{num.count(summary.get('attempts'))} / {num.count(summary.get('retries'))}"),
        ("throughput", num.per_second(summary.get("throughput_per_s"), "items")),
        ("wall time", num.duration(summary.get("wall_time_s"))),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _cached(cache: dict[str, Any] | None) -> str:
    """``812 of 1,000, $4.21 saved``: replies copied from the cross-run cache, not paid."""
    if not cache:
        return num.MISSING
    saved = cache.get("saved_usd")
    text = f"{num.count(cache.get('cached', 0))} of {num.count(cache.get('of', 0))}"
    return f"{text}, {num.usd(saved)} saved" if saved is not None and cache.get("cached") else text


def _accuracy(summary: dict[str, Any]) -> str:
    acc = summary.get("accuracy")
    if acc is None:
        return num.MISSING
    lo, hi = summary.get("accuracy_ci95") or (acc, acc)
    return f"{num.percent(acc)} (95% CI {num.percent(lo)}-{num.percent(hi)}, n={num.count(summary.get('scored'))})"
