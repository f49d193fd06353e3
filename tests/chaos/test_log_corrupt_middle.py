"""A log damaged in the middle, behind what the index and the projections have applied (so
neither would read it again). Before, `ledger resume` appended the replies it paid for after
the corrupt frame, `verify --repair` cut them away with everything else after the damage,
and the next resume paid for them again.

Now: resume refuses (one line, nothing appended, nothing sent) and names `ledger verify
--repair`; repair keeps every frame it can read; the resume after it pays only for the items
whose events were in the damaged frame."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chaos.chains import REGEX_PARSER
from chaos.invariants import check_projections, read_log, reply_keys, resent
from chaos.procs import kill_when, lines_after, run_cli, start_cli
from llm_ledger.ledger.reader import iter_frames

N = 40


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A run killed after 25 requests, then reopened once by `ledger replay` (so the index and
    the projections' checkpoint have applied the whole log): (base, run dir, request log)."""
    base = tmp_path_factory.mktemp("corrupt")
    data = base / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(N)))
    req_log = base / "requests.jsonl"
    sim = json.dumps({"latency": 0.01, "request_log": str(req_log), "seed": 9})
    proc = start_cli("run", str(data), "--runs-dir", str(base / "runs"), "--run-id", "c", "--parser", REGEX_PARSER,
                     "--concurrency", "4", "--sim", sim, cwd=base)
    code, _ = kill_when(proc, lambda: lines_after(req_log, 0) >= 25, 0.02)
    assert code == -9, proc.stderr
    assert run_cli("replay", "c", "--runs-dir", str(base / "runs"), cwd=base).returncode == 0
    return base, base / "runs" / "c", req_log


def damage_a_middle_frame(run: Path) -> tuple[int, set[str]]:
    """Flip a byte inside a frame in the middle that holds a reply; returns its offset and the
    replies of every other frame (what a repair must keep)."""
    frames = list(iter_frames(str(run / "events.log")))
    middle = [f for f in frames[len(frames) // 3: 2 * len(frames) // 3] if any(e.__class__.__name__ == "Response" for e in f.events)]
    bad = middle[0]
    with open(run / "events.log", "r+b") as f:
        f.seek(bad.offset + 40)
        byte = f.read(1)
        f.seek(bad.offset + 40)
        f.write(bytes([byte[0] ^ 0x5A]))
    readable = reply_keys([e for f in frames if f is not bad for e in f.events])
    return bad.offset, readable


def test_resume_refuses_a_log_corrupt_in_the_middle_then_repair_keeps_every_readable_reply(killed, tmp_path):
    base, original, req_log = killed
    runs = tmp_path / "runs"
    run = runs / "c"
    shutil.copytree(original, run)
    bad, readable = damage_a_middle_frame(run)
    damaged, sent = (run / "events.log").read_bytes(), lines_after(req_log, 0)

    r = run_cli("resume", "c", "--runs-dir", str(runs), cwd=base)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1, r
    assert len(lines) == 1 and f"corrupt frame at byte offset {bad}" in lines[0] and "ledger verify --repair" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert (run / "events.log").read_bytes() == damaged, "the refused resume appended to the log"
    assert lines_after(req_log, 0) == sent, "the refused resume sent requests"

    r = run_cli("verify", "c", "--repair", "--runs-dir", str(runs), cwd=base)
    assert r.returncode == 0, r
    assert (run / "events.log.broken").read_bytes() == damaged[bad:]
    events, error = read_log(run / "events.log")
    assert error == "" and reply_keys(events) == readable, "repair lost replies it could read"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))

    offset = req_log.stat().st_size
    r = run_cli("resume", "c", "--runs-dir", str(runs), cwd=base)
    assert r.returncode == 0, r
    assert resent(req_log, offset, readable) == [], "a reply kept by the repair was paid for again"
    events, error = read_log(run / "events.log")
    assert error == ""
    assert {e.item_id for e in events if e.__class__.__name__ == "Parsed"} == {f"q{i}" for i in range(N)}
    assert check_projections(run, tmp_path / "scratch", repair=False) == []
    status = json.loads(run_cli("status", "c", "--json", "--runs-dir", str(runs), cwd=base).stdout)
    assert (status["status"], status["done"], status["planned"]) == ("completed", N, N), status


def _hand_made_log(run: Path, groups: list[list]) -> Path:
    """A run directory whose log holds ``groups`` (each one frame), after a run_started."""
    from llm_ledger.ledger.events import RunStarted
    from llm_ledger.ledger.writer import LogWriter

    run.mkdir()
    log = run / "events.log"
    with LogWriter.open(str(log)) as writer:
        writer.append(RunStarted(run_id="r", config={"model": "m", "samples": 1}, dataset="d.jsonl", items=1))
        for group in groups:
            writer.append_many(group)
    return log


