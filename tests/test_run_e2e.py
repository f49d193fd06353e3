"""`ledger run` end to end: the real CLI in subprocesses against the real simulator.

Every test writes its dataset to tmp_path, runs `ledger run` (embedded simulator unless a
test starts `ledger simulate` itself) and checks the files of the run directory by content
and count, cross-checked with the simulator's request log (one line per HTTP request, with
the `x-ledger-key` item/sample/turn the client sent).

The helpers at the top are imported by the other run test modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.events import Failed, Started
from llm_ledger.ledger.reader import iter_events

REGEX_PARSER = "regex:answer is (.+)$"


# -- helpers (shared with the other run test modules) ----------------------------------


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def qa_records(n: int, prefix: str = "q") -> list[dict]:
    """Items whose simulator reply is 'The answer is <expected>'."""
    return [
        {"id": f"{prefix}{i}", "prompt": f"What is item {i}? answer: A{i}", "expected": f"A{i}"}
        for i in range(n)
    ]


def sim_json(request_log: Path | None = None, **knobs) -> str:
    if request_log is not None:
        knobs["request_log"] = str(request_log)
    return json.dumps(knobs)


def requests_of(request_log: Path, start: int = 0) -> list[dict]:
    """The simulator's request log from byte offset ``start`` (one JSON object a line)."""
    if not Path(request_log).exists():
        return []
    data = Path(request_log).read_bytes()[start:]
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def only_run_dir(runs: Path) -> Path:
    dirs = [p for p in runs.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def standalone_simulator(tmp_path: Path, *args: str, port: int | None = None):
    """`ledger simulate --port P ARGS` in a subprocess; yields (base_url, port)."""
    port = port or free_port()
    log = open(tmp_path / f"simulate-{port}-{time.monotonic_ns()}.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "simulate", "--port", str(port), *args],
                            stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60  # a hang guard, not a performance threshold
        while True:
            assert proc.poll() is None, f"ledger simulate exited with {proc.returncode}"
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=2) as r:
                    assert json.loads(r.read())["data"][0]["id"]
                break
            except OSError:
                assert time.monotonic() < deadline, "ledger simulate never answered"
                time.sleep(0.05)
        yield base_url, port
    finally:
        proc.kill()
        proc.wait()
        log.close()


def conversation_files(run_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_bytes()) for p in sorted((run_dir / "conversations").iterdir())}


# -- 1. a clean run ----------------------------------------------------------------------


def test_clean_run_scores_everything_and_writes_every_projection(cli, tmp_path):
    records = qa_records(50)
    dataset = write_jsonl(tmp_path / "qa.jsonl", records)
    req_log = tmp_path / "req.jsonl"
    runs = tmp_path / "runs"

    r = cli("run", str(dataset), "--runs-dir", str(runs), "--parser", REGEX_PARSER,
            "--concurrency", "8", "--sim", sim_json(req_log, latency=0.005, seed=1))
    assert r.returncode == 0, r.stderr
    run_dir = only_run_dir(runs)
    run_id = run_dir.name

    head = r.stdout.splitlines()[:4]
    assert head[0] == f"run {run_id}", r.stdout
    assert head[1].startswith("model sim-1 @ ") and "simulator" in head[1], head
    assert head[2] == f"dataset {dataset}: 50 items", head
    assert head[3].startswith("output ") and head[3].endswith(os.path.join("runs", run_id)), head

    rows = read_jsonl(run_dir / "responses.jsonl")
    assert len(rows) == 50
    by_id = {row["item_id"]: row for row in rows}
    assert sorted(by_id) == sorted(r["id"] for r in records)
    for rec in records:
        row = by_id[rec["id"]]
        assert row["sample"] == 0
        assert row["model"] == "sim-1"
        assert row["prompt"] == rec["prompt"]
        assert row["response"] == f"The answer is {rec['expected']}"
        assert row["parsed"] == rec["expected"]
        assert row["expected"] == rec["expected"]
        assert row["correct"] is True
        assert row["attempts"] == 1 and row["error"] is None
        assert row["usage"]["total_tokens"] == row["usage"]["prompt_tokens"] + row["usage"]["completion_tokens"] > 0
        assert isinstance(row["finished_at"], float) and row["latency"] >= 0
    assert [row["seq"] for row in rows] == sorted(row["seq"] for row in rows)  # log order

    convs = conversation_files(run_dir)
    assert sorted(convs) == sorted(f"q{rec['id']}_s0.json" for rec in records)
    for rec in records:
        conv = convs[f"q{rec['id']}_s0.json"]
        assert conv["messages"] == [
            {"role": "user", "content": rec["prompt"]},
            {"role": "assistant", "content": f"The answer is {rec['expected']}"},
        ]
        assert conv["item_id"] == rec["id"] and conv["correct"] is True

    summary = json.loads((run_dir / "summary.json").read_bytes())
    assert summary["run_id"] == run_id and summary["status"] == "completed"
    assert summary["counts"] == {"planned": 50, "done": 50, "failed": 0, "pending": 0}
    assert summary["accuracy"] == 1.0 and summary["scored"] == 50 and summary["correct"] == 50
    lo, hi = summary["accuracy_ci95"]
    assert 0.9 < lo < 1.0 and hi == 1.0
    assert summary["parse_success_rate"] == 1.0
    assert summary["attempts"] == 50 and summary["retries"] == 0
    assert summary["tokens"]["total"] == sum(row["usage"]["total_tokens"] for row in rows)
    assert summary["latency_s"]["p50"] <= summary["latency_s"]["p90"] <= summary["latency_s"]["p99"]

    sent = requests_of(req_log)
    assert Counter(e["key"] for e in sent) == Counter(f"{rec['id']}/0/0" for rec in records)
    assert {e["outcome"] for e in sent} == {"ok"}


