"""`ledger ls`, `ledger status` and the viewer's /api/runs say the same status and counts
(issue 11.8), and those are the log's.

Every case is a real run on the built-in simulator, then the three surfaces are read: `ls`
(piped: tab-separated; and `ls --json`), `status --json` (real subprocesses) and the viewer's
JSON API over the real app (starlette's TestClient): the run list (/api/runs) and the run's
card on the item page (/api/items). Each must match the others and a count made here
from `ledger log` (the events as JSON lines): done = keys with a `parsed` event, failed =
keys whose last word was a final `failed`, in flight = keys started and neither.

Cases: a clean finish; a finish with failures (items over --max-context fail without a
request) -> "completed, 3 failed"; a kill -9 mid-run (items left pending); a resume of it,
then its old index put back (the index a strict prefix of the log: counts are the index plus
the events after its offset); a `verify --repair` that cut replies (the index is ahead of the
log: replay); a run whose index was deleted; and a run that failed: its projections broke
mid-run, its session ended on an error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import run_cli
from llm_ledger.viewer.app import create_app

LONG = {3, 7, 11}  # items whose prompt is over --max-context: they fail finally, unsent
FIELDS = ("done", "failed", "in_flight", "pending", "planned")


def _dataset(path: Path, n: int) -> Path:
    lines = []
    for i in range(n):
        prompt = f"Question {i}?" + (" filler" * 300 if i in LONG else "") + " answer: A"
        lines.append(json.dumps({"id": f"q{i}", "prompt": prompt, "expected": "A"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _from_log(runs: Path, run: str) -> dict[str, int]:
    """The counts, folded here from `ledger log` (independent of the code under test)."""
    r = run_cli("log", run, "--runs-dir", str(runs))
    assert r.returncode == 0, r.stderr
    state: dict[tuple[str, int], str] = {}
    planned = 0
    for line in r.stdout.splitlines():
        e = json.loads(line)
        if e["type"] == "run_started":
            planned = e["items"] * int(e["config"].get("samples", 1) or 1)
        key = (e.get("item_id"), e.get("sample"))
        if key not in state and e["type"] == "failed" and not e["final"]:
            continue  # a retryable failure whose request was lost with a damaged frame
        if e["type"] == "started" or (e["type"] == "response" and state.get(key) is None):
            state[key] = "in_flight"
        elif e["type"] == "parsed":
            state[key] = "done"
        elif e["type"] == "failed" and state.get(key) != "done":
            state[key] = "failed" if e["final"] else "in_flight"
    counts = {name: sum(s == name for s in state.values()) for name in ("done", "failed", "in_flight")}
    return {**counts, "planned": planned, "pending": planned - sum(counts.values())}


def surfaces(runs: Path, run: str, client: TestClient | None = None) -> dict[str, dict]:
    """What each surface says of ``run``: status word or text, and the counts (``client``: a
    viewer that has already been asked, so that what it remembers is put to the test)."""
    ls = run_cli("ls", "--runs-dir", str(runs))
    assert ls.returncode == 0, ls.stderr
    header, *rows = [line.split("\t") for line in ls.stdout.splitlines()]
    row = dict(zip(header, next(r for r in rows if r[0] == run)))
    status = run_cli("status", run, "--json", "--runs-dir", str(runs))
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    ls_json = run_cli("ls", "--json", "--runs-dir", str(runs))
    assert ls_json.returncode == 0, ls_json.stderr
    listed = next(r for r in json.loads(ls_json.stdout) if r["run_id"] == run)
    client = client or TestClient(create_app(str(runs)))
    api = next(r for r in client.get("/api/runs").json()["runs"] if r["run_id"] == run)
    card = client.get("/api/items", params={"run": run}).json()["runs"][0]
    return {
        "ls": {"text": row["status"], **{k: int(row[k]) for k in ("done", "failed", "planned")}},
        "status": {"text": info.get("status_text", info["status"]), **{k: info[k] for k in ("done", "failed", "planned")}},
        "view": {"text": api.get("status_text", api["status"]), **{k: api[k] for k in ("done", "failed", "planned")}},
        "_status": info,
        "_view": api,
        "_ls": listed,
        "_card": card,
    }


def assert_agree(runs: Path, run: str, text: str, client: TestClient | None = None) -> dict:
    said = surfaces(runs, run, client)
    truth = _from_log(runs, run)
    expected = {"text": text, **{k: truth[k] for k in ("done", "failed", "planned")}}
    assert said["ls"] == said["status"] == said["view"] == expected, said
    assert {k: said["_status"][k] for k in FIELDS} == {k: said["_view"][k] for k in FIELDS} == truth
    # every field of `status --json` is the same in `ls --json`, /api/runs and the item page's card
    # (the card's accuracy is the one of the answers it shows, from the table)
    shared = {k: v for k, v in said["_status"].items() if k != "accuracy"}
    for other in ("_ls", "_view", "_card"):
        assert {k: said[other][k] for k in shared} == shared, (other, said[other], shared)
    assert said["_ls"]["accuracy"] == said["_view"]["accuracy"] == said["_status"]["accuracy"]
    assert said["_ls"]["model"] == said["_view"]["model"] == said["_card"]["model"] and said["_ls"]["started"]
    return said["_status"]


def test_clean_finish_and_finish_with_failures_agree(tmp_path):
    runs = tmp_path / "runs"
    data = _dataset(tmp_path / "d.jsonl", 20)
    clean = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "clean", "--parser", "choice")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    info = assert_agree(runs, "clean", "completed")
    assert (info["status"], info["done"], info["failed"], info["accuracy"]) == ("completed", 20, 0, 1.0)

    failing = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "failing", "--parser", "choice",
                      "--max-context", "200")
    assert failing.returncode == 1, failing.stdout + failing.stderr
    info = assert_agree(runs, "failing", "completed, 3 failed")
    assert (info["status"], info["done"], info["failed"], info["pending"]) == ("completed_with_failures", 17, 3, 0)
    # the 3 unsent items have an expected answer: they count as wrong, not as unscored
    summary = json.loads((runs / "failing" / "summary.json").read_bytes())
    assert (summary["scored"], summary["correct"], info["accuracy"]) == (20, 17, 17 / 20)
    rows = [json.loads(line) for line in (runs / "failing" / "responses.jsonl").read_bytes().splitlines()]
    assert sorted((r["item_id"], r["correct"]) for r in rows if r["error"]) == sorted((f"q{i}", False) for i in LONG)

    shutil.rmtree(runs / "failing" / "index.lmdb")  # no index: the same from a replay
    info = assert_agree(runs, "failing", "completed, 3 failed")
    assert info["source"] == "log"


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_kill_9_mid_run_then_resume_then_a_lagging_index_agree(tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "requests.jsonl"
    data = _dataset(tmp_path / "d.jsonl", 300)
    sim = json.dumps({"latency": 0.03, "request_log": str(log)})
    args = ["run", str(data), "--runs-dir", str(runs), "--run-id", "k", "--parser", "choice", "--concurrency", "8", "--max-context", "200", "--sim", sim]
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _lines(log) >= 60 or proc.poll() is not None)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    info = assert_agree(runs, "k", "interrupted")
    assert 0 < info["done"] < 300 and info["status"] == "interrupted"
    assert info["pending"] > 0  # items never started when the kill came
    shutil.copytree(runs / "k" / "index.lmdb", tmp_path / "old-index")

    resumed = run_cli("resume", "k", "--runs-dir", str(runs))
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr  # the 3 long items fail
    assert assert_agree(runs, "k", "completed, 3 failed")["done"] == 297

    shutil.rmtree(runs / "k" / "index.lmdb")
    shutil.copytree(tmp_path / "old-index", runs / "k" / "index.lmdb")  # an index that lags the log
    info = assert_agree(runs, "k", "completed, 3 failed")
    assert info["source"] == "index+log" and info["done"] == 297


def test_verify_repair_that_cut_replies_is_seen_by_every_surface(tmp_path):
    runs = tmp_path / "runs"
    data = _dataset(tmp_path / "d.jsonl", 40)
    done = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "r", "--parser", "choice", "--concurrency", "2",
                  "--max-context", "200")
    assert done.returncode == 1, done.stdout + done.stderr
    viewer = TestClient(create_app(str(runs)))  # one viewer, asked before and after the repair
    assert assert_agree(runs, "r", "completed, 3 failed", viewer)["done"] == 37
    path = runs / "r" / "events.log"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a bad checksum mid-log: repair keeps what precedes it
    path.write_bytes(bytes(raw))
    repaired = run_cli("verify", "r", "--repair", "--runs-dir", str(runs))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    truth = _from_log(runs, "r")  # repair kept the frames after the damage, session_ended too
    unfinished = truth["pending"] + truth["in_flight"]
    text = ", ".join(["completed", *([f"{truth['failed']} failed"] if truth["failed"] else []), f"{unfinished} pending"])
    info = assert_agree(runs, "r", text, viewer)
    assert info["done"] < 37 and info["source"] == "log"
    assert info["accuracy"] is None  # summary.json still counts the cut replies: not shown


def test_a_run_whose_session_ended_on_an_error_agrees(tmp_path):
    """The run's projections break mid-run (its conversations folder becomes a file): the
    session stops and ends with reason "error", items left pending; every surface says
    "error" with the log's counts."""
    runs, log = tmp_path / "runs", tmp_path / "requests.jsonl"
    data = _dataset(tmp_path / "d.jsonl", 300)
    sim = json.dumps({"latency": 0.03, "request_log": str(log)})
    args = ["run", str(data), "--runs-dir", str(runs), "--run-id", "e", "--parser", "choice", "--concurrency", "8", "--sim", sim]
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _lines(log) >= 40 or proc.poll() is not None)
        conversations = runs / "e" / "conversations"
        os.rename(conversations, tmp_path / "aside")
        conversations.write_bytes(b"not a folder")
    finally:
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "projections stopped" in stderr, stderr[-3000:]
    info = assert_agree(runs, "e", "error")
    assert info["status"] == "error" and info["pending"] > 0 and info["done"] < 300
