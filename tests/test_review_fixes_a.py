"""Three review findings: `ledger import` redacts the API key as a run does; a damaged
``reviews.jsonl`` is an error (or, where every run's reviews are read, a warning), never
"no reviews"; `ledger sql -o` with a suffix it does not write refuses rather than writing a
text table under that name."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli

KEY = "sk-LIVEKEY1234567890abcdef"


def cli(base: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, "--runs-dir", str(base / "runs"), cwd=base, env=env)


def files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_import_redacts_the_key_in_every_file_of_the_run(tmp_path):
    lines = [
        {"id": "q2", "prompt": "hi", "error": f"Incorrect API key provided: {KEY}"},
        {"id": "q3", "prompt": f"echo {KEY}", "response": f"the key is {KEY}", "metadata_note": KEY,
         "metadata": {"k": KEY}},
    ]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    done = cli(tmp_path, "import", "r.jsonl", "--format", "responses-jsonl", "--run-id", "imp",
               env={"OPENAI_API_KEY": KEY})
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "runs" / "imp"
    assert files_holding(run, KEY.encode()) == []
    assert KEY not in done.stdout + done.stderr
    failure = json.loads((run / "failures.jsonl").read_text(encoding="utf-8"))
    assert failure["message"] == "Incorrect API key provided: [redacted]"
    rows = {r["item_id"]: r for r in map(json.loads, (run / "responses.jsonl").read_text(encoding="utf-8").splitlines())}
    assert rows["q3"]["response"] == "the key is [redacted]"
    assert "events.log" in files_holding(run, b"[redacted]")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Three imported runs of the same two items; r1 has a review, then a damaged reviews.jsonl."""
    from llm_ledger.runners.importer import import_file

    base = tmp_path_factory.mktemp("damaged-reviews")
    data = base / "s.jsonl"
    data.write_text('{"id":"a","prompt":"hi","response":"x"}\n{"id":"b","prompt":"hi","response":"y"}\n',
                    encoding="utf-8")
    for run_id in ("r1", "r2", "r3"):
        import_file(str(data), "responses-jsonl", str(base / "runs"), run_id)
    done = cli(base, "review", "r1", "a", "--correct")
    assert done.returncode == 0, done.stdout + done.stderr
    good = (base / "runs" / "r1" / "reviews.jsonl").read_bytes()
    assert good.count(b"\n") == 1
    (base / "runs" / "r1" / "reviews.jsonl").write_bytes(good + b'{"item_id": broken\n')
    return base


def test_a_damaged_reviews_file_is_said_in_one_line_not_read_as_none(runs):
    where = "r1/reviews.jsonl:2: damaged"
    shown = cli(runs, "show", "r1", "a")
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    [line] = shown.stderr.strip().splitlines()
    assert line.startswith("error: ") and where in line and "`ledger replay r1 --rebuild`" in line

    sql = cli(runs, "sql", "select count(*) as n from reviews", "--format", "json")
    assert sql.returncode == 0 and json.loads(sql.stdout) == [{"n": 0}]
    assert where in sql.stderr and "Traceback" not in sql.stderr

    compared = cli(runs, "compare", "r2", "r3")  # r1 is only a sibling its reviews would carry from
    assert compared.returncode == 0 and "Traceback" not in compared.stderr
    [warning] = compared.stderr.strip().splitlines()
    assert warning.startswith("warning: ") and where in warning and "not applied" in warning


def test_the_viewer_answers_with_a_damaged_reviews_file(runs, capfd):
    from starlette.testclient import TestClient

    from llm_ledger.viewer.app import create_app

    client = TestClient(create_app(str(runs / "runs")))
    page = client.get("/api/items?run=r1&run=r2")
    assert page.status_code == 200 and len(page.json()["rows"]) == 2
    assert "r1/reviews.jsonl:2: damaged" in capfd.readouterr().err


def test_a_rebuild_writes_the_reviews_file_again(runs):
    done = cli(runs, "replay", "r1", "--rebuild")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = (runs / "runs" / "r1" / "reviews.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(r)["verdict"] for r in rows] == ["correct"]
    sql = cli(runs, "sql", "select count(*) as n from reviews", "--format", "json")
    assert json.loads(sql.stdout) == [{"n": 1}] and sql.stderr == ""


def test_sql_refuses_an_output_suffix_it_does_not_write(tmp_path):
    (tmp_path / "runs").mkdir()
    done = cli(tmp_path, "sql", "select 1 as x", "-o", "out.xlsx")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "error: out.xlsx: suffix .xlsx: use .csv, .json, .parquet, .txt, or --format"
    assert not (tmp_path / "out.xlsx").exists()
    forced = cli(tmp_path, "sql", "select 1 as x", "-o", "out.xlsx", "--format", "csv")
    assert forced.returncode == 0 and (tmp_path / "out.xlsx").read_text(encoding="utf-8") == "\"x\"\n1\n"
