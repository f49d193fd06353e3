"""Stopping a run whatever the endpoint is doing.

* The first Ctrl-C during an outage (the circuit breaker open, probes backing off towards
  30 s, every task waiting for an endpoint or a backoff) ends the run within seconds: what
  waits is cancelled at once; exit 130 and the command that resumes.
* SIGTERM while a reply trickles in: the request in flight gets its grace (2 s), then it is
  abandoned and recorded as an ``interrupted`` attempt; resume sends it again.
* The second Ctrl-C cancels everything at once, and the log still ends cleanly.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from chaos.endpoints import BrokenServer
from chaos.invariants import read_log
from chaos.procs import run_cli, start_cli

HANG_GUARD = 60  # seconds: before the fix these runs took minutes (or for ever) to stop


def write_dataset(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}"}) + "\n" for i in range(n)))
    return path


def _wait_for(condition, what: str, guard: float = 60) -> None:
    deadline = time.monotonic() + guard
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def _stop_and_time(proc, *signals: int) -> tuple[int, float]:
    start = time.monotonic()
    for sig in signals:
        proc.signal(sig)
        time.sleep(0.2)
    code = proc.wait(HANG_GUARD)
    return code, time.monotonic() - start


def _start(tmp_path: Path, server: BrokenServer, n: int, *extra: str):
    data = write_dataset(tmp_path / "d.jsonl", n)
    return start_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "r", "--base-url",
                     server.base_url, "--model", "broken-1", *extra, cwd=tmp_path)


def test_first_ctrl_c_during_an_outage_stops_within_seconds(tmp_path):
    with BrokenServer(lambda item, attempt: "outage_503") as server:
        proc = _start(tmp_path, server, 40, "--concurrency", "8", "--retries", "5")
        _wait_for(lambda: len(server.log) >= 8, "the endpoint saw the first requests")
        time.sleep(4)  # the breaker has opened and its cooldown has grown
        code, took = _stop_and_time(proc, signal.SIGINT)
    assert code == 130, proc.stderr
    assert took < 20, took  # generous: the point is "not minutes"
    assert "resume with: ledger resume r" in proc.stderr
    assert "Traceback" not in proc.stderr
    events, error = read_log(tmp_path / "runs" / "r" / "events.log")
    assert not error and type(events[-1]).__name__ == "SessionEnded" and events[-1].reason == "interrupted"


def test_sigterm_while_a_reply_trickles_abandons_it_after_the_grace_and_resume_sends_it_again(tmp_path):
    first = {"q0": True}

    def plan(item: str, attempt: int) -> str:
        if item == "q0" and first.pop("q0", False):
            return "trickle"
        return "ok"

    with BrokenServer(plan, trickle=0.5) as server:
        proc = _start(tmp_path, server, 1, "--timeout", "600")
        _wait_for(lambda: len(server.log) >= 1, "the request was sent")
        time.sleep(0.5)
        code, took = _stop_and_time(proc, signal.SIGTERM)
        assert code == 130, proc.stderr
        assert took < 20, took
        assert "resume with: ledger resume r" in proc.stderr and "1 item pending" in proc.stderr
        events, _ = read_log(tmp_path / "runs" / "r" / "events.log")
        kinds = [type(e).__name__ for e in events if getattr(e, "item_id", None) == "q0"]
        assert kinds == ["Started", "Failed"], kinds
        assert events[-2].error_type == "interrupted" and not events[-2].final
        r = run_cli("resume", "r", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r
    events, _ = read_log(tmp_path / "runs" / "r" / "events.log")
    assert [type(e).__name__ for e in events if getattr(e, "item_id", None) == "q0"][-2:] == ["Response", "Parsed"]


def test_second_ctrl_c_cancels_everything_at_once_and_the_log_ends_cleanly(tmp_path):
    with BrokenServer(lambda item, attempt: "trickle", trickle=0.5) as server:
        proc = _start(tmp_path, server, 6, "--timeout", "600", "--concurrency", "3")
        _wait_for(lambda: len(server.log) >= 3, "the requests were sent")
        code, took = _stop_and_time(proc, signal.SIGINT, signal.SIGINT)
    assert code == 130, proc.stderr
    assert took < 20, took
    assert "Traceback" not in proc.stderr and "resume with: ledger resume r" in proc.stderr
    events, error = read_log(tmp_path / "runs" / "r" / "events.log")
    assert not error and type(events[-1]).__name__ == "SessionEnded" and events[-1].reason == "interrupted"
    abandoned = [e for e in events if type(e).__name__ == "Failed"]
    assert len(abandoned) == 3 and {e.error_type for e in abandoned} == {"interrupted"}


def test_an_outage_past_give_up_after_exits_75_saying_how_to_resume(tmp_path):
    data = write_dataset(tmp_path / "d.jsonl", 30)
    r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "g", "--give-up-after", "1",
                "--concurrency", "8", "--sim", json.dumps({"down": True}), cwd=tmp_path, timeout=HANG_GUARD)
    assert r.returncode == 75, r
    assert "30 items pending" in r.stderr and "resume with: ledger resume g" in r.stderr, r
    events, error = read_log(tmp_path / "runs" / "g" / "events.log")
    assert not error and [e for e in events if type(e).__name__ == "Failed" and e.error_type == "internal"] == []
