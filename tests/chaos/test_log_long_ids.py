"""Item ids longer than LMDB's key limit (511 bytes). Before, the first such id made every
index update fail -- silently -- so the index stopped there and every `ledger resume`
re-sent every item logged after it. Any id must work, and an index must never lag in
silence."""

from __future__ import annotations

import json

from chaos.chains import REGEX_PARSER
from chaos.invariants import check_final_log, check_projections, read_log, reply_keys, resent
from chaos.procs import kill_when, lines_after, run_cli, start_cli
from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, Started
from llm_ledger.ledger.index import DONE, FAILED, IN_FLIGHT, RunIndex
from llm_ledger.ledger.writer import LogWriter

N = 40


def item_id(i: int) -> str:
    """Every third id is long: 505 to 2000 bytes (ASCII here: a non-ASCII id cannot travel in
    the simulator's x-ledger-key header; the index test below has multi-byte ids)."""
    if i % 3:
        return f"q{i}"
    return (f"q{i}-" + "ab" * (250 + 60 * i))[:2000]


def test_long_item_ids_survive_a_kill_and_resume_pays_nothing_twice(tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"id": item_id(i), "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(N)))
    req_log = tmp_path / "requests.jsonl"
    runs = str(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "long"
    proc = start_cli("run", str(data), "--runs-dir", runs, "--run-id", "long", "--parser", REGEX_PARSER, "--concurrency", "4",
                     "--sim", json.dumps({"latency": 0.01, "request_log": str(req_log), "seed": 2}), cwd=tmp_path)
    code, _ = kill_when(proc, lambda: lines_after(req_log, 0) >= N // 2, 0.02)
    assert code == -9, proc.stderr
    events, error = read_log(run_dir / "events.log")
    assert error == ""
    durable, offset = reply_keys(events), req_log.stat().st_size
    assert any(len(k.encode()) > 511 for k in durable), "no long id was durable at the kill: kill later"

    r = run_cli("resume", "long", "--runs-dir", runs, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert resent(req_log, offset, durable) == [], "durable replies were requested again"
    events, error = read_log(run_dir / "events.log")
    assert error == "" and check_final_log(events, {f"{item_id(i)}/0/0" for i in range(N)}) == []
    assert check_projections(run_dir, tmp_path / "scratch", repair=False) == []

    offset = req_log.stat().st_size
    r = run_cli("resume", "long", "--runs-dir", runs, cwd=tmp_path)  # a finished run: nothing to send
    assert r.returncode == 0 and f"resume: {N} done" in r.stdout and "0 to send" in r.stdout, r.stdout
    assert lines_after(req_log, offset) == 0
    status = json.loads(run_cli("status", "long", "--json", "--runs-dir", runs, cwd=tmp_path).stdout)
    assert (status["done"], status["planned"]) == (N, N), status


def test_the_index_reads_back_every_id_at_and_past_the_key_limit(tmp_path):
    log, path = str(tmp_path / "events.log"), str(tmp_path / "index.lmdb")
    ids = ["x" * n for n in (1, 505, 506, 507, 511, 512, 5000)] + ["é" * 300, "a\x00b", "\U0001F600" * 200]
    with LogWriter.open(log) as writer:
        index = RunIndex.open_for_log(path, log)
        writer.add_listener(index.apply)
        writer.append(RunStarted(run_id="r", items=len(ids), config={"samples": 2}))
        for n, i in enumerate(ids):
            writer.append_many([Started(item_id=i, sample=1)])
            if n % 3 == 0:
                writer.append_many([Response(item_id=i, sample=1, text="t"), Parsed(item_id=i, sample=1, value="v")])
            elif n % 3 == 1:
                writer.append_many([Failed(item_id=i, sample=1, message="no", final=True)])
    assert writer.listener_errors == []
    for n, i in enumerate(ids):
        want = (DONE, FAILED, IN_FLIGHT)[n % 3]
        assert index.get(i, 1).state == want, (len(i), n)
        assert index.get(i, 0) is None
    assert sorted(i for i in ids if index.get(i, 1).state in (IN_FLIGHT, FAILED)) == sorted(i for n, i in enumerate(ids) if n % 3)
    index.close()
    index = RunIndex.open_for_log(path, log)  # reopened: trusted, nothing rebuilt or lost
    try:
        assert index.counts()["done"] == len(range(0, len(ids), 3))
    finally:
        index.close()
