"""The failures projection (``failures.jsonl``): the worked example of the projection seam.

Its fold on a hand-built stream; a real run with final failures (CLI, embedded simulator over
loopback) listing exactly the items whose last row failed, byte-equal to ``ledger replay
--rebuild`` and to a fresh rebuild from the log alone; a projector killed between
checkpoints and reopened equals a rebuild; a damaged file is rewritten on open.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import msgspec

from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, SessionStarted, Started
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events, iter_frames
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections import failures
from llm_ledger.projections.projector import Projector, rebuild

from conftest import run_cli


def _stamp(events: list) -> list:
    return [msgspec.structs.replace(e, seq=i, ts=1000.0 + i) for i, e in enumerate(events, 1)]


def _start(item: str, attempt: int = 1) -> Started:
    return Started(item_id=item, attempt=attempt, request={"messages": [{"role": "user", "content": item}]}, expected="A")


def _fail(item: str, message: str, final: bool = True, attempt: int = 1) -> Failed:
    return Failed(item_id=item, attempt=attempt, error_type="server_error", message=message, status=500, final=final,
                  retryable=True, endpoint="e1")


def _reply(item: str) -> list:
    return [Response(item_id=item, text="A"), Parsed(item_id=item, value="A")]


def test_the_fold_keeps_what_failed_last_and_forgets_what_succeeded_since():
    events = _stamp([
        RunStarted(run_id="r", items=4), SessionStarted(pid=1),
        _start("a"), _fail("a", "boom"),                              # a: fails
        _start("b"), _fail("b", "busy", final=False), _fail("b", "down"),  # b: a retry, then fails
        _start("c"), _fail("c", "first"),                             # c: fails ...
        _start("d"), *_reply("d"),                                    # d: fine
        SessionStarted(pid=2, reason="resume"),
        _start("b", 2), *_reply("b"),                                 # b: a resume fixes it
        _start("c", 2), _fail("c", "second", attempt=2),              # c: ... and fails again: to the end
        _start("a", 2),                                               # a: retried, still in flight
    ])
    state = failures.FailuresState()
    changed = [failures.apply(state, e) for e in events]
    assert sum(changed) == 5  # a, b, c fail; b succeeds; c fails again
    lines = [json.loads(line) for line in failures.encode(state).splitlines()]
    assert [(x["item_id"], x["message"], x["attempt"]) for x in lines] == [("a", "boom", 1), ("c", "second", 2)]
    assert lines[0] == {"item_id": "a", "sample": 0, "turn": 0, "attempt": 1, "error_type": "server_error",
                        "message": "boom", "status": 500, "endpoint": "e1", "failed_at": events[3].ts, "seq": 4}
    assert state.in_flight == {("a", 0)}
    assert failures.encode(failures.FailuresState()) == b""


def _failed_keys(responses: bytes) -> list[tuple[str, int]]:
    """The keys whose last responses.jsonl row is a failure, in the order those rows came."""
    last: dict[tuple[str, int], dict] = {}
    for line in responses.splitlines():
        row = json.loads(line)
        last.pop((row["item_id"], row["sample"]), None)
        last[(row["item_id"], row["sample"])] = row
    return [k for k, row in last.items() if row["response"] is None and row["error"]]


def test_a_real_run_lists_its_failures_live_and_every_rebuild_writes_the_same_bytes(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Q{i} answer: A", "expected": "A"}) + "\n" for i in range(30)))
    runs = tmp_path / "runs"
    r = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "f", "--retries", "0", "--concurrency", "4",
                "--sim", json.dumps({"rate_500": 0.4, "seed": 5}), cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]  # some items failed finally
    run = runs / "f"
    live = (run / "failures.jsonl").read_bytes()
    lines = [json.loads(line) for line in live.splitlines()]
    expected = _failed_keys((run / "responses.jsonl").read_bytes())
    assert 0 < len(lines) < 30 and [(x["item_id"], x["sample"]) for x in lines] == expected
    assert all(x["error_type"] == "server_error" and x["status"] == 500 and x["message"] for x in lines)

    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(run / "events.log", copy / "events.log")
    rebuild(RunPaths(str(copy)))
    assert (copy / "failures.jsonl").read_bytes() == live

    r = run_cli("replay", "f", "--rebuild", "--runs-dir", str(runs), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "failures.jsonl").read_bytes() == live


def _hand_made_run(run: Path, items: int) -> RunPaths:
    run.mkdir()
    paths = RunPaths(str(run))
    with LogWriter.open(paths.log) as writer:
        writer.append_many([RunStarted(run_id="r", items=items), SessionStarted(pid=1)])
        for i in range(items):
            writer.append_many([_start(f"q{i}")])
            writer.append_many(_reply(f"q{i}") if i % 3 else [_fail(f"q{i}", f"boom {i}")])
        writer.append_many([SessionStarted(pid=2, reason="resume")])
        for i in range(0, items, 6):  # a resume fixes every other failure
            writer.append_many([_start(f"q{i}", 2)])
            writer.append_many(_reply(f"q{i}"))
    return paths


def test_a_projector_killed_between_checkpoints_is_repaired_on_open_to_a_rebuilds_bytes(tmp_path):
    paths = _hand_made_run(tmp_path / "r", 30)
    frames = list(iter_frames(paths.log))
    projector = Projector(paths, refresh=0.0, checkpoint_every=3600)  # files rewritten often, one checkpoint
    projector._open_files()
    projector.apply_frames(frames[:20])  # the first batch writes the checkpoint
    projector.apply_frames(frames[20:])  # failures.jsonl moves on; the process dies before a checkpoint
    os.truncate(paths.log, frames[50].end)  # ... and the log loses its tail, past the checkpoint
    Projector.open(paths).close()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(paths.log, copy / "events.log")
    rebuild(RunPaths(str(copy)))
    assert Path(paths.dir, "failures.jsonl").read_bytes() == (copy / "failures.jsonl").read_bytes()
    state = failures.FailuresState()
    for event in iter_events(paths.log):
        failures.apply(state, event)
    assert Path(paths.dir, "failures.jsonl").read_bytes() == failures.encode(state) != b""


def test_a_deleted_or_garbled_failures_file_is_rewritten_on_open(tmp_path):
    paths = _hand_made_run(tmp_path / "r", 12)
    Projector.open(paths).close()
    path = Path(paths.dir, "failures.jsonl")
    pristine = path.read_bytes()
    assert [json.loads(line)["item_id"] for line in pristine.splitlines()] == ["q3", "q9"]
    for damage in (path.unlink, lambda: path.write_bytes(pristine[:17]), lambda: path.write_bytes(b"x" * len(pristine))):
        damage()
        Projector.open(paths).close()
        assert path.read_bytes() == pristine


def test_rebuilding_the_conversations_alone_leaves_a_clean_checkpoint(tmp_path: Path) -> None:
    """``clean`` is what spares an open from reading every conversation file newer than the
    checkpoint: rebuilding the one directory projection must restore it, whatever else is
    rebuilt or not (rows first, then conversations, as ``bench/replay.py`` does)."""
    from llm_ledger.projections.checkpoint import read_checkpoint
    from llm_ledger.projections.projector import CONVERSATIONS, ROWS

    paths = RunPaths(str(tmp_path / "run"))
    os.makedirs(paths.dir)
    writer = LogWriter.open(paths.log)
    writer.append_many([RunStarted(run_id="r", items=2), SessionStarted(pid=1), _start("a"), *_reply("a"),
                        _start("b"), _fail("b", "boom")])
    writer.close()
    rebuild(paths, (ROWS,))
    assert not read_checkpoint(paths.checkpoint).clean  # conversations never folded: files unknown
    rebuild(paths, (CONVERSATIONS,))
    assert read_checkpoint(paths.checkpoint).clean
    assert sorted(os.listdir(paths.conversations)) == ["qa_s0.json", "qb_s0.json"]
