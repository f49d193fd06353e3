"""Endpoint faults: storms of 429s, bursts of 5xx, hangs past the timeout, resets mid-body,
malformed JSON, and HTTP 200 replies missing fields or carrying the wrong types.

Every fault must end as a retry or as a final failure with its reason recorded (a
``failed`` event, the ``error`` of the item's line) -- never a crash, never an item that
is neither done nor failed, never a log that cannot be read back.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from chaos.chains import REGEX_PARSER
from chaos.endpoints import BrokenServer
from chaos.invariants import check_projections, read_log
from chaos.procs import run_cli

RETRIED = ["no_choices", "empty_choices", "no_message", "choices_an_object", "choice_null", "content_a_number",
           "error_object_with_200", "html_from_a_proxy", "json_array", "empty_body", "outage_503", "hang"]
ACCEPTED = ["no_usage", "content_null"]  # odd but valid replies: the item is done
FAILED_TYPES = {"malformed_response", "server_error", "timeout", "connection", "rate_limit"}


def write_dataset(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(n)))
    return path


def rows_of(run_dir: Path) -> dict[str, dict]:
    """The last responses.jsonl line per item (later lines supersede earlier ones)."""
    rows = [json.loads(line) for line in (run_dir / "responses.jsonl").read_bytes().splitlines()]
    return {row["item_id"]: row for row in rows}


def accounted(run_dir: Path, n: int) -> list[str]:
    """Every item is done or failed with a reason, in the log and in responses.jsonl, and
    the log reads back; the projections equal a rebuild."""
    events, error = read_log(run_dir / "events.log")
    if error:
        return [error]
    problems = []
    finished = {e.item_id for e in events if e.__class__.__name__ == "Parsed"}
    finished |= {e.item_id for e in events if e.__class__.__name__ == "Failed" and e.final}
    if finished != {f"q{i}" for i in range(n)}:
        problems.append(f"items neither done nor failed: {sorted({f'q{i}' for i in range(n)} - finished)[:5]}")
    for e in events:
        if e.__class__.__name__ == "Failed" and (e.error_type not in FAILED_TYPES or not e.message):
            problems.append(f"failed event without a known type or a reason: {e}")
    rows = rows_of(run_dir)
    if set(rows) != {f"q{i}" for i in range(n)}:
        problems.append(f"responses.jsonl has {len(rows)} of {n} items")
    problems += [f"{k}: failed without a reason" for k, r in rows.items() if r["response"] is None and not r["error"]]
    return problems + check_projections(run_dir, run_dir.parent.parent / "scratch", repair=False)


def plan_for(shapes: list[str], bad_attempts: int = 1, every: int = 1):
    """Item i gets a broken shape on its first ``bad_attempts`` requests if i % every == 0
    (the others are fine: the circuit breaker trips on 5 failures in a row, and its probes
    would fail too if every item began with a broken reply)."""
    def plan(item: str, attempt: int) -> str:
        i = int(item[1:])
        if i % every or attempt > bad_attempts:
            return "ok"
        return shapes[(i // every) % len(shapes)]
    return plan


def test_broken_replies_are_retried_with_their_reason_recorded(tmp_path):
    shapes = RETRIED + ACCEPTED
    n = 3 * len(shapes)
    data = write_dataset(tmp_path / "d.jsonl", n)
    with BrokenServer(plan_for(shapes, every=3), hang=2.0) as server:
        r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "b", "--base-url", server.base_url,
                    "--model", "broken-1", "--retries", "3", "--timeout", "0.5", "--concurrency", "8",
                    "--parser", REGEX_PARSER, cwd=tmp_path)
    assert r.returncode == 0, r
    assert "Traceback" not in r.stderr
    run_dir = tmp_path / "runs" / "b"
    assert accounted(run_dir, n) == []
    events, _ = read_log(run_dir / "events.log")
    failed = Counter(e.item_id for e in events if e.__class__.__name__ == "Failed")
    shape_of = {f"q{i}": shapes[(i // 3) % len(shapes)] if i % 3 == 0 else "ok" for i in range(n)}
    for item, shape in shape_of.items():
        assert failed[item] == (1 if shape in RETRIED else 0), (item, shape, failed[item])
    by_type = {shape_of[e.item_id]: e.error_type for e in events if e.__class__.__name__ == "Failed"}
    assert by_type["outage_503"] == "server_error" and by_type["hang"] == "timeout"
    assert {by_type[s] for s in RETRIED if s not in ("outage_503", "hang")} == {"malformed_response"}
    rows = rows_of(run_dir)
    assert all(rows[item]["correct"] for item, shape in shape_of.items() if shape != "content_null")
    assert rows[next(k for k, v in shape_of.items() if v == "content_null")]["response"] == ""


@pytest.mark.parametrize("shape", ["usage_not_numbers", "finish_reason_a_number", "finish_reason_an_object"])
def test_replies_with_fields_of_the_wrong_type_are_retried_not_fatal(tmp_path, shape):
    n = 6
    data = write_dataset(tmp_path / "d.jsonl", n)
    with BrokenServer(plan_for([shape], bad_attempts=1)) as server:
        r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "w", "--base-url", server.base_url,
                    "--model", "broken-1", "--retries", "3", "--concurrency", "2", "--parser", REGEX_PARSER, cwd=tmp_path)
    run_dir = tmp_path / "runs" / "w"
    assert accounted(run_dir, n) == []  # whatever happened, the log reads and nothing is lost
    assert r.returncode == 0 and "Traceback" not in r.stderr, r
    assert len(rows_of(run_dir)) == n and all(row["correct"] for row in rows_of(run_dir).values())


def test_a_429_storm_then_a_5xx_burst_are_waited_out_and_nothing_is_lost(tmp_path):
    """For the first half second every request gets a 429 (Retry-After 0.1), for the next a
    503: adaptive concurrency, Retry-After and the circuit breaker hold off, and the run
    completes with every attempt recorded."""
    import time

    n = 30
    data = write_dataset(tmp_path / "d.jsonl", n)
    start: list[float] = []

    def plan(item: str, attempt: int) -> str:
        start or start.append(time.monotonic())
        age = time.monotonic() - start[0]
        return "rate_limited_429" if age < 0.5 else "outage_503" if age < 1.0 else "ok"

    with BrokenServer(plan) as server:
        r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "storm", "--base-url",
                    server.base_url, "--model", "broken-1", "--retries", "30", "--concurrency", "8",
                    "--parser", REGEX_PARSER, cwd=tmp_path)
        shapes = Counter(shape for _, _, _, shape in server.log)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r
    assert shapes["rate_limited_429"] and shapes["outage_503"], shapes
    run_dir = tmp_path / "runs" / "storm"
    assert accounted(run_dir, n) == []
    events, _ = read_log(run_dir / "events.log")
    failed = Counter(e.error_type for e in events if e.__class__.__name__ == "Failed")
    assert failed == {"rate_limit": shapes["rate_limited_429"], "server_error": shapes["outage_503"]}, (failed, shapes)
    assert all(row["correct"] for row in rows_of(run_dir).values())


def test_a_storm_of_every_fault_ends_with_every_item_done_or_failed_with_a_reason(tmp_path):
    """Faults the simulator makes, at rates where retries run out: exit 1, every item
    accounted for; two resumes retry the failed ones under the same storm; still nothing
    lost, and the log and projections agree after each."""
    n = 60
    data = write_dataset(tmp_path / "d.jsonl", n)
    req_log = tmp_path / "requests.jsonl"
    sim = json.dumps({"seed": 17, "rate_429": 0.3, "retry_after": 0.01, "rate_500": 0.15, "rate_reset": 0.1,
                      "rate_malformed": 0.1, "rate_hang": 0.04, "hang_seconds": 3, "request_log": str(req_log)})
    runs = str(tmp_path / "runs")
    r = run_cli("run", str(data), "--runs-dir", runs, "--run-id", "s", "--retries", "2", "--timeout", "0.4",
                "--concurrency", "16", "--parser", REGEX_PARSER, "--sim", sim, cwd=tmp_path)
    assert r.returncode == 1, r  # some items failed finally
    assert "Traceback" not in r.stderr
    run_dir = tmp_path / "runs" / "s"
    assert accounted(run_dir, n) == []
    outcomes = Counter(json.loads(line)["outcome"] for line in req_log.read_text().splitlines())
    assert {"429", "500", "reset", "malformed", "hang", "ok"} <= set(outcomes), outcomes
    failed_before = {k for k, row in rows_of(run_dir).items() if row["response"] is None}
    assert failed_before and all(rows_of(run_dir)[k]["error"] for k in failed_before)

    for _ in range(2):
        r = run_cli("resume", "s", "--runs-dir", runs, cwd=tmp_path)
        assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r
        assert f"{len(failed_before)} failed" in r.stdout, r.stdout
        assert accounted(run_dir, n) == []
        failed_before = {k for k, row in rows_of(run_dir).items() if row["response"] is None}
    events, _ = read_log(run_dir / "events.log")
    replies = Counter(e.item_id for e in events if e.__class__.__name__ == "Response")
    assert max(replies.values()) == 1  # a done item is never requested again
