"""The Batch API runner against the simulator's Batch API: each fault, reconciliation after a
500 on create, partial results, multi-turn rounds, the window, cancel, status and the price.

Runs are in-process (prepare + run_prepared) against a simulator thread started per test
(its faults count the batches of its life); the CLI is a subprocess where it is the point.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request

import pytest

from llm_ledger.ledger.events import (BatchCancelRequested, BatchDone, BatchFileUploaded, BatchPlanned, BatchStatus,
                                      BatchSubmitted, Failed, Response)
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events
from llm_ledger.runners.batch_chunks import Request, cut
from llm_ledger.runners.batch_window import parse_window
from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.prepare import prepare, prepare_resume
from llm_ledger.runners.runner import Work
from llm_ledger.runners.session import run_prepared
from llm_ledger.runners.simulator import SimConfig, Simulator

from conftest import run_cli


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Question {i}? answer: {'ABCD'[i % 4]}", "expected": "ABCD"[i % 4]} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _sim(**config) -> Simulator:
    return Simulator(SimConfig(**config)).start()


def _run(tmp_path, url: str, dataset: str, run_id: str = "r", **config):
    settings = {"model": "sim-1", "base_url": url, "base_urls": [url], "runner": "batch", "parser": "choice",
                "batch_max_requests": 4, **config}
    session, reason = run_prepared(prepare(dataset, RunConfig(**settings), str(tmp_path / "runs"), run_id))
    return RunPaths(str(tmp_path / "runs" / run_id)), reason


def _events(paths: RunPaths) -> list:
    return list(iter_events(paths.log))


def _records(sim: Simulator, run_id: str = "r") -> list[dict]:
    with urllib.request.urlopen(sim.base_url + "/_sim/batch_records") as reply:
        return [b for b in json.loads(reply.read())["batches"] if b["metadata"].get("ledger_run", "").rsplit(".", 1)[0] == run_id]


def _rows(paths: RunPaths) -> dict:
    with open(os.path.join(paths.dir, "responses.jsonl")) as f:
        return {row["item_id"]: row for row in map(json.loads, f)}


def test_a_batch_run_records_each_step_in_order_and_answers_every_item(tmp_path, dataset):
    sim = _sim()
    try:
        paths, reason = _run(tmp_path, sim.base_url, dataset)
        books = _records(sim)
    finally:
        sim.stop()
    assert reason == "completed"
    events = _events(paths)
    kinds = [type(e).__name__ for e in events if type(e).__name__.startswith("Batch") and getattr(e, "chunk", "") == "1"]
    assert kinds == ["BatchPlanned", "BatchFileUploaded", "BatchSubmitted", "BatchStatus", "BatchDone"]
    first = next(i for i, e in enumerate(events) if isinstance(e, BatchPlanned))
    assert all(type(e).__name__ == "Started" for e in events[2:first])  # the requests, then the chunk naming them
    rows = _rows(paths)
    assert len(rows) == 6 and all(r["correct"] for r in rows.values())
    assert sorted(len(b["billed"]) for b in books) == [2, 4]  # chunks within --batch-max-requests 4
    planned = {e.chunk: e.sha256 for e in events if isinstance(e, BatchPlanned)}
    assert {b["metadata"]["ledger_chunk"]: b["metadata"]["ledger_sha256"] for b in books} == planned


def test_a_failed_validation_sends_the_requests_again_in_a_new_chunk(tmp_path, dataset):
    sim = _sim(batch_fail_validation=1)
    try:
        paths, reason = _run(tmp_path, sim.base_url, dataset, batch_max_requests=10)
    finally:
        sim.stop()
    events = _events(paths)
    done = [e for e in events if isinstance(e, BatchDone)]
    assert [(d.status, d.unresolved) for d in done] == [("failed", 6), ("completed", 0)]
    retried = [e for e in events if isinstance(e, Failed)]
    assert len(retried) == 6 and {(f.error_type, f.final, f.retryable) for f in retried} == {("batch_failed", False, True)}
    assert "validation failed" in retried[0].message
    assert reason == "completed" and len(_rows(paths)) == 6
    assert {r["attempts"] for r in _rows(paths).values()} == {2}


def test_an_expired_batch_keeps_what_completed_and_resends_only_the_rest(tmp_path, dataset):
    sim = _sim(batch_expire=1, batch_window=0.3)
    try:
        paths, reason = _run(tmp_path, sim.base_url, dataset, batch_max_requests=10)
        books = _records(sim)
    finally:
        sim.stop()
    events = _events(paths)
    expired_done = next(i for i, e in enumerate(events) if isinstance(e, BatchDone))
    assert events[expired_done].status == "expired" and events[expired_done].completed == 3
    first_replies = [e for e in events[:expired_done] if isinstance(e, Response)]
    failed = [e for e in events[:expired_done] if isinstance(e, Failed)]
    assert len(first_replies) == 3 and len(failed) == 3
    assert max(events.index(e) for e in first_replies) < min(events.index(e) for e in failed)  # results first
    second = [e for e in events if isinstance(e, BatchPlanned)][1]
    assert sorted(second.custom_ids) == sorted(f"{f.item_id}/0/0" for f in failed)
    billed = [c for b in books for c in b["billed"]]
    assert len(billed) == len(set(billed)) == 6  # every request paid once
    assert reason == "completed" and len(_rows(paths)) == 6


def test_lines_in_the_error_file_are_failures_retried_in_the_next_round(tmp_path, dataset):
    sim = _sim(batch_error_lines=1)
    try:
        paths, reason = _run(tmp_path, sim.base_url, dataset, batch_max_requests=10)
    finally:
        sim.stop()
    events = _events(paths)
    failed = [e for e in events if isinstance(e, Failed)]
    assert [(f.error_type, f.status, f.final) for f in failed] == [("server_error", 500, False)] * 2  # every third of 6
    done = [e for e in events if isinstance(e, BatchDone)]
    assert [(d.completed, d.failed, d.unresolved) for d in done] == [(4, 2, 0), (2, 0, 0)]
    assert reason == "completed" and len(_rows(paths)) == 6


def test_a_500_on_create_after_the_batch_was_made_is_reconciled_not_created_again(tmp_path, dataset):
    sim = _sim(batch_create_500=1)
    try:
        paths, reason = _run(tmp_path, sim.base_url, dataset, batch_max_requests=10)
        books = _records(sim)
    finally:
        sim.stop()
    assert len(books) == 1 and len(books[0]["billed"]) == 6  # one batch, though its create answered 500
    submitted = [e for e in _events(paths) if isinstance(e, BatchSubmitted)]
    assert len(submitted) == 1 and submitted[0].reconciled and submitted[0].batch_id == books[0]["id"]
    assert reason == "completed" and len(_rows(paths)) == 6


def test_a_multi_turn_item_takes_one_round_per_turn(tmp_path):
    path = tmp_path / "mt.jsonl"
    path.write_text(json.dumps({"id": "c", "turns": ["one", "two", "three answer: B"], "expected": "B"}) + "\n"
                    + json.dumps({"id": "s", "prompt": "single answer: A", "expected": "A"}) + "\n")
    sim = _sim()
    try:
        paths, reason = _run(tmp_path, sim.base_url, str(path))
    finally:
        sim.stop()
    planned = [e for e in _events(paths) if isinstance(e, BatchPlanned)]
    assert [(p.round, p.custom_ids) for p in planned] == [(0, ["c/0/0", "s/0/0"]), (1, ["c/0/1"]), (2, ["c/0/2"])]
    rows = _rows(paths)
    assert rows["c"]["correct"] and rows["s"]["correct"] and reason == "completed"
    assert [m["role"] for m in rows["c"]["conversation"]] == ["user", "assistant"] * 3


def test_the_window_stops_waiting_resume_collects_the_same_batch_and_status_shows_it(tmp_path, dataset):
    sim = _sim(batch_seconds=1.0, batch_window=3600)
    try:
        paths, reason = _run(tmp_path, sim.base_url, dataset, batch_max_requests=10, batch_window=0.2)
        assert reason == "interrupted"
        status = run_cli("status", "r", "--runs-dir", str(tmp_path / "runs"))
        assert status.returncode == 0, status.stderr
        line = next(x for x in status.stdout.splitlines() if x.startswith("  chunk 1: batch_"))
        assert re.search(r"(validating|in_progress): \d+ done, 0 failed of 6, age \d+s, expires in 59m\d\ds$", line), line
        assert "batches: 1 (1 open)" in status.stdout
        with open(os.path.join(paths.dir, "batches.json")) as f:  # what `status --json` adds as "batches"
            rows = json.load(f)
        assert rows[0]["status"] in ("validating", "in_progress") and rows[0]["total"] == 6 and rows[0]["expires_at"]
        session, reason = run_prepared(prepare_resume(paths, False, {"batch_window": 60.0}))  # this session waits it out
        books = _records(sim)
    finally:
        sim.stop()
    assert reason == "completed" and len(books) == 1  # polled again, never sent again
    submitted = [e for e in _events(paths) if isinstance(e, BatchSubmitted)]
    assert len(submitted) == 1 and len(_rows(paths)) == 6


def test_cancel_asks_the_provider_records_it_and_resume_fails_what_was_not_done(tmp_path, dataset):
    sim = _sim(batch_seconds=600, batch_window=3600)
    try:
        paths, reason = _run(tmp_path, sim.base_url, dataset, batch_max_requests=10, batch_window=0.1)
        cancelled = run_cli("cancel", "r", "--runs-dir", str(tmp_path / "runs"))
        assert cancelled.returncode == 0, cancelled.stderr
        assert re.search(r"chunk 1: batch_\w+: cancelling", cancelled.stdout)
        assert "1 of 1 open batches asked to cancel" in cancelled.stdout
        asked = [e for e in _events(paths) if isinstance(e, BatchCancelRequested)]
        assert len(asked) == 1 and asked[0].status == "cancelling"
        with open(os.path.join(paths.dir, "batches.json")) as f:  # what `ledger status` shows, current at once
            assert [row["status"] for row in json.load(f)] == ["cancelling"]
        session, reason = run_prepared(prepare_resume(paths))
        books = _records(sim)
    finally:
        sim.stop()
    assert books[0]["status"] == "cancelled" and len(books) == 1
    events = _events(paths)
    failed = [e for e in events if isinstance(e, Failed)]
    assert len(failed) == 6 and {(f.error_type, f.final) for f in failed} == {("batch_cancelled", True)}
    assert [e.status for e in events if isinstance(e, BatchDone)] == ["cancelled"]
    assert reason == "completed"
    from llm_ledger.runners.batch_cancel import cancel_run

    assert cancel_run(paths) == [] and len(_events(paths)) == len(events)  # nothing open: nothing asked, nothing written


def test_cancel_refuses_a_per_request_run_in_one_line(tmp_path, dataset):
    run_prepared(prepare(dataset, RunConfig(), str(tmp_path / "runs"), "p"))
    result = run_cli("cancel", "p", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "does not use the Batch API" in result.stderr


def test_the_batch_price_is_half_in_the_dry_run_and_the_summary(tmp_path, dataset):
    dry = run_cli("run", dataset, "--batch", "--dry-run", "--model", "gpt-4o", "--base-url", "http://127.0.0.1:9/v1",
                  "--max-tokens", "100", "--runs-dir", str(tmp_path / "runs"))
    assert dry.returncode == 0, dry.stderr
    cost = float(re.search(r"completion cost \(at most\)\s*│\s*\$([\d.]+)", dry.stdout).group(1))
    assert cost == pytest.approx(6 * 100 * 10.00 / 2 / 1e6)  # gpt-4o: $10 per million completion tokens, halved
    assert "Batch API: 50% of the per-request price" in dry.stdout
    sim = _sim()
    try:
        paths, _ = _run(tmp_path, sim.base_url, dataset, price_in=2.0, price_out=8.0, batch_discount=0.5)
    finally:
        sim.stop()
    with open(paths.summary) as f:
        summary = json.load(f)
    tokens = summary["tokens"]
    assert summary["cost_usd"] == pytest.approx((tokens["prompt"] * 1.0 + tokens["completion"] * 4.0) / 1e6)


def test_chunks_hold_one_model_and_stay_within_the_limits():
    from llm_ledger.runners.dataset import Item

    def request(n: int, model: str) -> Request:
        item = Item(id=f"i{n}", turns=[[{"role": "user", "content": "x" * 50}]], expected=None, params={}, line=n, metadata={})
        return Request(f"i{n}/0/0", Work(item, 0), 0, {"model": model, "messages": item.turns[0]}, 1)

    requests = [request(n, "a" if n % 3 else "b") for n in range(10)]
    pieces = list(cut(requests, max_requests=3, max_bytes=10_000))
    assert all(len({r.body["model"] for r in p.requests}) == 1 and len(p.requests) <= 3 for p in pieces)
    assert sorted(r.custom_id for p in pieces for r in p.requests) == sorted(r.custom_id for r in requests)
    small = list(cut(requests, max_requests=50_000, max_bytes=300))
    assert all(len(p.data) <= 300 for p in small) and len(small) > 2


def test_batch_window_durations_and_bad_input_in_one_line(tmp_path, dataset):
    assert [parse_window(t) for t in ("90", "90s", "30m", "24h", "1h30m", "2d")] == [90, 90, 1800, 86400, 5400, 172800]
    result = run_cli("run", dataset, "--batch", "--batch-window", "soon", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "--batch-window 'soon'" in result.stderr and result.stderr.count("\n") == 1
    assert not os.path.exists(tmp_path / "runs")


def test_ctrl_c_stops_waiting_the_batch_keeps_running_and_resume_collects_it(tmp_path, dataset):
    import signal
    import subprocess
    import sys
    import time

    sim = _sim(batch_seconds=1.5, batch_window=3600)
    runs = tmp_path / "runs"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "run", dataset, "--batch", "--run-id", "c",
                                 "--model", "sim-1", "--base-url", sim.base_url, "--runs-dir", str(runs)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not _records(sim, "c") and time.monotonic() < deadline:  # its batch exists at the provider
            time.sleep(0.05)
        time.sleep(0.2)  # ... and its batch_submitted is durable
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "interrupted; 6 items pending" in err and "ledger resume c" in err
        assert "their batches keep running at the provider: `ledger resume` collects them" in err
        assert _records(sim, "c")[0]["status"] in ("validating", "in_progress")  # still running there
        paths = RunPaths(str(runs / "c"))
        session, reason = run_prepared(prepare_resume(paths))
        books = _records(sim, "c")
    finally:
        sim.stop()
    assert reason == "completed" and len(books) == 1 and len(books[0]["billed"]) == 6
    assert len(_rows(paths)) == 6


def test_the_simulator_expires_a_batch_slower_than_its_window_and_takes_batch_faults_from_the_cli():
    import asyncio
    import time

    from llm_ledger.runners.batch_client import BatchClient

    sim = _sim(batch_seconds=60, batch_window=0.2)

    async def go():
        client = BatchClient(sim.base_url, "k", (), 10)
        try:
            line = {"custom_id": "a/0/0", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]}}
            file_id = await client.upload("x.jsonl", (json.dumps(line) + "\n").encode())
            batch = await client.create(file_id, {})
            time.sleep(0.3)
            return await client.retrieve(batch.id)
        finally:
            await client.close()

    try:
        batch = asyncio.run(go())
    finally:
        sim.stop()
    assert batch.status == "expired" and batch.completed == 0  # a real provider's 24 h pass: what ran is kept
    bad = run_cli("simulate", "--port", "0", "--batch-expire", "-1")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "batch_expire -1" in bad.stderr


def test_status_lines_of_a_refused_chunk_and_of_one_that_left_requests_without_a_result():
    from llm_ledger.cli.status_cmd import batch_lines
    from llm_ledger.projections.batches import encode, fold

    events = [BatchPlanned(chunk="1", custom_ids=["a/0/0", "b/0/0"], ts=100.0),
              BatchDone(chunk="1", status="rejected", failed=2, ts=101.0),
              BatchPlanned(chunk="2", custom_ids=["c/0/0", "d/0/0"], ts=100.0),
              BatchSubmitted(chunk="2", batch_id="batch_x", created_at=100.0, expires_at=200.0, ts=100.0),
              BatchStatus(chunk="2", batch_id="batch_x", status="expired", completed=1, total=2, ts=150.0),
              BatchDone(chunk="2", batch_id="batch_x", status="expired", completed=1, unresolved=1, ts=151.0)]
    lines = batch_lines(json.loads(encode(fold(events))), now=160.0)
    assert lines[1] == "  chunk 2: batch_x expired, recorded: 1 done, 0 failed of 2, 1 without a result, age 1m00s"
    assert lines[2] == "  chunk 1: (not submitted) rejected, recorded: 0 done, 2 failed of 2, age 1m00s"


def test_a_batch_unknown_to_the_endpoint_stops_the_run_and_is_never_bought_again(tmp_path, dataset):
    first = _sim(batch_seconds=600, batch_window=3600)
    port = int(first.base_url.rsplit(":", 1)[1].split("/")[0])
    try:
        paths, reason = _run(tmp_path, first.base_url, dataset, batch_max_requests=10, batch_window=0.1)
        assert reason == "interrupted"
    finally:
        first.stop()
    again = Simulator(SimConfig(), port=port).start()  # the same URL, without the batch (another account, say)
    try:
        session, reason = run_prepared(prepare_resume(paths))
        assert reason == "error" and _records(again) == []  # nothing created where the batch is unknown
        stop = session.runner.progress.stop_reason
        assert stop.startswith("error: batch batch_") and "is unknown to" in stop and "\n" not in stop
        assert "`ledger cancel r` then `ledger resume`" in stop
        from llm_ledger.runners.batch_cancel import cancel_run

        assert [c.status for c in cancel_run(paths)] == ["unknown to the provider: given up"]  # the escape it names
        session, reason = run_prepared(prepare_resume(paths))
        assert _records(again) == []
    finally:
        again.stop()
    failed = [e for e in _events(paths) if isinstance(e, Failed)]
    assert reason == "completed" and {(f.error_type, f.final) for f in failed} == {("batch_lost", True)} and len(failed) == 6


def test_an_endpoint_without_the_batch_api_fails_each_request_at_once_saying_so(tmp_path, dataset):
    import http.server
    import threading

    class ChatOnly(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802  (read the upload, then: not here)
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_error(501)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChatOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        paths, reason = _run(tmp_path, f"http://127.0.0.1:{server.server_port}/v1", dataset, batch_max_requests=10,
                             preflight=False)
    finally:
        server.shutdown()
    failed = [e for e in _events(paths) if isinstance(e, Failed)]
    assert reason == "completed" and len(failed) == 6 and {(f.error_type, f.final) for f in failed} == {("batch_unsupported", True)}
    assert failed[0].message == "the endpoint does not serve the Batch API (POST /v1/files answered 501): run without --batch"


def test_status_of_a_stopped_run_on_the_built_in_simulator_says_its_batches_are_gone(tmp_path, dataset):
    """The built-in simulator's batches end with the session that started it: a stopped run
    shows them as gone (a resume sends their requests again), never as open with an expiry."""
    config = RunConfig(model="sim-1", runner="batch", parser="choice", simulator={"batch_seconds": 600}, batch_window=0.2)
    session, reason = run_prepared(prepare(dataset, config, str(tmp_path / "runs"), "r"))
    assert reason == "interrupted"
    status = run_cli("status", "r", "--runs-dir", str(tmp_path / "runs"))
    assert status.returncode == 0, status.stderr
    assert "batches: 1 (1 ended with the built-in simulator's session: `ledger resume` sends their requests again)" \
        in status.stdout, status.stdout
    line = next(x for x in status.stdout.splitlines() if x.startswith("  chunk 1: batch_"))
    assert "when its session ended, gone" in line and "expires" not in line and "open" not in line, line


def test_unreadable_result_lines_are_counted_said_and_their_requests_sent_again(tmp_path, dataset):
    """A result line that cannot be read leaves its request without a result: it is sent again
    (the only way to get its reply), and the run says so -- the provider may bill it twice."""
    sim = _sim(batch_torn_lines=1)
    try:
        session, reason = run_prepared(prepare(dataset, RunConfig(model="sim-1", base_url=sim.base_url, base_urls=[sim.base_url],
                                                                  runner="batch", parser="choice", batch_max_requests=10),
                                               str(tmp_path / "runs"), "r"))
        books = _records(sim)
    finally:
        sim.stop()
    paths = RunPaths(str(tmp_path / "runs" / "r"))
    assert reason == "completed" and len(_rows(paths)) == 6
    torn = [e for e in _events(paths) if isinstance(e, Failed)]
    assert len(torn) == 1 and "without a readable result" in torn[0].message and not torn[0].final
    assert [len(b["billed"]) for b in books] == [6, 1]  # the torn line's request, billed twice
    notes = session.runner.progress.internal
    assert len(notes) == 1 and "1 line(s) of its file" in notes[0] and "(line 4)" in notes[0] and "bill them twice" in notes[0]
    with open(os.path.join(paths.dir, "batches.json")) as f:  # what was recorded, not the provider's count
        chunks = json.load(f)
    assert [(c["completed"], c["failed"], c["unresolved"], c["total"]) for c in chunks] == [(5, 0, 1, 6), (1, 0, 0, 1)]


def test_two_runs_of_one_id_never_adopt_each_others_batches(tmp_path, dataset):
    """One account, two runs named alike (two runs directories): a resume of the second, killed
    after planning its chunk, looks its chunk up at the provider and must not find the first
    run's batch (same run id, same requests, same file hash): it creates its own."""
    sim = _sim()
    try:
        common = ("--batch", "--base-url", sim.base_url, "--model", "sim-1", "--no-cache", "--parser", "choice",
                  "--run-id", "nightly")
        first = run_cli("run", dataset, *common, "--runs-dir", str(tmp_path / "x"), cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        killed = run_cli("run", dataset, *common, "--runs-dir", str(tmp_path / "y"), cwd=tmp_path,
                         env={"LEDGER_BATCH_CRASH": "planned:1"})
        assert killed.returncode == -9, (killed.returncode, killed.stderr)
        resumed = run_cli("resume", "nightly", "--runs-dir", str(tmp_path / "y"), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        books = _records(sim, "nightly")
    finally:
        sim.stop()
    ids = {d: [e.batch_id for e in _events(RunPaths(str(tmp_path / d / "nightly"))) if isinstance(e, BatchSubmitted)]
           for d in ("x", "y")}
    assert len(ids["x"]) == len(ids["y"]) == 1 and ids["x"] != ids["y"]
    assert len(books) == 2 and len({b["metadata"]["ledger_run"] for b in books}) == 2
    assert [len(b["billed"]) for b in books] == [6, 6]


def test_status_shows_a_submitted_batch_while_the_run_waits_and_after_a_kill(tmp_path, dataset):
    """batches.json follows the log while a run waits for its batch (events are sparse then:
    the projector writes when idle), and `ledger status` of a killed run catches it up."""
    import asyncio
    import threading
    import time

    sim = _sim(batch_seconds=600, batch_window=3600)
    hold: dict = {}

    def running(runner):
        hold.update(runner=runner, loop=asyncio.get_running_loop())
        return lambda: None

    config = RunConfig(model="sim-1", base_url=sim.base_url, base_urls=[sim.base_url], runner="batch", parser="choice",
                       batch_max_requests=10, cache=False)
    prepared = prepare(dataset, config, str(tmp_path / "runs"), "live")
    thread = threading.Thread(target=lambda: hold.update(result=run_prepared(prepared, on_running=running)))
    thread.start()
    path, seen = os.path.join(prepared.paths.dir, "batches.json"), None
    try:
        deadline = time.monotonic() + 60  # a hang guard only
        while time.monotonic() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    rows = json.load(f)
                if rows and rows[0]["batch_id"]:
                    seen = rows[0]
                    break
            time.sleep(0.05)
        status = run_cli("status", "live", "--runs-dir", str(tmp_path / "runs"))
    finally:
        while "loop" not in hold and thread.is_alive():
            time.sleep(0.01)
        if "loop" in hold:
            hold["loop"].call_soon_threadsafe(hold["runner"].stop)
        thread.join(60)
    try:
        assert seen is not None and seen["status"] in ("validating", "in_progress") and seen["expires_at"], seen
        line = next(x for x in status.stdout.splitlines() if x.startswith("  chunk 1: "))
        assert line.startswith(f"  chunk 1: {seen['batch_id']} ") and "expires in" in line, status.stdout
        killed = run_cli("run", dataset, "--batch", "--base-url", sim.base_url, "--model", "sim-1", "--no-cache",
                         "--run-id", "k", "--runs-dir", str(tmp_path / "runs"), env={"LEDGER_BATCH_CRASH": "polled:1"})
        assert killed.returncode == -9, killed.stderr
        status = run_cli("status", "k", "--runs-dir", str(tmp_path / "runs"))
        submitted = [e.batch_id for e in _events(RunPaths(str(tmp_path / "runs" / "k"))) if isinstance(e, BatchSubmitted)]
        assert len(submitted) == 1 and re.search(rf"  chunk 1: {submitted[0]} (validating|in_progress): ", status.stdout), \
            status.stdout
    finally:
        sim.stop()


def test_a_request_over_the_file_limit_fails_unsent_and_a_limit_above_openais_is_said(tmp_path, dataset):
    sim = _sim()
    try:
        paths, reason = _run(tmp_path, sim.base_url, dataset, batch_max_bytes=10, cache=False)
        books = _records(sim)
    finally:
        sim.stop()
    failed = [e for e in _events(paths) if isinstance(e, Failed)]
    assert reason == "completed" and books == [] and len(failed) == 6
    assert {(f.error_type, f.final) for f in failed} == {("too_large_for_batch", True)}
    assert "over --batch-max-bytes 10; not sent" in failed[0].message
    prepared = prepare(dataset, RunConfig(runner="batch", batch_max_requests=60_000), str(tmp_path / "runs"), dry_run=True)
    assert any("--batch-max-requests 60,000 is above OpenAI's 50,000" in note for note in prepared.notes)


def test_the_same_batch_command_again_is_the_same_run(tmp_path, dataset):
    """A batch run stores the batch price (half the per-request one): the same --price-in typed
    again agrees with it instead of being refused as another setting."""
    config = RunConfig(model="sim-1", runner="batch", parser="choice", price_in=1.0, price_out=2.0)
    session, reason = run_prepared(prepare(dataset, config, str(tmp_path / "runs"), "bp"))
    assert reason == "completed"
    again = prepare(dataset, RunConfig(model="sim-1", runner="batch", parser="choice", price_in=1.0, price_out=2.0),
                    str(tmp_path / "runs"), "bp", typed={"price_in", "price_out", "runner", "parser"})
    assert again.resume and again.config.price_in == 0.5


def test_a_resume_elsewhere_is_refused_while_a_batch_is_at_the_first_endpoint(tmp_path, dataset):
    """The new endpoint knows neither the chunk's file nor its batch: the run would fail its
    requests, then buy them again while the first endpoint completes and bills them."""
    from llm_ledger.ledger.errors import InputError

    sim = _sim(batch_seconds=600, batch_window=3600)
    try:
        paths, reason = _run(tmp_path, sim.base_url, dataset, batch_max_requests=10, batch_window=0.1, cache=False)
        assert reason == "interrupted"
        other = "http://127.0.0.1:9/v1"
        with pytest.raises(InputError, match=rf"run r has 1 batch chunk\(s\) uploaded or running at {re.escape(sim.base_url)}: "
                                             "resume with that endpoint"):
            prepare_resume(paths, False, {"base_url": other, "base_urls": [other]})
        assert len(_records(sim)) == 1
    finally:
        sim.stop()
