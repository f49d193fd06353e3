"""Resume: kill -9 at random moments, resume, and prove that nothing is lost or paid twice.

The proof uses two independent records: the run's log (which replies were durable at the
moment of each kill, read right after the kill) and the simulator's request log (which
requests were sent afterwards). A key whose reply was durable must never be requested again.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.events import Failed, Response, SessionEnded, SessionStarted, Started
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events
from llm_ledger.projections.projector import rebuild
from test_run_e2e import (
    REGEX_PARSER,
    qa_records,
    read_jsonl,
    requests_of,
    sim_json,
    write_jsonl,
)


def _count_lines(path: Path, start: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _kill_after(cmd: list[str], req_log: Path, target: int, pause: float, out: Path) -> int:
    """Start ``cmd``; once the simulator has seen ``target`` new requests (and a further
    ``pause`` seconds), SIGKILL it. Returns the process's return code (-9 when killed)."""
    start = _size(req_log)
    with open(out, "ab") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=sink)
        try:
            deadline = time.monotonic() + 120  # a hang guard only
            while _count_lines(req_log, start) < target and proc.poll() is None:
                assert time.monotonic() < deadline, "the run never got going"
                time.sleep(0.002)
            time.sleep(pause)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    return proc.returncode


def _keys_with_response(log: Path) -> set[str]:
    return {f"{e.item_id}/{e.sample}/{e.turn}" for e in iter_events(str(log)) if isinstance(e, Response)}


# -- 2. kill -9, resume, kill -9 again, resume to completion ---------------------------


SEEDS = [101, 202, 303]


