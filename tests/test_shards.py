"""Sharded runs through the CLI on the simulator: the union is the unsharded run, and a shard
killed with SIGKILL is resumed without losing or re-sending anything.

One module-scoped set of runs (an unsharded run, a sharded run, a sharded run whose shard 1
is killed and then resumed) is read by every test here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.events import Response
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events
from llm_ledger.projections.merge import live_merged_events
from llm_ledger.projections.runs import RunStatus, run_status
from test_run_e2e import REGEX_PARSER, qa_records, read_jsonl, requests_of, sim_json, write_jsonl

ITEMS, SAMPLES = 40, 2
KEYS = {f"q{i}/{s}" for i in range(ITEMS) for s in range(SAMPLES)}
TIMING = ("latency", "finished_at", "seq")  # differ between any two runs


def _rows(run_dir: Path) -> dict[tuple[str, int], dict]:
    rows = {}
    for row in read_jsonl(run_dir / "responses.jsonl"):
        rows[(row["item_id"], row["sample"])] = {k: v for k, v in row.items() if k not in TIMING}
    return rows


def _durable(run_dir: Path) -> set[str]:
    keys = set()
    for shard in sorted((run_dir / "shards").glob("[0-9]*")):
        keys |= {f"{e.item_id}/{e.sample}" for e in iter_events(str(shard / "events.log")) if isinstance(e, Response)}
    return keys


def _kill_shard_mid_run(cmd: list[str], run_dir: Path, req_log: Path, out: Path) -> tuple[subprocess.CompletedProcess, RunStatus]:
    """Start a sharded run; once shard 1 runs and the simulator has seen some requests,
    read its live status, then SIGKILL shard 1's process (its pid is in its lock note).
    The coordinator goes on."""
    note = run_dir / "shards" / "1" / "events.log.lock"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60  # a hang guard only
        while not (note.exists() and len(requests_of(req_log)) >= 16):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never got going"
            time.sleep(0.005)
        live = run_status(RunPaths(str(run_dir)))
        os.kill(int(note.read_text().strip()), signal.SIGKILL)
        proc.wait(60)
    return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), ""), live


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    dataset = write_jsonl(tmp / "qa.jsonl", qa_records(ITEMS))
    common = [str(dataset), "--samples", str(SAMPLES), "--parser", REGEX_PARSER, "--sim-accuracy", "0.7",
              "--runs-dir", str(tmp / "runs")]
    plain = run_cli("run", *common, "--run-id", "plain", cwd=tmp)
    cached_log = tmp / "cached-requests.jsonl"  # a sharded rerun of plain: every reply from the cache
    cached = run_cli("run", *common, "--run-id", "cached", "--shards", "2", "--sim", sim_json(cached_log), cwd=tmp)
    # the runs below pay for their replies (--no-cache): what they test is sending
    sharded = run_cli("run", *common, "--run-id", "sharded", "--shards", "3", "--concurrency", "5", "--no-cache", cwd=tmp)
    req_log = tmp / "requests.jsonl"
    cmd = [sys.executable, "-m", "llm_ledger.cli", "run", *common, "--run-id", "killed", "--shards", "2",
           "--concurrency", "2", "--sim", sim_json(req_log, latency=0.03), "--no-cache"]
    killed, live = _kill_shard_mid_run(cmd, tmp / "runs" / "killed", req_log, tmp / "killed.out")
    durable, offset = _durable(tmp / "runs" / "killed"), req_log.stat().st_size
    status_after_kill = run_status(RunPaths(str(tmp / "runs" / "killed")))
    resumed = run_cli("resume", "killed", "--runs-dir", str(tmp / "runs"), cwd=tmp)
    return {"tmp": tmp, "runs": tmp / "runs", "plain": plain, "sharded": sharded, "killed": killed, "resumed": resumed,
            "durable": durable, "offset": offset, "req_log": req_log, "status_after_kill": status_after_kill,
            "live": live, "cached": cached, "cached_log": cached_log}


def test_sharded_run_writes_one_log_per_shard_and_merges_at_its_end(runs):
    r, run_dir = runs["sharded"], runs["runs"] / "sharded"
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shards 3 (local workers)" in r.stdout
    for k in range(3):
        first = next(iter_events(str(run_dir / "shards" / str(k) / "events.log")))
        assert first.config["shard"]["index"] == k and first.config["shard"]["of"] == 3
        assert first.config["shard"]["run"] == "sharded"
    concurrency = [next(iter_events(str(run_dir / "shards" / str(k) / "events.log"))).config["concurrency"] for k in range(3)]
    assert concurrency == [2, 2, 1]  # 5 split in three, adding up to 5
    shares = [next(iter_events(str(run_dir / "shards" / str(k) / "events.log"))).config["shard"]["planned"] for k in range(3)]
    assert sum(shares) == ITEMS * SAMPLES and all(shares)


def test_merged_rows_and_statistics_equal_an_unsharded_run(runs):
    assert runs["plain"].returncode == 0, runs["plain"].stderr
    plain, sharded = runs["runs"] / "plain", runs["runs"] / "sharded"
    assert _rows(sharded) == _rows(plain)
    assert len(_rows(sharded)) == ITEMS * SAMPLES
    a, b = (json.loads((d / "summary.json").read_text()) for d in (plain, sharded))
    for name in ("counts", "accuracy", "accuracy_ci95", "scored", "correct", "samples", "tokens", "attempts", "status"):
        assert a[name] == b[name], name
    assert 0.4 < b["accuracy"] < 0.95  # --sim-accuracy 0.7: a figure worth pooling right


def test_local_shards_serve_replies_an_earlier_run_holds_from_the_cache(runs):
    """A sharded rerun of a finished run pays for nothing: each local shard looks its requests
    up in the runs directory's cache; the merged run reads like the first, each row copied."""
    r = runs["cached"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert requests_of(runs["cached_log"]) == []
    summary = json.loads((runs["runs"] / "cached" / "summary.json").read_text())
    assert summary["cache"]["cached"] == ITEMS * SAMPLES and summary["counts"]["done"] == ITEMS * SAMPLES
    plain, cached = _rows(runs["runs"] / "plain"), _rows(runs["runs"] / "cached")
    assert cached.keys() == plain.keys()
    for key, row in cached.items():
        assert row["cached_from"]["run"] == "plain"
        assert {k: v for k, v in row.items() if k not in ("cached_from", "attempts")} == \
            {k: v for k, v in plain[key].items() if k not in ("cached_from", "attempts")}


def test_status_export_and_compare_read_the_sharded_run_as_one(runs):
    where = ("--runs-dir", str(runs["runs"]))
    status = run_status(RunPaths(str(runs["runs"] / "sharded")))
    assert (status.status, status.planned, status.done, status.source) == ("completed", 80, 80, "shards")
    assert status.summary_current and status.accuracy == json.loads(
        (runs["runs"] / "plain" / "summary.json").read_text())["accuracy"]
    out = runs["tmp"] / "sharded.csv"
    export = run_cli("export", "sharded", "csv", "-o", str(out), *where)
    assert export.returncode == 0, export.stderr
    assert len(out.read_text().splitlines()) == ITEMS * SAMPLES + 1
    compare = run_cli("compare", "plain", "sharded", *where)
    assert compare.returncode == 0, compare.stderr
    assert "only A right" in compare.stdout


def test_status_of_a_live_sharded_run_sums_its_shards(runs):
    live = runs["live"]
    assert (live.status, live.source, live.planned) == ("running", "shards", ITEMS * SAMPLES)
    assert live.done + live.in_flight + live.failed > 0
    assert live.done + live.failed + live.in_flight + live.pending == ITEMS * SAMPLES


def test_killed_shard_leaves_the_run_resumable_and_says_so(runs):
    r = runs["killed"]
    assert r.returncode == 1, r.stdout
    assert "shard 1: its process was killed (SIGKILL)" in r.stdout
    assert "resume with: ledger resume killed" in r.stdout
    status = runs["status_after_kill"]
    assert status.status == "interrupted" and status.done < ITEMS * SAMPLES
    assert status.done == len(runs["durable"])


def test_resume_after_kill_loses_nothing_and_resends_nothing_durable(runs):
    r = runs["resumed"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "running now: 1" in r.stdout  # shard 0 had finished: only shard 1 resumed
    later = Counter(f"{q['key'].rsplit('/', 1)[0]}" for q in requests_of(runs["req_log"], runs["offset"]))
    assert not set(later) & runs["durable"], "a durable reply was requested again"
    assert set(later) == KEYS - runs["durable"]  # everything else sent, each once
    assert max(later.values()) == 1
    assert {q["key"].rsplit("/", 1)[0] for q in requests_of(runs["req_log"])} == KEYS


def test_resumed_merge_equals_the_unsharded_run(runs):
    killed, plain = _rows(runs["runs"] / "killed"), _rows(runs["runs"] / "plain")
    assert killed.keys() == plain.keys()
    for key, row in plain.items():  # an item in flight at the kill was asked twice: attempts says so
        assert {k: v for k, v in killed[key].items() if k != "attempts"} == {k: v for k, v in row.items() if k != "attempts"}
    summary = json.loads((runs["runs"] / "killed" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["counts"]["done"] == ITEMS * SAMPLES


def test_event_table_is_the_k_way_merge_of_the_shard_logs_by_timestamp(runs):
    run_dir = runs["runs"] / "sharded"
    merged = list(iter_events(str(run_dir / "events.log")))
    assert list(live_merged_events(RunPaths(str(run_dir)))) == merged  # read from the shards = the merged log
    assert [e.seq for e in merged] == list(range(1, len(merged) + 1))
    items = [e for e in merged if hasattr(e, "item_id")]
    assert [e.ts for e in items] == sorted(e.ts for e in items)
    per_shard = sum(sum(1 for e in iter_events(str(run_dir / "shards" / str(k) / "events.log")) if hasattr(e, "item_id"))
                    for k in range(3))
    assert len(items) == per_shard  # every item event of every shard, once
    kinds = Counter(type(e).__name__ for e in merged)
    assert kinds["RunStarted"] == 1 and kinds["SessionStarted"] == kinds["SessionEnded"] == 1  # the shards' union
