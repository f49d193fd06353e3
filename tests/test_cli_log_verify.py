"""`ledger log` and `ledger verify`, run as a user runs them: a real subprocess per call."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llm_ledger.ledger.events import Parsed, Response, RunStarted, SessionEnded, Started, Usage
from llm_ledger.ledger.reader import iter_events, iter_frames
from llm_ledger.ledger.writer import LogWriter

HELPER = str(Path(__file__).with_name("helpers_writer.py"))

GROUPS = [
    [RunStarted(run_id="r1", items=2, config={"model": "sim"})],
    [Started(item_id="q1", request={"prompt": "Grüß Gott 🙂"}), Started(item_id="q2", sample=1, request={"prompt": "2+2"})],
    [Response(item_id="q1", text="Servus", usage=Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4), latency=0.5)],
    [Parsed(item_id="q1", value={"a": 1})],
    [Response(item_id="q2", sample=1, text="4")],
    [SessionEnded(reason="completed")],
]


@pytest.fixture
def run(tmp_path) -> Path:
    """runs/r1 with a clean log; returns the log's path."""
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    log = tmp_path / "runs" / "r1" / "events.log"
    with LogWriter.open(str(log)) as writer:
        for group in GROUPS:
            writer.append_many(group)
    return log


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- ledger log -------------------------------------------------------------------------