def test_samples_run_each_item_n_times(cli, tmp_path):
    records = qa_records(50)
    dataset = write_jsonl(tmp_path / "qa.jsonl", records)
    runs = tmp_path / "runs"
    r = cli("run", str(dataset), "--runs-dir", str(runs), "--samples", "3", "--parser", REGEX_PARSER,
            "--run-id", "three", "--concurrency", "16")
    assert r.returncode == 0, r.stderr
    assert ": 50 items x 3 samples\n" in r.stdout
    rows = read_jsonl(runs / "three" / "responses.jsonl")
    assert len(rows) == 150
    assert Counter((row["item_id"], row["sample"]) for row in rows) == Counter(
        (rec["id"], s) for rec in records for s in range(3))
    assert all(row["correct"] is True for row in rows)
    assert len(list((runs / "three" / "conversations").iterdir())) == 150
    summary = json.loads((runs / "three" / "summary.json").read_bytes())
    assert summary["counts"] == {"planned": 150, "done": 150, "failed": 0, "pending": 0}
    assert summary["accuracy"] == 1.0


# -- 3. faults are retried to completion -----------------------------------------------


def test_faults_are_retried_until_everything_is_done(cli, tmp_path):
    records = qa_records(60)
    dataset = write_jsonl(tmp_path / "qa.jsonl", records)
    req_log = tmp_path / "req.jsonl"
    runs = tmp_path / "runs"
    sim = sim_json(req_log, seed=5, latency=0.005, rate_429=0.1, retry_after=0.01, rate_500=0.08,
                   rate_reset=0.05, rate_malformed=0.05, rate_hang=0.03, hang_seconds=5)
    r = cli("run", str(dataset), "--runs-dir", str(runs), "--run-id", "faulty", "--parser", REGEX_PARSER,
            "--concurrency", "16", "--timeout", "1", "--retries", "8", "--sim", sim)
    assert r.returncode == 0, r.stderr
    run_dir = runs / "faulty"

    sent = requests_of(req_log)
    outcomes = Counter(e["outcome"] for e in sent)
    assert outcomes["ok"] == 60, outcomes
    faults = sum(n for o, n in outcomes.items() if o != "ok")
    assert faults > 0, outcomes

    events = list(iter_events(str(run_dir / "events.log")))
    failed = [e for e in events if isinstance(e, Failed)]
    assert len(failed) == faults  # every failed attempt is an event, and only those
    expected_types = {"429": "rate_limit", "500": "server_error", "reset": "connection",
                      "malformed": "malformed_response", "hang": "timeout"}
    assert Counter(e.error_type for e in failed) == Counter(
        expected_types[o] for o in outcomes.elements() if o != "ok"), outcomes
    for e in failed:
        assert e.retryable is True and e.final is False, e
        assert e.status == {"rate_limit": 429, "server_error": 500}.get(e.error_type), e
    started = [e for e in events if isinstance(e, Started)]
    assert len(started) == len(sent)  # one started event per request

    rows = read_jsonl(run_dir / "responses.jsonl")
    assert len(rows) == 60 and {row["item_id"] for row in rows} == {rec["id"] for rec in records}
    assert all(row["correct"] is True and row["error"] is None for row in rows)
    per_key = Counter(e["key"] for e in sent)
    for row in rows:  # attempts in the row = requests the simulator saw for that key
        assert row["attempts"] == per_key[f"{row['item_id']}/0/0"], row

    summary = json.loads((run_dir / "summary.json").read_bytes())
    assert summary["counts"] == {"planned": 60, "done": 60, "failed": 0, "pending": 0}
    assert summary["retries"] == faults > 0
    assert summary["attempts"] == len(sent)
    assert summary["accuracy"] == 1.0


