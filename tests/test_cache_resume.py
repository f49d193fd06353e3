"""The cross-run cache under kill -9, resume, a deleted store and runs in parallel.

One module fixture: a ``warm`` run pays for the even items' prompts; a ``crash`` run over all
items (every other one a cache hit) is killed with SIGKILL mid-way, then resumed; a deleted
store is then rebuilt from the logs. The simulator's request log counts what was sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.events import Response
from llm_ledger.ledger.reader import iter_events
from test_cache import PARSER, run_in_process

N = 400


def _records(ids: range) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"What is {i}? answer: A{i}", "expected": f"A{i}"} for i in ids]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _sent(log: Path, start: int = 0) -> list[str]:
    """Item keys (``q3/0/0``) of the requests the simulator received after byte ``start``."""
    if not log.exists():
        return []
    return [json.loads(line).get("key", "") for line in log.read_bytes()[start:].splitlines() if line.strip()]


def _durable(run_dir: Path) -> tuple[set[str], set[str]]:
    """Item ids with a durable reply in the log: (paid, copied from the cache)."""
    paid, copied = set(), set()
    for e in iter_events(str(run_dir / "events.log")):
        if isinstance(e, Response):
            (copied if e.cached_from is not None else paid).add(e.item_id)
    return paid, copied


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_crash")
    runs = root / "runs"
    evens = _write(root / "evens.jsonl", _records(range(0, N, 2)))
    items = _write(root / "items.jsonl", _records(range(N)))
    warm = run_in_process(runs, evens, "warm")  # no --cache: its replies are entries all the same
    log = root / "requests-crash.jsonl"
    sim = json.dumps({"request_log": str(log), "latency": 0.01})
    cmd = [sys.executable, "-m", "llm_ledger.cli", "run", str(items), "--runs-dir", str(runs), "--run-id", "crash",
           "--concurrency", "8", "--parser", PARSER, "--sim", sim, "--cache"]
    with open(root / "crash.out", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root)
        deadline = time.monotonic() + 60
        while len(_sent(log)) < N // 6 and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait()
    at_kill = _durable(runs / "crash")
    offset = log.stat().st_size
    resumed = run_cli("resume", "crash", "--runs-dir", str(runs), cwd=root)
    return {"root": root, "runs": runs, "items": items, "warm": warm, "code": code, "at_kill": at_kill,
            "log": log, "offset": offset, "resumed": resumed}


def test_the_kill_came_mid_run_with_hits_and_paid_replies(crashed):
    assert crashed["warm"]["sent"] == N // 2
    assert crashed["code"] == -signal.SIGKILL
    paid, copied = crashed["at_kill"]
    assert paid and copied and len(paid | copied) < N


def test_resume_sends_nothing_twice_and_never_a_cached_request(crashed):
    assert crashed["resumed"].returncode == 0, crashed["resumed"].stderr
    every, after = _sent(crashed["log"]), _sent(crashed["log"], crashed["offset"])
    before = every[: len(every) - len(after)]
    paid_at_kill = crashed["at_kill"][0]
    sent_ids = [k.split("/")[0] for k in before + after]
    assert not {k.split("/")[0] for k in after} & paid_at_kill  # a durable reply is never bought again
    assert not {i for i in sent_ids if int(i[1:]) % 2 == 0}  # the even items were always hits
    assert len(after) == len(set(after))
    paid, copied = _durable(crashed["runs"] / "crash")
    assert copied == {f"q{i}" for i in range(0, N, 2)} and paid == {f"q{i}" for i in range(1, N, 2)}
    summary = json.loads((crashed["runs"] / "crash" / "summary.json").read_text())
    assert summary["counts"]["done"] == N and summary["cache"]["cached"] == N // 2
    # requests sent: each odd item once, and again only if it was among the 8 in flight at the kill
    sent = len(before) + len(after)
    assert N // 2 <= sent <= N // 2 + 8, sent
    # attempts count requests, never a hit; a request out at the kill may have no durable started, and a
    # started durable at the kill may never have left (both at most the 8 in flight)
    assert N // 2 <= summary["attempts"] <= sent + 8, (summary["attempts"], sent)


def test_a_deleted_store_is_rebuilt_and_serves_the_same_hits(crashed):
    runs, items = crashed["runs"], crashed["items"]
    first = run_in_process(runs, items, "again1", cache=True)
    (runs / "cache.lmdb").unlink()
    second = run_in_process(runs, items, "again2", cache=True)
    assert (first["sent"], first["cached"]) == (second["sent"], second["cached"]) == (0, N)
    provenance = []
    for run_id in ("again1", "again2"):
        rows = [json.loads(line) for line in (runs / run_id / "responses.jsonl").read_text().splitlines()]
        provenance.append({r["item_id"]: (r["cached_from"]["run"], r["cached_from"]["seq"]) for r in rows})
    assert provenance[0] == provenance[1]
    assert {run for run, _ in provenance[0].values()} == {"warm", "crash"}  # the originals, never a copy


def test_two_runs_in_parallel_share_the_store(crashed):
    root, runs = crashed["root"], crashed["runs"]
    items = _write(root / "other.jsonl", _records(range(N, N + 100)))
    procs = []
    for run_id, extra in (("p", ["--temperature", "0"]), ("q", ["--temperature", "0", "--max-tokens", "5"])):
        cmd = [sys.executable, "-m", "llm_ledger.cli", "run", str(items), "--runs-dir", str(runs), "--run-id", run_id,
               "--parser", PARSER, *extra]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root))
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert run_in_process(runs, items, "p2", temperature=0.0)["sent"] == 0
    again = run_in_process(runs, items, "q2", temperature=0.0, max_tokens=5, samples=2)
    assert (again["sent"], again["cached"]) == (0, 200)  # temperature 0: every sample is the one request


def test_a_deleted_source_run_is_served_from_the_copies_in_other_logs(crashed, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    for run_id in ("warm", "crash"):
        shutil.copytree(crashed["runs"] / run_id, runs / run_id)
    assert run_in_process(runs, crashed["items"], "before", cache=True)["sent"] == 0
    shutil.rmtree(runs / "warm")  # the run that paid for the even items
    after = run_in_process(runs, crashed["items"], "after", cache=True)
    assert (after["sent"], after["cached"]) == (0, N)  # crash's copies of warm's replies serve them
    rows = [json.loads(line) for line in (runs / "after" / "responses.jsonl").read_text().splitlines()]
    assert {r["cached_from"]["run"] for r in rows if int(r["item_id"][1:]) % 2 == 0} == {"warm"}  # paid there


def test_resume_takes_the_cache_flags_for_its_session(tmp_path):
    """Two runs stopped with every item pending (their endpoint down, --no-cache). `ledger
    resume --no-cache` sends what an earlier run answers (fresh draws); `ledger resume
    --cache` serves it from that log. The flags are the session's overrides."""
    from llm_ledger.ledger.events import SessionStarted
    from llm_ledger.runners.simulator import SimConfig, Simulator

    data = _write(tmp_path / "d.jsonl", _records(range(6)))
    runs, log = tmp_path / "runs", tmp_path / "requests.jsonl"
    sim = Simulator(SimConfig(request_log=str(log))).start()
    url, port = sim.base_url, sim.port
    common = ("--runs-dir", str(runs), "--base-url", url, "--model", "sim-1", "--temperature", "0", "--parser", PARSER)
    try:
        assert run_cli("run", str(data), *common, "--run-id", "a", cwd=tmp_path).returncode == 0
    finally:
        sim.stop()
    for run_id in ("b", "c"):  # the endpoint down: every item left pending (exit 75)
        r = run_cli("run", str(data), *common, "--run-id", run_id, "--no-preflight", "--give-up-after", "0.5", "--no-cache",
                    cwd=tmp_path)
        assert r.returncode == 75, (r.stdout, r.stderr)
    sim = Simulator(SimConfig(request_log=str(log)), port=port).start()
    try:
        start = log.stat().st_size
        r = run_cli("resume", "b", "--runs-dir", str(runs), "--no-cache", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert sorted(_sent(log, start)) == [f"q{i}/0/0" for i in range(6)]
        start = log.stat().st_size
        r = run_cli("resume", "c", "--runs-dir", str(runs), "--cache", "--cache-max-age", "1h", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert _sent(log, start) == []
    finally:
        sim.stop()
    overrides = [e.overrides for e in iter_events(str(runs / "c" / "events.log")) if isinstance(e, SessionStarted)]
    assert overrides == [{}, {"cache": True, "cache_max_age": 3600.0}]
    assert _durable(runs / "c") == (set(), {f"q{i}" for i in range(6)})
    r = run_cli("resume", "c", "--runs-dir", str(runs), "--cache-max-age", "soon", cwd=tmp_path)
    assert r.returncode == 2 and "--cache-max-age 'soon'" in r.stderr and "Traceback" not in r.stderr
