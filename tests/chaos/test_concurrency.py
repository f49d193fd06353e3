"""Other processes during a run: a second writer is refused naming the holder's pid (exit 2,
nothing written); `ledger status`, `ledger log --follow`, `ledger view` and `ledger export`
read safely while it runs, and what they saw agrees with the log the run leaves.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from chaos.chains import REGEX_PARSER
from chaos.invariants import read_log
from chaos.procs import lock_held_by, run_cli, start_cli

N = 400  # far more than the test waits for: it ends the run with Ctrl-C once it has seen what it came for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_second_writers_are_refused_and_readers_read_safely_during_a_run(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(N)))
    runs = str(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "live"
    run = start_cli("run", str(data), "--runs-dir", runs, "--run-id", "live", "--parser", REGEX_PARSER, "--concurrency", "2",
                    "--sim", json.dumps({"latency": 0.15}), cwd=tmp_path, name="live")
    port = _free_port()
    view = None
    try:
        deadline = time.monotonic() + 30
        held = lock_held_by(run_dir / "events.log.lock", run.pid)
        while not (held() and (run_dir / "summary.json").exists()):
            assert run.poll() is None and time.monotonic() < deadline, run.stderr
            time.sleep(0.01)
        follow = start_cli("log", "live", "--follow", "--runs-dir", runs, cwd=tmp_path, name="follow")
        view = start_cli("view", "--port", str(port), "--runs-dir", runs, cwd=tmp_path, name="view")
        before = run_dir / "events.log"
        size_before = before.stat().st_size

        # -- readers during the run (one read at once, so that a loaded machine still sees it live)
        seen_done, statuses, view_answers = [], set(), 0

        def read_status() -> None:
            r = run_cli("status", "live", "--json", "--runs-dir", runs, cwd=tmp_path)
            assert r.returncode == 0, r
            info = json.loads(r.stdout)
            statuses.add(info["status"])
            assert info["done"] <= info["planned"] == N, info
            seen_done.append(info["done"])

        read_status()

        # -- a second writer, in every form, is refused with the holder's pid
        writers = [("resume", "live", "--runs-dir", runs),
                   ("run", str(data), "--runs-dir", runs, "--run-id", "live"),
                   ("replay", "live", "--rebuild", "--runs-dir", runs),
                   ("replay", "live", "--reparse", "text", "--runs-dir", runs)]
        with ThreadPoolExecutor(max_workers=len(writers)) as pool:
            refused = list(pool.map(lambda args: run_cli(*args, cwd=tmp_path), writers))
        for args, r in zip(writers, refused):
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert r.returncode == 2, (args, r)
            assert len(lines) == 1 and lines[0].startswith("error:") and f"pid {run.pid}" in lines[0], (args, r.stderr)
        assert run.poll() is None, "the run ended before every second writer was tried: make it slower"

        rounds = 0
        while run.poll() is None and (rounds < 3 or not view_answers) and rounds < 50:
            rounds += 1
            read_status()
            code, runs_list = _get(f"http://127.0.0.1:{port}/api/runs")
            if code == 200:
                view_answers += 1
                live = next(x for x in runs_list["runs"] if x["run_id"] == "live")
                assert live["done"] <= N
                code, items = _get(f"http://127.0.0.1:{port}/api/items?run=live")
                assert code == 200 and items["runs"][0]["finished"] <= N, (code, items)
                if items["rows"]:
                    code, item = _get(f"http://127.0.0.1:{port}/api/item?run=live&item={items['rows'][0]['item_id']}")
                    assert code == 200 and item["runs"][0]["found"], (code, item)
            export = tmp_path / f"during-{len(seen_done)}.jsonl"
            r = run_cli("export", "live", "jsonl", "-o", str(export), "--runs-dir", runs, cwd=tmp_path)
            assert r.returncode == 0, r
            assert len(export.read_bytes().splitlines()) <= N
        assert run.poll() is None, "the run ended before the readers were done: make it longer"
        run.signal(signal.SIGINT)  # a graceful stop: what was read must agree with the log it leaves
        assert run.wait() == 130, run.stderr
        assert "running" in statuses and seen_done == sorted(seen_done), (statuses, seen_done)
        assert view_answers, "`ledger view` never answered during the run"
        assert follow.wait(30) == 0, follow.stderr
    finally:
        for proc in (run, view):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    assert before.stat().st_size > size_before  # the live run went on writing
    events, error = read_log(run_dir / "events.log")
    assert error == ""
    assert [e.reason for e in events if e.__class__.__name__ == "SessionStarted"] == ["new"]  # nobody else wrote
    followed = [json.loads(line) for line in follow.stdout.splitlines()]
    r = run_cli("log", "live", "--runs-dir", runs, cwd=tmp_path)
    assert followed == [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["seq"] for e in followed] == list(range(1, len(events) + 1))
    info = json.loads(run_cli("status", "live", "--json", "--runs-dir", runs, cwd=tmp_path).stdout)
    parsed = {e.item_id for e in events if e.__class__.__name__ == "Parsed"}
    assert info["status"] != "running" and info["done"] == len(parsed) >= max(seen_done), (info, len(parsed))


def test_log_follow_of_a_run_killed_with_sigkill_ends_with_exactly_the_durable_events(tmp_path):
    import msgspec

    from chaos.procs import kill_when, lines_after

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}"}) + "\n" for i in range(200)))
    req_log = tmp_path / "requests.jsonl"
    runs = str(tmp_path / "runs")
    run = start_cli("run", str(data), "--runs-dir", runs, "--run-id", "k", "--concurrency", "8",
                    "--sim", json.dumps({"latency": 0.01, "request_log": str(req_log)}), cwd=tmp_path)
    lock = tmp_path / "runs" / "k" / "events.log.lock"
    deadline = time.monotonic() + 30
    while not lock_held_by(lock, run.pid)() or not (tmp_path / "runs" / "k" / "events.log").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.stderr
        time.sleep(0.005)
    follow = start_cli("log", "k", "--follow", "--runs-dir", runs, cwd=tmp_path, name="follow")
    code, _ = kill_when(run, lambda: lines_after(req_log, 0) >= 60, 0.01)
    assert code == -9
    assert follow.wait(30) == 0, follow.stderr  # the lock died with the writer: follow ends
    events, error = read_log(tmp_path / "runs" / "k" / "events.log")
    assert error == "" and len(events) > 60
    followed = [msgspec.json.decode(line) for line in follow.stdout.splitlines()]
    assert followed == [msgspec.to_builtins(e) for e in events]
