"""`ledger import`: existing results become a run that every reader treats like a live one.

One real run (``live``: 10 items on the built-in simulator, parser ``choice``, a ``topic``
field and one named ``model`` like an export column, 3 hints wrong) is made once for the
module; its own ``responses.jsonl``, its JSONL and CSV exports and its OpenAI Batch export
are imported (the batch one with ``--dataset``), and so is
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
        out.append({"id": f"q{i}", "prompt": f"Question {i}? answer: {hint}", "expected": expected, "topic": ["x", "y"][i % 2],
                    "model": f"family-{i % 3}"})  # metadata named like a column: the export's `metadata.model`
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
    for fmt, out in (("csv", "live.csv"), ("openai-batch", "live.batch.jsonl"), ("jsonl", "live.export.jsonl")):
        done = here(base, "export", "live", fmt, "-o", str(base / out))
        assert done.returncode == 0, done.stdout + done.stderr
    imports = {
        "from-jsonl": ("responses-jsonl", str(base / "runs" / "live" / "responses.jsonl")),
        "from-csv": ("csv", str(base / "live.csv")),
        "from-export": ("responses-jsonl", str(base / "live.export.jsonl")),
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


# -- ledger's own files import as they are ----------------------------------------------

PROVENANCE = ("run_id", "finished_at", "seq")  # which run, when: the imported run's own


def by_key(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["item_id"], r["sample"]))


@pytest.mark.parametrize("run", ["from-jsonl", "from-export", "from-csv"])
def test_ledgers_own_responses_and_export_import_as_they_are(world, run):
    """Every key of responses.jsonl and column of the export (JSONL, CSV) is read as what it
    is (usage from the flat token columns, the metadata from `metadata.model`), or worked out
    anew: the rows and the summary are the live run's but for provenance and times."""
    live, got = by_key(exported(world, "live")), by_key(exported(world, run))
    assert list(got[0]) == list(live[0])  # the same columns, no metadata.* made of the file's own
    assert [k for k in live[0] if k.startswith("metadata.")] == ["metadata.model"]
    assert [[r[k] for k in r if k not in PROVENANCE] for r in got] == [[r[k] for k in r if k not in PROVENANCE] for r in live]
    done = here(world, "sql", "SELECT done, failed, scored, correct, accuracy, accuracy_reviewed, parse_success_rate, "
                "prompt_tokens, completion_tokens, latency_p50 FROM runs WHERE run_id IN ('live', ?) ORDER BY run_id = 'live'"
                .replace("?", f"'{run}'"), "--format", "json")
    assert done.returncode == 0, done.stderr
    mine, theirs = json.loads(done.stdout)
    assert mine == theirs and (mine["accuracy"], mine["prompt_tokens"]) == (0.7, sum(r["prompt_tokens"] for r in live))


def test_import_knows_every_column_ledger_writes():
    """A column added to the export or a key to responses.jsonl must be given a meaning here
    (read as what it is, or derived and worked out anew), or it would become metadata."""
    import msgspec

    from llm_ledger.projections.export import CACHE_COLUMNS, SCHEMA
    from llm_ledger.projections.fold import Row
    from llm_ledger.runners import import_formats

    written = {*SCHEMA.names, *(f.name for f in CACHE_COLUMNS), *(f.name for f in msgspec.structs.fields(Row))}
    assert written - import_formats._OWN - import_formats._DERIVED == set()


def test_no_run_adds_stray_metadata_columns_to_the_rows_view(world):
    done = here(world, "sql", "SELECT column_name FROM (DESCRIBE rows)", "--format", "json")
    assert done.returncode == 0, done.stderr
    names = [r["column_name"] for r in json.loads(done.stdout)]
    assert [n for n in names if n.startswith("metadata.")] == ["metadata.model"], names
    assert {"topic", "grader"} <= set(names)  # a dataset's field, a hand-made file's extra field