def _kill_scenario(seed: int, tmp_path: Path) -> dict:
    """run -> kill -9 -> resume -> kill -9 -> resume to completion, kill moments drawn from ``seed``."""
    rng = random.Random(seed)
    records = qa_records(150)
    dataset = write_jsonl(tmp_path / "qa.jsonl", records)
    req_log = tmp_path / "req.jsonl"
    runs = tmp_path / "runs"
    run_dir = runs / "crashy"
    all_keys = {f"{rec['id']}/{s}/0" for rec in records for s in range(2)}
    sim = sim_json(req_log, seed=seed, latency=0.02, rate_429=0.05, retry_after=0.01)
    base = [sys.executable, "-m", "llm_ledger.cli"]
    commands = [
        base + ["run", str(dataset), "--runs-dir", str(runs), "--run-id", "crashy", "--samples", "2",
                "--concurrency", "16", "--parser", REGEX_PARSER, "--sim", sim],
        base + ["resume", "crashy", "--runs-dir", str(runs)],
    ]
    kills = []  # (return code, durable reply keys at the kill, request-log offset at the kill)
    for n, cmd in enumerate(commands):
        remaining = len(all_keys - (kills[-1][1] if kills else set()))
        target = rng.randint(10, max(11, remaining // 2))
        pause = rng.uniform(0.0, 0.15)
        code = _kill_after(cmd, req_log, target, pause, tmp_path / f"session{n}.out")
        durable = _keys_with_response(run_dir / "events.log")  # read before anything reopens the log
        kills.append((code, durable, _size(req_log)))
    final = run_cli("resume", "crashy", "--runs-dir", str(runs), cwd=tmp_path)
    return {"kills": kills, "final": final, "run_dir": run_dir, "req_log": req_log, "all_keys": all_keys}


@pytest.fixture(scope="module")
def kill_scenarios(tmp_path_factory):
    """Every seed's scenario, run side by side (each is mostly waiting on its own processes)."""
    def one(seed: int):
        try:
            return seed, _kill_scenario(seed, tmp_path_factory.mktemp(f"kill{seed}"))
        except Exception as exc:  # reported by that seed's test
            return seed, exc

    with ThreadPoolExecutor(max_workers=len(SEEDS)) as pool:
        return dict(pool.map(one, SEEDS))


@pytest.mark.parametrize("seed", SEEDS)
def test_kill9_and_resume_never_loses_or_repeats_work(kill_scenarios, tmp_path, seed):
    result = kill_scenarios[seed]
    if isinstance(result, Exception):
        raise AssertionError(f"seed={seed}: the scenario failed") from result
    kills, r, run_dir, req_log, all_keys = (result[k] for k in ("kills", "final", "run_dir", "req_log", "all_keys"))
    for n, (code, durable, _) in enumerate(kills):
        assert code == -signal.SIGKILL, f"seed={seed} session {n}: exited {code} before the kill"
        assert durable < all_keys, f"seed={seed} session {n}: killed with {len(durable)} of {len(all_keys)} done"
    kills = [(durable, offset) for _, durable, offset in kills]
    assert kills[0][0] <= kills[1][0], f"seed={seed}: a durable reply vanished from the log"
    assert r.returncode == 0, f"seed={seed}: {r.stderr}"
    assert "resume:" in r.stdout and f"{len(kills[1][0])} done" in r.stdout, f"seed={seed}: {r.stdout}"

    # No reply that reached the log was ever requested again ...
    for n, (durable, offset) in enumerate(kills):
        later = Counter(e["key"] for e in requests_of(req_log, offset))
        repeated = sorted(k for k in later if k in durable)
        assert repeated == [], f"seed={seed} kill {n}: durable replies requested again: {repeated[:10]}"
        # ... and everything unfinished at the kill was sent again.
        assert all_keys - durable <= set(later), f"seed={seed} kill {n}: unfinished keys never resent"

    events = list(iter_events(str(run_dir / "events.log")))
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), f"seed={seed}"
    replies = Counter(f"{e.item_id}/{e.sample}/{e.turn}" for e in events if isinstance(e, Response))
    assert replies == Counter(all_keys), f"seed={seed}: keys with != 1 reply in the log"
    sessions = [e for e in events if isinstance(e, SessionStarted)]
    assert [s.reason for s in sessions] == ["new", "resume", "resume"], f"seed={seed}"
    assert [e.reason for e in events if isinstance(e, SessionEnded)] == ["completed"], f"seed={seed}"
    # The last session's started events are exactly the requests the simulator saw after the last kill.
    last_session = sessions[-1].seq
    started = Counter(f"{e.item_id}/{e.sample}/{e.turn}" for e in events if isinstance(e, Started) and e.seq > last_session)
    assert started == Counter(e["key"] for e in requests_of(req_log, kills[1][1])), f"seed={seed}"

    rows = read_jsonl(run_dir / "responses.jsonl")
    assert Counter(f"{row['item_id']}/{row['sample']}/0" for row in rows) == Counter(all_keys), f"seed={seed}"
    assert all(row["correct"] is True for row in rows), f"seed={seed}"
    # A kill inside write_atomic can leave a "*.json.tmp.PID" behind: see
    # test_projections::test_open_removes_temp_files_left_by_a_killed_writer (a known bug).
    conversations = [p for p in (run_dir / "conversations").iterdir() if ".tmp." not in p.name]
    assert sorted(p.name for p in conversations) == sorted(
        f"q{k.split('/')[0]}_s{k.split('/')[1]}.json" for k in all_keys), f"seed={seed}"
    summary = json.loads((run_dir / "summary.json").read_bytes())
    assert summary["counts"] == {"planned": 300, "done": 300, "failed": 0, "pending": 0}, f"seed={seed}"
    assert summary["accuracy"] == 1.0 and summary["status"] == "completed", f"seed={seed}"

    # The live projections equal a rebuild from the log alone, byte for byte.
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for name in ("responses.jsonl", "summary.json", "projections.ckpt"):
        (copy / name).unlink()
    shutil.rmtree(copy / "conversations")
    rebuild(RunPaths(str(copy)))
    assert (copy / "responses.jsonl").read_bytes() == (run_dir / "responses.jsonl").read_bytes(), f"seed={seed}"
    assert (copy / "summary.json").read_bytes() == (run_dir / "summary.json").read_bytes(), f"seed={seed}"
    live = {p.name: p.read_bytes() for p in conversations}
    rebuilt = {p.name: p.read_bytes() for p in (copy / "conversations").iterdir()}
    assert rebuilt == live, f"seed={seed}"


# -- 4. items that fail finally, and resuming them ------------------------------------


def test_failed_items_exit_1_and_resume_retries_them_unless_skip_failed(cli, tmp_path):
    records = qa_records(10)
    dataset = write_jsonl(tmp_path / "qa.jsonl", records)
    req_log = tmp_path / "req.jsonl"
    runs = tmp_path / "runs"
    r = cli("run", str(dataset), "--runs-dir", str(runs), "--run-id", "down", "--retries", "0",
            "--sim", sim_json(req_log, rate_500=1.0))
    assert r.returncode == 1, (r.stdout, r.stderr)

    # Every item failed finally, after exactly one attempt each.
    rows = read_jsonl(runs / "down" / "responses.jsonl")
    assert sorted(row["item_id"] for row in rows) == sorted(rec["id"] for rec in records)
    for row in rows:
        assert "HTTP 500" in row["error"], row
        assert row["correct"] is False and row["parsed"] is None and row["response"] is None
        assert row["attempts"] == 1
    summary = json.loads((runs / "down" / "summary.json").read_bytes())
    assert summary["counts"] == {"planned": 10, "done": 0, "failed": 10, "pending": 0}
    assert summary["retries"] == 0 and summary["attempts"] == 10
    # (accuracy vs the rows' correct=false: see test_projections::test_failed_items_count_in_accuracy)
    assert Counter(e["outcome"] for e in requests_of(req_log)) == {"500": 10}
    failed = [e for e in iter_events(str(runs / "down" / "events.log")) if isinstance(e, Failed)]
    assert len(failed) == 10 and all(e.final and e.retryable and e.status == 500 for e in failed)

    r = cli("resume", "down", "--skip-failed", "--runs-dir", str(runs))
    assert r.returncode == 1, r.stderr
    assert "10 failed (skipped)" in r.stdout and "0 to send" in r.stdout, r.stdout
    assert len(requests_of(req_log)) == 10  # nothing sent

    # `run --run-id EXISTING` resumes too; the stored config (still all 500s) is used.
    r = cli("run", str(dataset), "--runs-dir", str(runs), "--run-id", "down")
    assert r.returncode == 1, r.stderr
    assert "10 to send" in r.stdout, r.stdout
    sent = requests_of(req_log)
    assert Counter(e["key"] for e in sent) == Counter(f"{rec['id']}/0/0" for rec in records for _ in range(2))

    rows = read_jsonl(runs / "down" / "responses.jsonl")
    assert len(rows) == 20  # a key finished again gets a new line that supersedes the old one
    last = {row["item_id"]: row for row in rows}
    assert sorted(last) == sorted(rec["id"] for rec in records)
    assert all("HTTP 500" in row["error"] and row["correct"] is False for row in last.values())
    assert [row["seq"] for row in rows] == sorted(row["seq"] for row in rows)
    # The retry continues the key's attempt numbering (row attempts: see test_projections).
    started = [e for e in iter_events(str(runs / "down" / "events.log")) if isinstance(e, Started)]
    assert Counter((e.item_id, e.attempt) for e in started) == Counter(
        (rec["id"], a) for rec in records for a in (1, 2))
    summary = json.loads((runs / "down" / "summary.json").read_bytes())
    assert summary["counts"] == {"planned": 10, "done": 0, "failed": 10, "pending": 0}
    assert summary["attempts"] == 20

    # The dataset is checked again on resume: changed -> exit 2, nothing written or sent.
    before = {p.relative_to(runs): p.read_bytes() for p in runs.rglob("*") if p.is_file() and p.suffix != ".mdb"}
    write_jsonl(dataset, records[:9] + [{**records[9], "prompt": "changed"}])
    r = cli("resume", "down", "--runs-dir", str(runs))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "changed" in r.stderr and str(dataset) in r.stderr
    after = {p.relative_to(runs): p.read_bytes() for p in runs.rglob("*") if p.is_file() and p.suffix != ".mdb"}
    assert after == before  # nothing appended, nothing rewritten
    assert len(requests_of(req_log)) == 20


def test_multi_turn_item_failed_late_resumes_from_its_last_reply(cli, tmp_path):
    """A multi-turn item that failed at turn 1 or 2 must not pay again for its earlier turns."""
    records = [{"id": f"m{i}", "turns": [f"Item {i} turn {t}. answer: R{i}-{t}" for t in range(3)],
                "expected": f"R{i}-2"} for i in range(12)]
    dataset = write_jsonl(tmp_path / "chat.jsonl", records)
    runs = tmp_path / "runs"
    req_log = tmp_path / "req.jsonl"
    r = cli("run", str(dataset), "--runs-dir", str(runs), "--run-id", "chat", "--retries", "0",
            "--parser", REGEX_PARSER, "--concurrency", "4", "--sim", sim_json(req_log, rate_500=0.35, seed=4))
    assert r.returncode == 1, r.stderr
    log = runs / "chat" / "events.log"
    replied = _keys_with_response(log)
    failed_late = {e.item_id for e in iter_events(str(log)) if isinstance(e, Failed) and e.final and e.turn > 0}
    assert failed_late, "the seed must make some item fail after its first turn"
    offset = _size(req_log)

    r = cli("resume", "chat", "--runs-dir", str(runs))
    assert r.returncode in (0, 1), r.stderr  # the same simulator faults apply again
    again = sorted(e["key"] for e in requests_of(req_log, offset) if e["key"] in replied)
    assert again == [], f"replies already in the log were requested again: {again}"


def test_multi_turn_item_in_flight_at_a_kill_continues_from_its_last_turn(cli, tmp_path):
    """Killed mid-conversation, an item resumes at the next turn with the history rebuilt."""
    records = [{"id": f"m{i}", "turns": [f"Item {i} turn {t}. answer: R{i}-{t}" for t in range(4)],
                "expected": f"R{i}-3"} for i in range(40)]
    dataset = write_jsonl(tmp_path / "chat.jsonl", records)
    req_log = tmp_path / "req.jsonl"
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "llm_ledger.cli", "run", str(dataset), "--runs-dir", str(runs), "--run-id", "chat",
           "--concurrency", "8", "--system", "Be terse.", "--parser", REGEX_PARSER,
           "--sim", sim_json(req_log, latency=0.02, seed=9)]
    code = _kill_after(cmd, req_log, 60, 0.0, tmp_path / "run.out")
    assert code == -signal.SIGKILL
    durable = _keys_with_response(runs / "chat" / "events.log")
    offset = _size(req_log)
    partial = {k.split("/")[0] for k in durable} - {k.split("/")[0] for k in durable if k.endswith("/3")}
    assert partial, "the kill must leave some conversation half done"

    r = cli("resume", "chat", "--runs-dir", str(runs))
    assert r.returncode == 0, r.stderr
    again = sorted(e["key"] for e in requests_of(req_log, offset) if e["key"] in durable)
    assert again == []
    events = list(iter_events(str(runs / "chat" / "events.log")))
    for item_id in partial:
        i = int(item_id[1:])
        last_session = [e for e in events if isinstance(e, Started) and e.item_id == item_id]
        for e in last_session:  # every request carries the full, correct history
            want = [{"role": "system", "content": "Be terse."}]
            for t in range(e.turn):
                want += [{"role": "user", "content": f"Item {i} turn {t}. answer: R{i}-{t}"},
                         {"role": "assistant", "content": f"The answer is R{i}-{t}"}]
            want.append({"role": "user", "content": f"Item {i} turn {e.turn}. answer: R{i}-{e.turn}"})
            assert e.request["messages"] == want, (item_id, e.turn)
    convs = {p.name: json.loads(p.read_bytes()) for p in (runs / "chat" / "conversations").iterdir()}
    assert len(convs) == 40
    for i in range(40):
        messages = convs[f"qm{i}_s0.json"]["messages"]
        assert len(messages) == 9 and messages[-1] == {"role": "assistant", "content": f"The answer is R{i}-3"}
    rows = read_jsonl(runs / "chat" / "responses.jsonl")
    assert len(rows) == 40 and all(row["correct"] for row in rows)


