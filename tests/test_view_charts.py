"""The figures behind the viewer's charts (projections/charts.py), in-process: histogram bins
and percentiles, time bins, per-group accuracy with Wilson intervals, and the incremental
reader of a log (what a live page polls) -- appended frames only, a replaced log reread.
"""

from __future__ import annotations

import json
import shutil

from conftest import run_cli
from llm_ledger.projections import charts
from llm_ledger.projections.summary import wilson


def test_latency_histogram_bins_and_percentiles():
    lat = charts.latency_histogram([0.010, 0.012, 0.0125, 0.030])
    assert (lat["n"], lat["start_ms"], lat["step_ms"]) == (4, 10.0, 1.0)
    assert sum(lat["counts"]) == 4 and lat["counts"][0] == 1 and lat["counts"][2] == 2 and lat["counts"][-1] == 1
    assert len(lat["counts"]) == 21 and (lat["p50"], lat["p90"], lat["p99"]) == (12.0, 30.0, 30.0)
    wide = charts.latency_histogram([i / 100 for i in range(1, 1001)])  # 10 ms .. 10 s
    assert len(wide["counts"]) <= charts.LATENCY_BINS + 1 and sum(wide["counts"]) == 1000 and wide["step_ms"] == 500
    assert charts.latency_histogram([0.25] * 3)["counts"] == [3]
    assert charts.latency_histogram([]) == {"n": 0, "start_ms": 0.0, "step_ms": 0.0, "counts": [], "p50": None, "p90": None, "p99": None}


def test_timeline_bins_are_a_nice_width_and_keep_every_count():
    per_tick = {100: [1, 0, 0, 0], 105: [0, 1, 0, 0], 225: [2, 0, 1, 1]}  # ticks of 1 s
    tl = charts.timeline(per_tick, 1.0)
    assert (tl["start"], tl["step_s"], len(tl["bins"])) == (100.0, 5.0, 26)
    assert tl["bins"][0] == {"t": 100.0, "requests": 1, "replies": 0, "rate_limited": 0, "errors": 0}
    assert tl["bins"][-1] == {"t": 225.0, "requests": 2, "replies": 0, "rate_limited": 1, "errors": 1}
    assert tl["totals"] == {"requests": 3, "replies": 1, "rate_limited": 1, "errors": 1}
    short = charts.timeline({10: [1, 0, 0, 0], 14: [0, 1, 0, 0]}, 0.1)  # half a second: tenths
    assert (short["step_s"], len(short["bins"])) == (0.1, 5)
    assert charts.timeline({}, 1.0)["bins"] == []


def test_accuracy_by_group_with_wilson_intervals():
    groups = charts.accuracy_by([("geo", True), ("art", False), ("geo", False), ("geo", True), (None, True), ("art", None)])
    assert [g["value"] for g in groups] == ["geo", "art", None]  # the largest first
    assert groups[0] == {"value": "geo", "items": 3, "correct": 2, "scored": 3, "accuracy": 2 / 3, "ci95": wilson(2, 3)}
    assert (groups[1]["scored"], groups[1]["accuracy"]) == (1, 0.0)  # not scored: not counted
    assert charts.accuracy([None])["accuracy"] is None and charts.accuracy([None])["ci95"] is None


def test_event_figures_read_what_was_appended_and_reread_a_replaced_log(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"answer: A{i}"}) + "\n" for i in range(5)))
    runs = tmp_path / "runs"
    sim = json.dumps({"rate_429": 0.3, "retry_after": 0.01, "seed": 2})
    assert run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "r", "--sim", sim, "--transport", "simulator").returncode == 0
    log = runs / "r" / "events.log"
    figures = charts.EventFigures(str(log))
    figures.refresh()
    first = figures.figures()
    totals = first["timeline"]["totals"]
    assert totals["replies"] == 5 and totals["requests"] == 5 + totals["rate_limited"] and first["latency"]["n"] == 5
    assert first["errors_by_type"] == ({"rate_limit": totals["rate_limited"]} if totals["rate_limited"] else {})
    figures.refresh()  # nothing appended: the same figures, nothing counted twice
    assert figures.figures() == first
    shutil.copy(log, tmp_path / "copy.log")
    log.unlink()
    shutil.copy(tmp_path / "copy.log", log)  # replaced (a repair, a rebuild): read again from the start
    figures.refresh()
    assert figures.figures() == first


def test_event_figures_coarsen_their_ticks_and_keep_the_counts():
    figures = charts.EventFigures("unused")
    for i in range(charts.MAX_TICKS + 5):
        figures._count(1_000_000 + (i + 0.5) * 0.1, 0)  # mid-tick: one distinct tick each
    assert figures.tick == 1.0 and len(figures.per_tick) <= charts.MAX_TICKS
    assert charts.timeline(figures.per_tick, figures.tick)["totals"]["requests"] == charts.MAX_TICKS + 5