def test_ledgers_failure_text_a_list_expected_and_a_conversation_come_back(tmp_path):
    """An export's failed row keeps its error text; a list `expected` (written as JSON text)
    is a list again; a multi-turn row's conversation is the request, not its last prompt only."""
    common = {"run_id": "old", "sample": 0, "parsed": None, "correct": False, "correct_reviewed": False, "latency": 0.5,
              "attempts": 3, "finished_at": "2026-01-01T00:00:00Z", "seq": 9, "cached_from_run": None, "cached_from_seq": None}
    chat = [{"role": "user", "content": "first?"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second?"}, {"role": "assistant", "content": "answer: (C)"}]
    lines = [{**common, "item_id": "a", "prompt": "p", "response": None, "expected": "B", "prompt_tokens": None,
              "completion_tokens": None, "total_tokens": None, "error": "http_error: bad request (HTTP 400)", "conversation": None},
             {**common, "item_id": "b", "prompt": "second?", "response": "answer: (C)", "expected": '["C","c"]', "prompt_tokens": 4,
              "completion_tokens": 2, "total_tokens": 6, "error": None, "conversation": chat}]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    summary = import_file(str(path), "responses-jsonl", str(tmp_path / "runs"), "new", parser="choice")
    assert (summary["counts"]["done"], summary["counts"]["failed"], summary["accuracy"]) == (1, 1, 0.5)
    a, b = (json.loads(x) for x in (tmp_path / "runs" / "new" / "responses.jsonl").read_text().splitlines())
    assert (a["item_id"], a["error"], a["usage"], a["response"]) == ("a", "http_error: bad request (HTTP 400)", None, None)
    assert (b["expected"], b["parsed"], b["correct"], b["prompt"]) == (["C", "c"], "C", True, "second?")
    assert b["conversation"] == chat and b["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert "metadata" not in a and "metadata" not in b


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


def test_an_exported_boolean_expected_is_the_datasets_boolean_again(tmp_path):
    """The export writes `expected: true` as the text "true"; --dataset gives back its type, so
    --parser yesno scores the imported rows as it scored the live ones."""
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "y1", "prompt": "Is it?", "expected": True}) + "\n", encoding="utf-8")
    path = tmp_path / "export.jsonl"
    path.write_text(json.dumps({"run_id": "old", "item_id": "y1", "sample": 0, "prompt": "Is it?", "response": "Yes.",
                                "expected": "true", "correct": True}) + "\n", encoding="utf-8")
    runs = str(tmp_path / "runs")
    assert import_file(str(path), "responses-jsonl", runs, "with", dataset=str(data), parser="yesno")["accuracy"] == 1.0
    assert import_file(str(path), "responses-jsonl", runs, "without", parser="yesno")["accuracy"] == 0.0  # "true" is text


def test_every_import_error_is_one_line_and_a_csv_says_its_format(tmp_path):
    (tmp_path / "open.csv").write_text('id,prompt,response\nx1,p,"unterminated\n', encoding="utf-8")
    (tmp_path / "after.csv").write_text('id,prompt,response\nx1,p,"closed" then more\n', encoding="utf-8")
    (tmp_path / "results.jsonl").write_text(json.dumps({"id": "x1", "prompt": "p", "response": "r"}) + "\n", encoding="utf-8")
    cases = [(cli, ("open.csv", "--format", "csv"), "open.csv:2: a quoted value opened here is never closed"),
             (here, ("after.csv",), "after.csv:2: malformed CSV: ',' expected after '\"'"),
             (cli, ("results.jsonl",), "results.jsonl: say what it is with --format: responses-jsonl, csv or openai-batch-output"),
             (here, ("results.jsonl", "--format", "tsv"), "--format 'tsv': use one of responses-jsonl, csv, openai-batch-output")]
    for call, (name, *more), what in cases:
        done = call(tmp_path, "import", str(tmp_path / name), *more, "--run-id", "x")
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and what in done.stderr, done.stderr
        assert not (tmp_path / "runs").exists()
    done = here(tmp_path, "import", str(tmp_path / "results.jsonl"))
    assert done.returncode == 2 and done.stderr == f"error: {tmp_path / 'results.jsonl'}: name the new run with --run-id ID\n"
    (tmp_path / "good.csv").write_text("id,prompt,response\nx1,p,r\n", encoding="utf-8")
    done = here(tmp_path, "import", str(tmp_path / "good.csv"), "--run-id", "x")
    assert done.returncode == 0 and done.stdout.startswith(f"imported 1 results from {tmp_path / 'good.csv'} (as csv: its .csv suffix)")


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
