"""The figures behind the viewer's charts, computed here so that the page only draws them.

Three per run, each from the data that defines it:

* **accuracy** with its 95% Wilson interval (``summary.wilson``, as ``summary.json`` and
  ``compare`` state it) over a run's answers (the last line per key of ``responses.jsonl``),
  overall and per value of a metadata field (``accuracy_by``: one group per value);
* **latency**: a histogram of every measured reply latency (the ``response`` events that
  ``summary.json``'s percentiles count: ``fold.timed``), in milliseconds, with p50 / p90 / p99 by the
  same nearest-rank ``summary.percentile``;
* **timeline**: per time bin (event ``ts``, the commit time), attempts sent (``started``),
  replies (``response``), 429s and other errors (``failed``, by HTTP status).

``EventFigures`` reads the log incrementally (only the frames appended since its last
refresh), so a live run's charts cost what was appended, not a replay per poll. Bins use
"nice" widths (1, 2, 5 x 10^k ms; 0.1 s to 1 day), at most ``LATENCY_BINS`` / ``TIME_BINS``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.events import CACHE_ENDPOINT, Failed, ResponseView, Started, decode_many_view
from llm_ledger.ledger.framing import HEADER_SIZE
from llm_ledger.ledger.reader import iter_frames

from .fold import timed
from .summary import percentile, wilson

__all__ = ["accuracy", "accuracy_by", "latency_histogram", "timeline", "EventFigures", "LATENCY_BINS", "TIME_BINS"]

LATENCY_BINS = 20
TIME_BINS = 60
MAX_TICKS = 20_000  # distinct time keys an EventFigures keeps before it coarsens them
_TIME_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def accuracy(correct: Iterable[bool | None]) -> dict[str, Any]:
    """Right / scored, the share and its 95% interval; ``None`` values are not scored."""
    scored = [c for c in correct if c is not None]
    right = sum(scored)
    return {"correct": right, "scored": len(scored), "accuracy": right / len(scored) if scored else None,
            "ci95": wilson(right, len(scored))}


def accuracy_by(pairs: Iterable[tuple[str | None, bool | None]]) -> list[dict[str, Any]]:
    """``accuracy`` per group value (pairs of value, correct), groups in descending size, then
    by value; a key without the field is the group ``None``."""
    groups: dict[str | None, list[bool | None]] = {}
    for value, correct in pairs:
        groups.setdefault(value, []).append(correct)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0] is None, str(kv[0])))
    return [{"value": value, "items": len(values), **accuracy(values)} for value, values in ordered]


def _nice_step(span: float, bins: int) -> float:
    """The smallest of 1, 2, 5 x 10^k at least ``span / bins``."""
    raw = max(span / bins, 1e-9)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw * (1 - 1e-9):
            return m * power
    return 10 * power


def latency_histogram(latencies_s: list[float], bins: int = LATENCY_BINS) -> dict[str, Any]:
    """Counts per bin of width ``step_ms`` from ``start_ms``; the percentiles of the same
    replies (nearest rank, in ms)."""
    values = sorted(v * 1000.0 for v in latencies_s)
    quantiles = {q: percentile(values, n) for q, n in (("p50", 50), ("p90", 90), ("p99", 99))}
    if not values:
        return {"n": 0, "start_ms": 0.0, "step_ms": 0.0, "counts": [], **quantiles}
    step = _nice_step(values[-1] - values[0], bins) if values[-1] > values[0] else _nice_step(max(values[0], 1.0), bins)
    start = math.floor(values[0] / step) * step
    width = max(1, min(bins + 1, math.floor((values[-1] - start) / step) + 1))
    counts = [0] * width
    for v in values:
        counts[min(width - 1, int((v - start) // step))] += 1
    return {"n": len(values), "start_ms": start, "step_ms": step, "counts": counts, **quantiles}


def timeline(per_tick: Mapping[int, list[int]], tick: float = 1.0, bins: int = TIME_BINS) -> dict[str, Any]:
    """Counts [sent, replies, 429s, errors] per tick (key: ``int(ts / tick)``) regrouped into
    at most ``bins`` bins of a nice width (a whole number of ticks)."""
    names = ("requests", "replies", "rate_limited", "errors")
    if not per_tick:
        return {"start": None, "step_s": 0, "bins": [], "totals": dict.fromkeys(names, 0)}
    first, last = min(per_tick), max(per_tick)
    steps = [round(s / tick) for s in _TIME_STEPS if s >= tick * (1 - 1e-9) and abs(s / tick - round(s / tick)) < 1e-6]
    # past the longest nice width, as many ticks a bin as make ``bins`` bins
    step = next((s for s in steps if (last - first + 1) / s <= bins), -(-(last - first + 1) // bins))
    start = first - first % step
    width = (last - start) // step + 1
    rows = [[0, 0, 0, 0] for _ in range(width)]
    for key, counts in per_tick.items():
        row = rows[(key - start) // step]
        for i, c in enumerate(counts):
            row[i] += c
    totals = {name: sum(r[i] for r in rows) for i, name in enumerate(names)}
    return {"start": round(start * tick, 6), "step_s": round(step * tick, 6), "totals": totals,
            "bins": [{"t": round((start + i * step) * tick, 6), **dict(zip(names, r))} for i, r in enumerate(rows)]}


class EventFigures:
    """A run's latencies and per-second counts, read from its log as it grows."""

    def __init__(self, log: str) -> None:
        self.log = log
        self.error: str | None = None
        self._reset()

    def _reset(self) -> None:
        self.latencies: list[float] = []
        self.tick = 0.1  # seconds per key of per_tick; 10x coarser whenever the span passes MAX_TICKS
        self.per_tick: dict[int, list[int]] = {}
        self.errors_by_type: Counter[str] = Counter()
        self._offset = HEADER_SIZE
        self._file: tuple[int, int] | None = None

    def refresh(self) -> None:
        try:
            st = fs.stat(self.log)
        except OSError as exc:
            self.error = f"{self.log}: {exc.strerror or exc}"
            return
        if self._file != (st.st_dev, st.st_ino) or st.st_size < self._offset:  # replaced or cut (a repair)
            self._reset()
            self._file = (st.st_dev, st.st_ino)
        try:
            for frame in iter_frames(self.log, self._offset, decode=decode_many_view):
                for event in frame.events:
                    self._apply(event)
                self._offset = frame.end
            self.error = None
        except LedgerError as exc:  # a damaged log: the charts say so, the page goes on
            self.error = str(exc)

    def _apply(self, event: Any) -> None:
        if isinstance(event, Started):
            if event.endpoint != CACHE_ENDPOINT:  # a cache hit's request was not sent
                self._count(event.ts, 0)
        elif isinstance(event, ResponseView):
            if timed(event):
                self.latencies.append(event.latency)
            self._count(event.ts, 1)
        elif isinstance(event, Failed):
            self.errors_by_type[event.error_type or "error"] += 1
            self._count(event.ts, 2 if event.status == 429 else 3)

    def _count(self, ts: float, column: int) -> None:
        counts = self.per_tick.get(int(ts / self.tick))
        if counts is None:
            if len(self.per_tick) >= MAX_TICKS:
                self._coarsen()
            counts = self.per_tick.setdefault(int(ts / self.tick), [0, 0, 0, 0])
        counts[column] += 1

    def _coarsen(self) -> None:
        """Ten times wider ticks: memory stays bounded over a run of days."""
        self.tick *= 10
        merged: dict[int, list[int]] = {}
        for key, counts in self.per_tick.items():
            row = merged.setdefault(key // 10, [0, 0, 0, 0])
            for i, c in enumerate(counts):
                row[i] += c
        self.per_tick = merged

    def figures(self) -> dict[str, Any]:
        return {"latency": latency_histogram(self.latencies), "timeline": timeline(self.per_tick, self.tick),
                "errors_by_type": dict(self.errors_by_type.most_common()), "error": self.error}