# -- first Ctrl-C: drain and exit 130 ----------------------------------------------------


def test_sigint_drains_and_exits_130_then_resume_finishes(cli, tmp_path):
    records = qa_records(120)
    dataset = write_jsonl(tmp_path / "qa.jsonl", records)
    req_log = tmp_path / "req.jsonl"
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "llm_ledger.cli", "run", str(dataset), "--runs-dir", str(runs), "--run-id", "int",
           "--concurrency", "8", "--parser", REGEX_PARSER, "--sim", sim_json(req_log, latency=0.02)]
    with open(tmp_path / "run.out", "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=sink)
        while _count_lines(req_log, 0) < 30 and proc.poll() is None:
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    events = list(iter_events(str(runs / "int" / "events.log")))
    assert isinstance(events[-1], SessionEnded) and events[-1].reason == "interrupted"
    # Drained: every request that was sent got its reply recorded; nothing left in flight.
    started = Counter(f"{e.item_id}/{e.sample}" for e in events if isinstance(e, Started))
    replied = Counter(f"{e.item_id}/{e.sample}" for e in events if isinstance(e, Response))
    assert started == replied and len(replied) < 120
    summary = json.loads((runs / "int" / "summary.json").read_bytes())
    assert summary["status"] == "interrupted"
    assert summary["counts"]["done"] == len(replied) and summary["counts"]["pending"] == 120 - len(replied)

    offset = _size(req_log)
    r = cli("resume", "int", "--runs-dir", str(runs))
    assert r.returncode == 0, r.stderr
    later = Counter(e["key"] for e in requests_of(req_log, offset))
    assert later == Counter(f"{rec['id']}/0/0" for rec in records if f"{rec['id']}/0" not in replied)
    assert len(read_jsonl(runs / "int" / "responses.jsonl")) == 120