# -- 5. secrets ------------------------------------------------------------------------

SECRET = "sk-test-SECRET-123456"


def test_api_key_never_reaches_disk_or_output(cli, tmp_path):
    records = qa_records(40)
    dataset = write_jsonl(tmp_path / "qa.jsonl", records)
    req_log = tmp_path / "req.jsonl"
    runs = tmp_path / "runs"
    with standalone_simulator(tmp_path, "--rate-429", "0.1", "--retry-after", "0.01", "--error-rate", "0.1",
                              "--reset-rate", "0.05", "--malformed-rate", "0.05", "--seed", "3",
                              "--request-log", str(req_log)) as (base_url, _):
        r = cli("run", str(dataset), "--runs-dir", str(runs), "--run-id", "named", "--base-url", base_url,
                "--model", "sim-1", "--api-key-env", "MY_KEY", "--retries", "8", "--parser", REGEX_PARSER,
                "--concurrency", "8", env={"MY_KEY": SECRET})
        assert r.returncode == 0, r.stderr
    assert f"model sim-1 @ {base_url}" in r.stdout

    sent = requests_of(req_log)
    assert Counter(e["outcome"] for e in sent)["ok"] == 40
    assert any(e["outcome"] != "ok" for e in sent)  # faults happened, so error paths ran
    rows = read_jsonl(runs / "named" / "responses.jsonl")
    assert len(rows) == 40 and all(row["correct"] for row in rows)

    secret = SECRET.encode()
    files = [p for p in runs.rglob("*") if p.is_file()]
    assert any(p.name == "events.log" for p in files) and any(p.suffix == ".mdb" for p in files)
    leaks = [str(p) for p in files if secret in p.read_bytes()]
    assert leaks == []
    for text in (r.stdout, r.stderr):
        assert SECRET not in text
    started = next(iter_events(str(runs / "named" / "events.log")))
    assert started.config["api_key_env"] == "MY_KEY"  # the name of the variable is recorded, never the value


# -- 7. formats ------------------------------------------------------------------------


def _csv_dataset(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "data.csv"
    lines = ["id,prompt,expected,topic"]
    lines += [f"c{i},What about {i}? answer: A{i},A{i},topic-{i % 3}" for i in range(12)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, [f"c{i}" for i in range(12)]


def _parquet_dataset(tmp_path: Path) -> tuple[Path, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    table = pa.table({
        "id": pa.array(list(range(100, 112)), pa.int64()),
        "prompt": [f"Count {i}? answer: {i * 1000:,} apples" for i in range(12)],
        "expected": pa.array([i * 1000 for i in range(12)], pa.int64()),
        "topic": [f"topic-{i % 3}" for i in range(12)],
    })
    pq.write_table(table, path)
    return path, [str(i) for i in range(100, 112)]


def _batch_dataset(tmp_path: Path) -> tuple[Path, list[str]]:
    records = [{
        "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 32,
                 "messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": f"Batch {i}. answer: A{i}"}]},
    } for i in range(12)]
    return write_jsonl(tmp_path / "batch.jsonl", records), [f"req-{i}" for i in range(12)]


FORMATS = ["csv", "parquet", "batch"]


@pytest.fixture(scope="module")
def format_runs(tmp_path_factory):
    """One run per format, side by side: {fmt: (result, runs dir, ids)}."""
    def one(fmt: str):
        base = tmp_path_factory.mktemp(fmt)
        dataset, ids = {"csv": _csv_dataset, "parquet": _parquet_dataset, "batch": _batch_dataset}[fmt](base)
        args = ["run", str(dataset), "--runs-dir", str(base / "runs"), "--run-id", fmt]
        if fmt == "csv":
            args += ["--template", "Q: {prompt} ({topic})", "--parser", "regex:answer is (A\\d+)"]
        elif fmt == "parquet":
            args += ["--template", "[{topic}] {prompt}", "--parser", "number"]
        else:
            args += ["--parser", REGEX_PARSER]
        return fmt, (run_cli(*args, cwd=base), base / "runs", ids)

    with ThreadPoolExecutor(max_workers=len(FORMATS)) as pool:
        return dict(pool.map(one, FORMATS))