def _index_state_and_rows(run: Path, key: tuple[str, int]) -> tuple[int, list[dict]]:
    """The index's state of ``key`` and the rows of a rebuild: what resume and readers see."""
    from llm_ledger.ledger.index import RunIndex
    from llm_ledger.ledger.layout import RunPaths
    from llm_ledger.projections.projector import rebuild

    index = RunIndex.open_for_log(str(run / "index.lmdb"), str(run / "events.log"))
    try:
        state = index.get(*key).state
    finally:
        index.close()
    rebuild(RunPaths(str(run)))
    return state, [json.loads(line) for line in (run / "responses.jsonl").read_bytes().splitlines()]


def _request(attempt: int = 1):
    from llm_ledger.ledger.events import Started

    return Started(item_id="q1", sample=0, turn=0, attempt=attempt, request={"model": "m", "messages": []}, expected="A")


def _reply(attempt: int = 1) -> list:
    from llm_ledger.ledger.events import Parsed, Response

    return [Response(item_id="q1", sample=0, turn=0, attempt=attempt, text="answer: A", final=True),
            Parsed(item_id="q1", sample=0, turn=0, parser="text", ok=True, value="A")]


def test_a_reply_whose_request_was_lost_to_damage_counts_as_done(tmp_path):
    """The frame holding q1's `started` is damaged; its reply and parse, in a later frame,
    are salvaged by repair. The reply was paid for: the index counts q1 done (resume never
    sends it again) and the rows fold shows it, without prompt or expected."""
    from llm_ledger.ledger.events import SessionStarted
    from llm_ledger.ledger.index import DONE
    from llm_ledger.ledger.maintenance import repair_log

    log = _hand_made_log(tmp_path / "r", [[SessionStarted(pid=1, reason="new")], [_request()], _reply()])
    frames = list(iter_frames(str(log)))
    raw = bytearray(log.read_bytes())
    raw[frames[2].offset + 20] ^= 0xFF  # inside the frame of q1's `started`
    log.write_bytes(bytes(raw))
    repair_log(str(log))
    state, rows = _index_state_and_rows(tmp_path / "r", ("q1", 0))
    assert state == DONE
    assert [(r["item_id"], r["response"], r["parsed"]) for r in rows] == [("q1", "answer: A", "A")]


def test_a_damaged_last_frame_the_index_applied_is_refused_not_cut(tmp_path):
    """The last frame held durable events (the index applied them after their fdatasync):
    its damage is no torn write. Resume and re-parse refuse (repair first) instead of
    cutting it and paying again for the replies it held."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"answer: A{i}", "expected": f"A{i}"}) + "\n" for i in range(6)))
    runs = tmp_path / "runs"
    assert run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "t", cwd=tmp_path).returncode == 0
    log = runs / "t" / "events.log"
    last = list(iter_frames(str(log)))[-1]
    raw = bytearray(log.read_bytes())
    raw[last.offset + 20] ^= 0xFF
    log.write_bytes(bytes(raw))
    for args in (["resume", "t"], ["replay", "t", "--reparse", "text"]):
        r = run_cli(*args, "--runs-dir", str(runs), cwd=tmp_path)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 1 and len(lines) == 1 and "ledger verify --repair" in lines[0], r.stderr
        assert log.read_bytes() == bytes(raw), f"`ledger {args[0]}` changed the log"
        assert not (runs / "t" / "events.log.broken").exists()


def test_a_failed_items_reply_whose_retry_request_was_lost_counts_as_done_everywhere(tmp_path):
    """q1 failed finally; a resume's `started` was lost to damage, its reply survived: the
    index, responses.jsonl and summary.json all say done (the folds follow next_state)."""
    from llm_ledger.ledger.events import Failed, SessionEnded, SessionStarted
    from llm_ledger.ledger.index import DONE

    failed = Failed(item_id="q1", sample=0, turn=0, attempt=1, error_type="http_error", final=True)
    _hand_made_log(tmp_path / "r", [[SessionStarted(pid=1, reason="new")], [_request(), failed],
                                    [SessionEnded(reason="completed")], [SessionStarted(pid=2, reason="resume")],
                                    _reply(2)[:1], _reply(2)[1:]])
    state, rows = _index_state_and_rows(tmp_path / "r", ("q1", 0))
    assert state == DONE
    assert [(r["item_id"], r["parsed"], r["correct"], r["error"]) for r in rows][-1] == ("q1", "A", True, None)
    summary = json.loads((tmp_path / "r" / "summary.json").read_bytes())
    assert (summary["counts"]["done"], summary["counts"]["failed"]) == (1, 0)
