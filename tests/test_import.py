"""`ledger import`: existing results become a run that every reader treats like a live one.

One real run (``live``: 10 items on the built-in simulator, parser ``choice``, a ``topic``
field, 3 hints wrong) is made once for the module; its own ``responses.jsonl``, its CSV
export and its OpenAI Batch export are imported (the batch one with ``--dataset``), and so is
a hand-made responses file (``item_id``/``messages``/``usage``/``latency``/extra fields, two
samples, a failed line). Each imported run is then read by compare, export, status and sql
and checked against the live run or the file. Bad files: ``file:line: what``, exit 2, no run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.reader import iter_events
from llm_ledger.runners.importer import import_file

N = 10
WRONG = {2, 5, 7}  # items whose hint is not the expected answer
KEEP = ("item_id", "sample", "model", "prompt", "response", "parsed", "expected", "correct", "topic")


def records() -> list[dict]:
    out = []
    for i in range(N):
        expected = "ABCD"[i % 4]
        hint = "ABCD"[(i + 1) % 4] if i in WRONG else expected
        out.append({"id": f"q{i}", "prompt": f"Question {i}? answer: {hint}", "expected": expected, "topic": ["x", "y"][i % 2]})
    return out


HAND = [
    {"item_id": "h1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "response": "The answer is (B)", "expected": "B", "model": "old-model", "usage": {"prompt_tokens": 7, "completion_tokens": 3},
     "latency": 0.25, "grader": "alice", "correct": False},
    {"item_id": "h1", "sample": 1, "prompt": "2+2?", "response": "I think A", "expected": "B", "model": "old-model"},
    {"id": 7, "prompt": "Pick one", "response": None, "error": "timeout after 60 s", "expected": "C"},
]


def cli(base: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, "--runs-dir", str(base / "runs"), cwd=base)


def here(base: Path, *args: str) -> subprocess.CompletedProcess:
    """A command in-process (Typer's runner): no interpreter start-up."""
    from typer.testing import CliRunner

    from llm_ledger.cli.app import _register, app

    _register()
    r = CliRunner().invoke(app, [*args, "--runs-dir", str(base / "runs")])
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("import")
    data = base / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records()), encoding="utf-8")
    (base / "hand.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HAND), encoding="utf-8")
    done = cli(base, "run", str(data), "--run-id", "live", "--parser", "choice", "--concurrency", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    for fmt, out in (("csv", "live.csv"), ("openai-batch", "live.batch.jsonl")):
        done = here(base, "export", "live", fmt, "-o", str(base / out))
        assert done.returncode == 0, done.stdout + done.stderr
    imports = {
        "from-jsonl": ("responses-jsonl", str(base / "runs" / "live" / "responses.jsonl")),
        "from-csv": ("csv", str(base / "live.csv")),
        "from-batch": ("openai-batch-output", str(base / "live.batch.jsonl"), "--dataset", str(data)),
    }
    for run_id, (fmt, path, *more) in imports.items():
        done = here(base, "import", path, "--format", fmt, "--run-id", run_id, "--parser", "choice", *more)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"imported {N} results from {path} into run {run_id}"), done.stdout
    done = here(base, "import", str(base / "hand.jsonl"), "--format", "responses-jsonl", "--run-id", "hand", "--parser", "choice")
    assert done.returncode == 0, done.stdout + done.stderr
    return base


def exported(base: Path, run: str) -> list[dict]:
    out = base / f"{run}.parquet"
    done = here(base, "export", run, "parquet", "-o", str(out))
    assert done.returncode == 0, done.stderr
    return pq.read_table(out).to_pylist()


@pytest.mark.parametrize("run", ["from-jsonl", "from-csv", "from-batch"])
def test_an_imported_run_exports_the_live_runs_rows(world, run):
    live = exported(world, "live")
    got = exported(world, run)
    # an imported run's rows come in its file's order (a responses.jsonl is in the order replies came)
    def order(r):
        return int(r["item_id"][1:]), r["sample"]

    got, live = sorted(got, key=order), sorted(live, key=order)
    assert [{k: r[k] for k in KEEP} for r in got] == [{k: r[k] for k in KEEP} for r in live]
    assert [r["correct"] for r in got] == [i not in WRONG for i in range(N)]
    if run != "from-batch":  # (a Batch output file has no times)
        assert [r["latency"] for r in got] == [r["latency"] for r in live]
    assert [r["total_tokens"] for r in got] == [r["total_tokens"] for r in live]


@pytest.mark.parametrize("run", ["from-jsonl", "from-csv", "from-batch"])
def test_compare_and_status_treat_it_like_the_live_run(world, run):
    done = here(world, "compare", "live", run, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    pair = result["pairs"][0]
    assert pair["agreement"] == 1.0 and (pair["only_a_correct"], pair["only_b_correct"]) == (0, 0), pair
    assert [r["accuracy"] for r in result["runs"]] == [(N - len(WRONG)) / N] * 2
    status = json.loads(here(world, "status", run, "--json").stdout)
    assert (status["status"], status["done"], status["failed"], status["accuracy"]) == ("completed", N, 0, 0.7)


def test_the_log_says_where_each_event_came_from(world):
    path = world / "live.batch.jsonl"
    events = list(iter_events(str(world / "runs" / "from-batch" / "events.log")))
    assert events[0].source == "imported" and events[0].dataset == str(path)
    assert events[0].config["parser"] == "choice" and events[0].config["model"] == "sim-1"
    lines = {json.loads(line)["custom_id"]: n for n, line in enumerate(path.read_text().splitlines(), 1)}
    kinds = {}
    for event in events:
        tag = type(event).__struct_config__.tag
        kinds[tag] = kinds.get(tag, 0) + 1
        if tag in ("started", "response"):
            assert event.imported.file == str(path) and event.imported.line == lines[event.item_id]
    assert kinds == {"run_started": 1, "session_started": 1, "started": N, "response": N, "parsed": N, "session_ended": 1}
    live = list(iter_events(str(world / "runs" / "live" / "events.log")))
    assert live[0].source == "" and all(getattr(e, "imported", None) is None for e in live)


def test_sql_reads_imported_and_live_runs_alike(world):
    done = here(world, "sql", "SELECT run_id, source, status, done, accuracy FROM runs ORDER BY run_id", "--format", "json")
    assert done.returncode == 0, done.stderr
    runs = {r["run_id"]: r for r in json.loads(done.stdout)}
    assert runs["live"]["source"] == "" and runs["from-csv"]["source"] == "imported"
    assert {runs[r]["accuracy"] for r in ("live", "from-jsonl", "from-csv", "from-batch")} == {0.7}
    done = here(world, "sql", "SELECT run_id, count(*) AS n, avg(correct) AS acc FROM rows WHERE run_id <> 'hand' "
                "GROUP BY run_id", "--format", "json")
    assert {(r["n"], r["acc"]) for r in json.loads(done.stdout)} == {(N, 0.7)}


def test_a_hand_made_file_is_parsed_and_scored_like_a_live_reply(world):
    rows = {(r["item_id"], r["sample"]): r for r in exported(world, "hand")}
    assert set(rows) == {("h1", 0), ("h1", 1), ("7", 0)}
    first = rows[("h1", 0)]
    assert (first["parsed"], first["correct"], first["model"], first["prompt"]) == ("B", True, "old-model", "2+2?")
    assert (first["prompt_tokens"], first["completion_tokens"], first["total_tokens"], first["latency"]) == (7, 3, 10, 0.25)
    assert first["grader"] == "alice"  # another field: metadata; `correct` is recomputed, not kept
    assert (rows[("h1", 1)]["parsed"], rows[("h1", 1)]["correct"]) == ("A", False)
    failed = rows[("7", 0)]
    assert failed["correct"] is False and "timeout after 60 s" in failed["error"] and failed["response"] is None
    status = json.loads(here(world, "status", "hand", "--json").stdout)
    assert (status["planned"], status["done"], status["failed"]) == (4, 2, 1)  # 2 ids x 2 samples; one never answered


def test_an_imported_run_is_never_added_to_nor_resumed(world):
    log = world / "runs" / "hand" / "events.log"
    before = log.read_bytes()
    again = here(world, "import", str(world / "hand.jsonl"), "--format", "responses-jsonl", "--run-id", "hand")
    assert again.returncode == 2 and "run hand already exists" in again.stderr
    resumed = here(world, "resume", "hand")
    assert resumed.returncode == 2 and "imported" in resumed.stderr and "nothing to send" in resumed.stderr
    assert log.read_bytes() == before


# -- bad input: file:line, exit 2, nothing written ------------------------------------------


BAD_JSONL = [
    ('{"id": "a", "prompt": "p", "response": "r"}\n{"prompt": "p", "response": "r"}\n', 2, "needs an id"),
    ('{"id": "a", "response": "r"}\n', 1, "needs the prompt"),
    ('{"id": "a", "prompt": "p", "messages": [{"role": "user", "content": "p"}], "response": "r"}\n', 1, "both 'prompt' and 'messages'"),
    ('{"id": "a", "prompt": "p"}\n', 1, "needs 'response'"),
    ('{"id": "a", "prompt": "p", "response": 3}\n', 1, "'response' must be a string"),
    ('\n{"id": "a", "prompt": "p", "response": "r", "sample": -1}\n', 2, "'sample' must be an integer >= 0"),
    ('{"id": "a", "prompt": "p", "response": "r", "usage": {"prompt_tokens": "x"}}\n', 1, "'usage' must be"),
    ('{"id": "a", "prompt": "p", "response": "r", "latency": -2}\n', 1, "'latency' must be"),
    ('{"id": "a", "prompt": "p", "response": "r"}\n{"id": "a", "prompt": "q", "response": "s"}\n', 2, "again (first at line 1)"),
    ('{"id": "a", "prompt": "p", "response": "r"}\nnot json\n', 2, "not valid JSON"),
    ('[1, 2]\n', 1, "expected a JSON object"),
    ('{"id": "a", "prompt": "p", "response": "r", "expected": 18446744073709551616}\n', 1, "cannot be stored"),
]


@pytest.mark.parametrize("text,line,what", BAD_JSONL)
def test_a_bad_responses_line_is_named_and_nothing_is_written(tmp_path, text, line, what):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        import_file(str(path), "responses-jsonl", str(tmp_path / "runs"), "bad")
    assert str(caught.value).startswith(f"{path}:{line}: ") and what in str(caught.value), str(caught.value)
    assert not (tmp_path / "runs" / "bad").exists()


def test_bad_csv_and_batch_lines_through_the_command(tmp_path):
    (tmp_path / "bad.csv").write_text("id,prompt,response,sample\na,p,r,0\nb,p,r,two\n", encoding="utf-8")
    batch = {"custom_id": "q1", "response": {"status_code": 200, "body": {"choices": []}}, "error": None}
    (tmp_path / "bad.batch.jsonl").write_text(json.dumps({**batch, "custom_id": None}) + "\n", encoding="utf-8")
    (tmp_path / "bad2.batch.jsonl").write_text(json.dumps(batch) + "\n", encoding="utf-8")
    cases = [("bad.csv", "csv", 3, "column 'sample' must be a number"),
             ("bad.batch.jsonl", "openai-batch-output", 1, "needs 'custom_id'"),
             ("bad2.batch.jsonl", "openai-batch-output", 1, "'response.body.choices' must be a non-empty list")]
    for n, (name, fmt, line, what) in enumerate(cases):
        call = cli if n == 0 else here  # one real process: the exit code and stderr as a shell sees them
        done = call(tmp_path, "import", str(tmp_path / name), "--format", fmt, "--run-id", "bad")
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / name}:{line}: ") and what in lines[0], done.stderr
        assert not (tmp_path / "runs").exists()


def test_a_batch_output_with_failures_and_unknown_ids(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records()[:3]), encoding="utf-8")
    body = {"model": "gpt-x", "choices": [{"message": {"role": "assistant", "content": "answer: A"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    lines = [
        {"id": "b1", "custom_id": "q0", "response": {"status_code": 200, "body": body}, "error": None},
        {"id": "b2", "custom_id": "q1", "response": None, "error": {"code": "rate_limit_exceeded", "message": "slow down"}},
        {"id": "b3", "custom_id": "q2", "response": {"status_code": 400, "body": {"error": {"message": "bad request"}}}, "error": None},
    ]
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    summary = import_file(str(path), "openai-batch-output", str(tmp_path / "runs"), "b", dataset=str(data), parser="choice")
    assert summary["counts"] == {"planned": 3, "done": 1, "failed": 2, "pending": 0}
    assert summary["model"] == "gpt-x" and summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["latency_s"]["p50"] is None  # no times in a Batch output: none made up
    failed = [json.loads(x) for x in (tmp_path / "runs" / "b" / "responses.jsonl").read_text().splitlines()]
    assert {r["item_id"]: r["error"] for r in failed if r["error"]} == {
        "q1": "rate_limit_exceeded: slow down", "q2": "http_error: bad request (HTTP 400)"}
    lines[0]["custom_id"] = "zz"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    with pytest.raises(InputError, match=r"out.jsonl:1: custom_id 'zz' is not an id of --dataset"):
        import_file(str(path), "openai-batch-output", str(tmp_path / "runs"), "c", dataset=str(data))
    assert not (tmp_path / "runs" / "c").exists()


def test_the_viewer_shows_an_imported_run_beside_the_live_one(world):
    from starlette.testclient import TestClient

    from llm_ledger.viewer.app import create_app

    client = TestClient(create_app(str(world / "runs")))
    listed = {r["run_id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert listed["from-batch"]["status"] == "completed" and listed["from-batch"]["done"] == N
    data = client.get("/api/items?run=live&run=from-batch&size=100").json()
    assert data["items"] == N and data["disagreements"] == 0 and data["notes"] == []
    assert "topic" in data["fields"]