@pytest.mark.parametrize("fmt", FORMATS)
def test_dataset_formats_run_to_completion(format_runs, fmt):
    r, runs, ids = format_runs[fmt]
    assert r.returncode == 0, r.stderr

    rows = read_jsonl(runs / fmt / "responses.jsonl")
    assert sorted(row["item_id"] for row in rows) == sorted(ids)
    want_correct = None if fmt == "batch" else True  # batch lines carry no expected answer
    assert all(row["correct"] is want_correct for row in rows), rows
    by_id = {row["item_id"]: row for row in rows}
    if fmt == "csv":
        for i in range(12):
            assert by_id[f"c{i}"]["prompt"] == f"Q: What about {i}? answer: A{i} (topic-{i % 3})"
    elif fmt == "parquet":
        for i in range(12):
            row = by_id[str(100 + i)]
            assert row["prompt"] == f"[topic-{i % 3}] Count {i}? answer: {i * 1000:,} apples"
            assert row["parsed"] == i * 1000 and row["expected"] == i * 1000
    else:
        started = [e for e in iter_events(str(runs / fmt / "events.log")) if isinstance(e, Started)]
        assert len(started) == 12
        for e in started:
            i = int(e.item_id.split("-")[1])
            assert e.request["model"] == "sim-1"  # the run's model, not the batch line's
            assert e.request["max_tokens"] == 32
            assert e.request["messages"] == [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": f"Batch {i}. answer: A{i}"}]
        assert sorted(p.name for p in (runs / fmt / "conversations").iterdir()) == sorted(
            f"q{i}_s0.json" for i in ids)


# -- 8. multi-turn ---------------------------------------------------------------------


def test_multi_turn_items_carry_the_whole_conversation(cli, tmp_path):
    records = [{"id": f"m{i}", "turns": [f"Item {i} turn {t}. answer: R{i}-{t}" for t in range(3)],
                "expected": f"R{i}-2"} for i in range(5)]
    dataset = write_jsonl(tmp_path / "chat.jsonl", records)
    req_log = tmp_path / "req.jsonl"
    runs = tmp_path / "runs"
    r = cli("run", str(dataset), "--runs-dir", str(runs), "--run-id", "chat", "--parser", REGEX_PARSER,
            "--sim", sim_json(req_log))
    assert r.returncode == 0, r.stderr

    sent = requests_of(req_log)
    assert len(sent) == 15
    assert Counter(e["key"] for e in sent) == Counter(f"m{i}/0/{t}" for i in range(5) for t in range(3))
    for i in range(5):  # turns of one item go in order
        keys = [e["key"] for e in sent if e["key"].startswith(f"m{i}/")]
        assert keys == [f"m{i}/0/0", f"m{i}/0/1", f"m{i}/0/2"]

    convs = conversation_files(runs / "chat")
    assert sorted(convs) == [f"qm{i}_s0.json" for i in range(5)]
    for i in range(5):
        want = []
        for t in range(3):
            want += [{"role": "user", "content": f"Item {i} turn {t}. answer: R{i}-{t}"},
                     {"role": "assistant", "content": f"The answer is R{i}-{t}"}]
        conv = convs[f"qm{i}_s0.json"]
        assert conv["messages"] == want
        assert [t["turn"] for t in conv["turns"]] == [0, 1, 2]

    rows = {row["item_id"]: row for row in read_jsonl(runs / "chat" / "responses.jsonl")}
    assert len(rows) == 5
    for i in range(5):
        assert rows[f"m{i}"]["prompt"] == f"Item {i} turn 2. answer: R{i}-2"
        assert rows[f"m{i}"]["response"] == f"The answer is R{i}-2"
        assert rows[f"m{i}"]["correct"] is True
        assert rows[f"m{i}"]["attempts"] == 3

    log = cli("log", "chat", "--runs-dir", str(runs))
    assert log.returncode == 0, log.stderr
    events = [json.loads(line) for line in log.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "run_started" and events[1]["type"] == "session_started"
    assert events[-1] == {**events[-1], "type": "session_ended", "reason": "completed"}
    started = [e for e in events if e["type"] == "started"]
    assert len(started) == 15
    for e in started:  # 2 messages per earlier turn + this turn's prompt
        assert len(e["request"]["messages"]) == 2 * e["turn"] + 1, e
    turn2 = [e for e in started if e["turn"] == 2]
    assert len(turn2) == 5
    for e in turn2:
        i = int(e["item_id"][1:])
        assert e["request"]["messages"] == [
            {"role": "user", "content": f"Item {i} turn 0. answer: R{i}-0"},
            {"role": "assistant", "content": f"The answer is R{i}-0"},
            {"role": "user", "content": f"Item {i} turn 1. answer: R{i}-1"},
            {"role": "assistant", "content": f"The answer is R{i}-1"},
            {"role": "user", "content": f"Item {i} turn 2. answer: R{i}-2"},
        ]
    responses = [e for e in events if e["type"] == "response"]
    assert len(responses) == 15
    assert [e["final"] for e in responses].count(True) == 5
