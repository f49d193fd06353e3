"""Logs written by released format versions keep replaying (tests/fixtures/v*/events.log).

The fixture is checked in and never regenerated: if one of these tests fails, the change
broke old logs -- fix the change, not the fixture.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from llm_ledger.ledger.events import Failed, Parsed, Paused, Response, Resumed, RunStarted, SessionEnded, SessionStarted, Started, Usage
from llm_ledger.ledger.index import FAILED, IN_FLIGHT, RunIndex
from llm_ledger.ledger.maintenance import verify_log
from llm_ledger.ledger.reader import iter_events, iter_frames
from llm_ledger.ledger.writer import LogWriter

V1 = Path(__file__).parent / "fixtures" / "v1" / "events.log"
V1_SHA256 = "dd571c01e847019b3a06acba23cc88da78e053261ef203bdbbb14dc8dfe57cb6"
ENDPOINT = "http://127.0.0.1:1/v1"
MESSAGES = [{"role": "user", "content": "Capital of France?"}]
PARIS = "Paris — la Ville Lumière ✨"

V1_EVENTS = [
    RunStarted(seq=1, ts=1795359526.622093, run_id="fixture-v1", config={"model": "sim", "samples": 2, "temperature": 0.0}, dataset="data.jsonl", dataset_sha256="ab" * 32, items=2, version="0.1.0"),
    SessionStarted(seq=2, ts=1795359526.624028, pid=4242, host="fixture-host", version="0.1.0", reason="new"),
    Started(seq=3, ts=1795359526.6276498, item_id="q1", sample=0, request={"model": "sim", "messages": MESSAGES}, endpoint=ENDPOINT),
    Started(seq=4, ts=1795359526.6276498, item_id="q1", sample=1, request={"model": "sim", "messages": MESSAGES}, endpoint=ENDPOINT),
    Failed(seq=5, ts=1795359526.6295195, item_id="q1", sample=1, attempt=1, error_type="RateLimitError", message="429 Too Many Requests", status=429, retryable=True, final=False),
    Paused(seq=6, ts=1795359526.6315937, endpoint=ENDPOINT, reason="circuit open"),
    Resumed(seq=7, ts=1795359526.632586, endpoint=ENDPOINT),
    Response(seq=8, ts=1795359526.6356108, item_id="q1", sample=0, text=PARIS, finish_reason="stop", usage=Usage(prompt_tokens=12, completion_tokens=7, total_tokens=19), latency=0.25, raw={"id": "cmpl-1"}),
    Parsed(seq=9, ts=1795359526.6356108, item_id="q1", sample=0, parser="text", parser_version="1", ok=True, value=PARIS),
    Started(seq=10, ts=1795359526.6382263, item_id="q2", sample=0, turn=1, attempt=2, request={"prompt": "2+2"}),
    Failed(seq=11, ts=1795359526.6392965, item_id="q2", sample=0, turn=1, attempt=2, error_type="BadRequest", message="400", status=400, final=True),
    SessionEnded(seq=12, ts=1795359526.6424875, reason="interrupted"),
]


@pytest.fixture
def v1_run(tmp_path) -> Path:
    """A copy of the fixture as a run directory (the checked-in file is never touched)."""
    assert hashlib.sha256(V1.read_bytes()).hexdigest() == V1_SHA256, "the v1 fixture was modified"
    run = tmp_path / "runs" / "v1run"
    run.mkdir(parents=True)
    shutil.copyfile(V1, run / "events.log")
    return run


def test_v1_header_and_frames(v1_run):
    data = (v1_run / "events.log").read_bytes()
    assert data[:16] == b"LEDGRLOG\x01\x00\x00\x00\x00\x00\x00\x00"
    frames = list(iter_frames(str(v1_run / "events.log")))
    assert [(f.offset, f.end, f.first_seq, len(f.events)) for f in frames] == [
        (16, 271, 1, 1), (271, 393, 2, 1), (393, 772, 3, 2), (772, 963, 5, 1), (963, 1077, 6, 1),
        (1077, 1172, 7, 1), (1172, 1564, 8, 2), (1564, 1702, 10, 1), (1702, 1871, 11, 1), (1871, 1960, 12, 1),
    ]
    assert frames[-1].end == len(data)


def test_v1_log_replays_its_events(v1_run):
    log = str(v1_run / "events.log")
    assert list(iter_events(log)) == V1_EVENTS
    report = verify_log(log)
    assert report.ok and (report.frames, report.events, report.last_seq) == (10, 12, 12)


def test_v1_log_can_be_resumed_and_indexed(v1_run):
    log = str(v1_run / "events.log")
    with LogWriter.open(log) as writer:
        assert writer.recovered.cut_bytes == 0
        index = RunIndex.open_for_log(str(v1_run / "index.lmdb"), log)
        writer.add_listener(index.apply)
        assert writer.append(SessionStarted(pid=1, reason="resume")).seq == 13
    try:
        assert index.counts() == {"pending": 1, "in_flight": 1, "done": 1, "failed": 1, "planned": 4, "applied_seq": 13, "status": "running"}
        keys = sorted({(e.item_id, e.sample) for e in iter_events(log) if hasattr(e, "item_id")})
        assert [key for key in keys if index.get(*key).state in (IN_FLIGHT, FAILED)] == [("q1", 1), ("q2", 0)]
    finally:
        index.close()
    assert list(iter_events(log))[:12] == V1_EVENTS


def test_ledger_log_prints_the_v1_events(cli, v1_run):
    done = cli("log", "v1run", "--runs-dir", str(v1_run.parent))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(d["type"], d["seq"], d["ts"]) for d in lines] == [(type(e).__struct_config__.tag, e.seq, e.ts) for e in V1_EVENTS]
    assert lines[0]["run_id"] == "fixture-v1" and lines[0]["config"] == {"model": "sim", "samples": 2, "temperature": 0.0}
    assert lines[2]["request"]["messages"] == MESSAGES
    assert {k: lines[7][k] for k in ("item_id", "sample", "text", "usage")} == {
        "item_id": "q1",
        "sample": 0,
        "text": PARIS,
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
    assert (lines[10]["item_id"], lines[10]["status"], lines[10]["final"]) == ("q2", 400, True)
    assert list(lines[11])[:4] == ["type", "seq", "ts", "reason"]  # the tag first; later fields may only be added
    assert [lines[11][k] for k in ("type", "seq", "ts", "reason")] == ["session_ended", 12, 1795359526.6424875, "interrupted"]
