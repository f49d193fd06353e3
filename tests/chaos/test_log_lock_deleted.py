"""The lock note deleted under a live run (a temp cleaner, a user's ``rm``): a second writer
must still be refused. Before, the lock was the note itself, and a second `ledger resume`
created a new note, locked it and appended to the same log: two writers."""

from __future__ import annotations

import json
import signal
import time

from chaos.chains import REGEX_PARSER
from chaos.invariants import read_log
from chaos.procs import lock_held_by, run_cli, start_cli

N = 2000  # far more than the test waits for: it ends the run with Ctrl-C


def test_a_second_writer_is_refused_after_the_lock_file_was_deleted(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(N)))
    runs = str(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "live"
    run = start_cli("run", str(data), "--runs-dir", runs, "--run-id", "live", "--parser", REGEX_PARSER, "--concurrency", "1",
                    "--sim", json.dumps({"latency": 0.05}), cwd=tmp_path, name="live")
    deadline = time.monotonic() + 60
    held = lock_held_by(run_dir / "events.log.lock", run.pid)
    while not held():
        assert run.poll() is None and time.monotonic() < deadline, run.stderr
        time.sleep(0.01)
    (run_dir / "events.log.lock").unlink()

    for args in (("resume", "live"), ("replay", "live", "--rebuild"), ("verify", "live", "--repair")):
        r = run_cli(*args, "--runs-dir", runs, cwd=tmp_path)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        if args[0] == "verify":  # a clean log needs no repair: it must not take the run either way
            assert r.returncode == 0 and "ok" in r.stdout, r
            continue
        assert r.returncode == 2 and len(lines) == 1 and "locked by" in lines[0], (args, r.stderr, r.stdout)
    assert run.poll() is None, "the run ended before the second writers were tried: make it slower"
    run.signal(signal.SIGINT)
    assert run.wait(120) == 130, run.stderr
    events, error = read_log(run_dir / "events.log")
    assert error == ""
    sessions = [e for e in events if e.__class__.__name__ == "SessionStarted"]
    assert len(sessions) == 1, f"{len(sessions)} sessions wrote to the log"
    parsed = [e.item_id for e in events if e.__class__.__name__ == "Parsed"]
    assert parsed and len(parsed) == len(set(parsed)) and set(parsed) <= {f"q{i}" for i in range(N)}