def test_log_prints_each_event_as_one_json_line_with_the_contract_names(cli, run):
    done = cli("log", "r1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    events = list(iter_events(str(run)))
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == len(events) == 7
    for line, event in zip(lines, events):
        assert list(line)[:3] == ["type", "seq", "ts"]
        assert (line["seq"], line["ts"]) == (event.seq, event.ts)
    assert [line["type"] for line in lines] == ["run_started", "started", "started", "response", "parsed", "response", "session_ended"]
    assert [line["seq"] for line in lines] == list(range(1, 8))
    items = [(line["item_id"], line["sample"]) for line in lines if "item_id" in line]
    assert items == [("q1", 0), ("q2", 1), ("q1", 0), ("q1", 0), ("q2", 1)]
    assert lines[1]["request"] == {"prompt": "Grüß Gott 🙂"}
    assert lines[3]["text"] == "Servus" and lines[3]["usage"]["total_tokens"] == 4
    assert lines[4]["value"] == {"a": 1}
    assert lines[0]["run_id"] == "r1" and "item_id" not in lines[0]


def test_log_of_a_corrupt_log_prints_what_precedes_the_damage_then_fails(cli, run):
    frames = list(iter_frames(str(run)))
    flip(run, frames[3].offset + 30)
    done = cli("log", "r1")
    assert done.returncode == 1
    assert [json.loads(line)["seq"] for line in done.stdout.splitlines()] == [1, 2, 3, 4]
    assert f"byte offset {frames[3].offset}" in done.stderr


def test_unknown_run_is_bad_input(cli, tmp_path):
    (tmp_path / "runs").mkdir()
    done = cli("verify", "nope")
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert "nope" in done.stderr


class Lines:
    """Lines of a subprocess's stdout, read by a thread (so a missing line fails, not hangs)."""

    def __init__(self, stream) -> None:
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def take(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            line = self._queue.get(timeout=60)  # a guard against hanging, not a speed limit
            assert line is not None, f"stream ended after {out}"
            out.append(line)
        return out

    def rest(self) -> list[str]:
        out = []
        while (line := self._queue.get(timeout=60)) is not None:
            out.append(line)
        return out


def test_log_follow_prints_live_events_and_exits_when_the_writer_closes(cli, tmp_path):
    (tmp_path / "runs" / "live").mkdir(parents=True)
    log = str(tmp_path / "runs" / "live" / "events.log")
    writer = subprocess.Popen([sys.executable, HELPER, "hold", log], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    follower = None
    try:
        assert writer.stdout.readline().startswith("ready ")

        def tell(command: str) -> str:
            writer.stdin.write(command + "\n")
            writer.stdin.flush()
            return writer.stdout.readline().strip()

        assert tell("append 3") == "acked 1 2 3"
        follower = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "log", "live", "--follow"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = Lines(follower.stdout)
        first = [json.loads(line) for line in lines.take(3)]
        assert [(d["type"], d["seq"], d["item_id"]) for d in first] == [("started", 1, "q1"), ("started", 2, "q2"), ("started", 3, "q3")]

        assert tell("append 2") == "acked 4 5"
        assert [json.loads(line)["seq"] for line in lines.take(2)] == [4, 5]
        assert follower.poll() is None  # still following: the writer holds the log

        assert tell("append 3") == "acked 6 7 8"
        assert tell("close") == "closed"
        rest = [json.loads(line) for line in lines.rest()]
        assert [(d["seq"], d["item_id"], d["request"]) for d in rest] == [(6, "q6", {"n": 6}), (7, "q7", {"n": 7}), (8, "q8", {"n": 8})]
        assert follower.wait(timeout=60) == 0, follower.stderr.read()
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)
        writer.stdout.close()
        writer.stderr.close()
        if follower is not None:
            if follower.poll() is None:
                follower.kill()
            follower.wait()
            follower.stdout.close()
            follower.stderr.close()
    assert [e.seq for e in iter_events(log)] == list(range(1, 9))


def test_log_follow_of_a_stopped_run_named_by_its_directory_prints_everything_and_exits(cli, run, tmp_path):
    done = cli("log", str(run.parent), "--follow", cwd=tmp_path.parent)  # no runs/ there: a path
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["seq"] for line in done.stdout.splitlines()] == list(range(1, 8))


# -- ledger verify ----------------------------------------------------------------------


def test_verify_a_clean_log(cli, run):
    before = run.read_bytes()
    done = cli("verify", "r1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "ok"
    assert "6 frames, 7 events, last seq 7" in done.stdout
    assert run.read_bytes() == before


def test_verify_reports_the_offset_of_a_damaged_frame_and_changes_nothing(cli, run):
    frames = list(iter_frames(str(run)))
    flip(run, frames[2].offset + 26)
    damaged = run.read_bytes()
    done = cli("verify", "r1")
    assert done.returncode == 1
    assert "ok" not in done.stdout.splitlines()
    assert done.stderr.splitlines() == [f"corrupt frame at byte offset {frames[2].offset}: checksum mismatch"]
    assert run.read_bytes() == damaged
    assert not os.path.exists(str(run) + ".broken")


def test_verify_repair_keeps_every_readable_frame_and_saves_the_damaged_bytes(cli, run):
    frames = list(iter_frames(str(run)))
    bad = frames[2].offset
    flip(run, frames[2].end - 2)  # the trailer magic
    damaged = run.read_bytes()
    done = cli("verify", "r1", "--repair")
    assert done.returncode == 0, done.stderr
    assert f"corrupt frame at byte offset {bad}" in done.stderr
    size = run.stat().st_size
    assert f"kept 6 events ({size} bytes); dropped {len(damaged) - size} bytes" in done.stdout
    assert "salvaged 3 events after the damage (now seq 4 onwards)" in done.stdout, done.stdout
    broken = Path(str(run) + ".broken")
    assert broken.read_bytes() == damaged[bad:]
    assert run.read_bytes()[:bad] == damaged[:bad]
    again = cli("verify", "r1")
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "ok"
    events = list(iter_events(str(run)))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [type(e).__name__ for e in events[3:]] == ["Parsed", "Response", "SessionEnded"]  # the lost frame: a Response


def test_verify_repair_refuses_while_a_writer_holds_the_run(cli, run):
    frames = list(iter_frames(str(run)))
    flip(run, frames[1].offset + 40)
    damaged = run.read_bytes()
    writer = subprocess.Popen([sys.executable, HELPER, "hold", str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == f"ready {writer.pid}\n"
        done = cli("verify", "r1", "--repair")
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)
        writer.stdout.close()
        writer.stderr.close()
    assert done.returncode == 2
    assert f"locked by pid {writer.pid}" in done.stderr
    assert run.read_bytes() == damaged
