"""`ledger sql`: DuckDB over the runs directory's `runs`, `rows` and `events` views.

Two real runs are made once for the module on the built-in simulator (which answers X when a
prompt ends "answer: X"): ``a`` (12 items, every hint right) and ``b`` (the same items, two
samples, the hints of items 0-5 wrong), both with a ``topic`` metadata field. What `ledger
sql` returns is compared with each run's ``responses.jsonl``, ``summary.json`` and log.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from llm_ledger.ledger.reader import iter_events
from llm_ledger.projections.sql import Catalog

N = 12
TOPICS = ("geo", "math", "history")


def answers(run: str) -> list[str]:
    right = ["ABCD"[i % 4] for i in range(N)]
    return right if run == "a" else ["ABCD"[(i + 1) % 4] if i < 6 else right[i] for i in range(N)]


def write_dataset(path: Path, run: str, n: int = N) -> Path:
    hints = answers(run) if n == N else ["ABCD"[i % 4] for i in range(n)]
    lines = [json.dumps({"id": f"q{i}", "prompt": f"Question {i}? answer: {hints[i]}", "expected": "ABCD"[i % 4],
                         "topic": TOPICS[i % 3]}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def last_rows(run_dir: Path) -> dict[tuple[str, int], dict]:
    rows = [json.loads(line) for line in (run_dir / "responses.jsonl").read_text(encoding="utf-8").splitlines()]
    return {(r["item_id"], r["sample"]): r for r in rows}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("sql")
    runs = base / "runs"

    def run(name: str, samples: int) -> subprocess.CompletedProcess:
        data = write_dataset(base / f"{name}.jsonl", name)
        return run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", name, "--parser", "choice",
                       "--samples", str(samples), "--concurrency", "4")

    with ThreadPoolExecutor(2) as pool:
        for done in pool.map(run, ("a", "b"), (1, 2)):
            assert done.returncode == 0, done.stdout + done.stderr
    return base


def sql(world: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """`ledger sql ARGS` in a real subprocess."""
    return run_cli("sql", *args, "--runs-dir", str(world / "runs"), cwd=world, input=input)


def sql_here(world: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """The same command in-process (Typer's runner): no interpreter start-up per call."""
    from typer.testing import CliRunner

    from llm_ledger.cli.app import _register, app

    _register()
    r = CliRunner().invoke(app, ["sql", *args, "--runs-dir", str(world / "runs")], input=input)
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def as_json(done: subprocess.CompletedProcess) -> list[dict]:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the views --------------------------------------------------------------------------


def test_rows_are_the_runs_responses_with_metadata_and_run_id(world):
    got = as_json(sql(world, "SELECT * FROM rows ORDER BY run_id, item_id, sample", "--format", "json"))
    want = {**{("a", *k): r for k, r in last_rows(world / "runs" / "a").items()},
            **{("b", *k): r for k, r in last_rows(world / "runs" / "b").items()}}
    assert len(got) == len(want) == N + 2 * N
    for row in got:
        line = want[(row["run_id"], row["item_id"], row["sample"])]
        for name in ("model", "prompt", "response", "parsed", "expected", "correct", "latency", "attempts", "seq"):
            assert row[name] == line[name], (name, row, line)
        assert row["topic"] == line["metadata"]["topic"]
        assert row["total_tokens"] == line["usage"]["total_tokens"]
    assert list(got[0])[:4] == ["run_id", "item_id", "sample", "topic"]  # the export's column order


def test_the_issues_example_query(world):
    got = as_json(sql_here(world, "SELECT run_id, model, avg(correct) AS accuracy, count(*) AS n FROM rows GROUP BY ALL ORDER BY run_id",
                      "--format", "json"))
    for row in got:
        lines = last_rows(world / "runs" / row["run_id"]).values()
        assert row["n"] == len(lines)
        assert row["accuracy"] == pytest.approx(sum(r["correct"] for r in lines) / len(lines))
    assert [r["accuracy"] for r in got] == [1.0, pytest.approx(0.5)]
    plain = sql_here(world, "SELECT model, avg(correct) FROM rows GROUP BY model")  # the issue's words, as a table
    assert plain.returncode == 0, plain.stderr
    assert "sim-1" in plain.stdout and "0.666666" in plain.stdout and "(1 row)" in plain.stdout


def test_runs_view_has_one_row_per_run_as_status_and_summary_say(world):
    got = as_json(sql_here(world, "SELECT * FROM runs ORDER BY run_id", "--format", "json"))
    assert [r["run_id"] for r in got] == ["a", "b"]
    for row in got:
        summary = json.loads((world / "runs" / row["run_id"] / "summary.json").read_text())
        assert row["status"] == "completed" and row["source"] == ""
        assert row["model"] == "sim-1" and row["dataset"].endswith(f"{row['run_id']}.jsonl")
        assert (row["planned"], row["done"], row["failed"], row["pending"]) == (
            summary["counts"]["planned"], summary["counts"]["done"], 0, 0)
        assert row["accuracy"] == summary["accuracy"] and row["correct"] == summary["correct"]
        assert row["prompt_tokens"] == summary["tokens"]["prompt"] and row["parser"] == "choice"
        events = list(iter_events(str(world / "runs" / row["run_id"] / "events.log")))
        assert row["events"] == events[-1].seq
        assert row["started"] < row["finished"]
    assert (got[0]["done"], got[1]["done"], got[1]["samples"]) == (N, 2 * N, 2)


def test_events_view_is_built_only_when_named(world):
    with Catalog(str(world / "runs")) as catalog:
        assert catalog.query("SELECT count(*) AS n FROM rows").column("n").to_pylist() == [3 * N]
        assert "events" not in catalog._built and "runs" not in catalog._built
        table = catalog.query("SELECT run_id, type, count(*) AS n FROM events GROUP BY ALL")
        assert "events" in catalog._built
    counted: dict[tuple[str, str], int] = {}
    for run in ("a", "b"):
        for event in iter_events(str(world / "runs" / run / "events.log")):
            key = (run, type(event).__struct_config__.tag)
            counted[key] = counted.get(key, 0) + 1
    assert {(r["run_id"], r["type"]): r["n"] for r in table.to_pylist()} == counted


# -- formats and -o ---------------------------------------------------------------------


QUERY = "SELECT run_id, item_id, sample, correct, topic FROM rows WHERE run_id = 'b' ORDER BY item_id, sample"


def test_csv_json_and_table_formats_agree(world):
    rows = as_json(sql_here(world, QUERY, "--format", "json"))
    assert len(rows) == 2 * N
    text = sql_here(world, QUERY, "--format", "csv")
    assert text.returncode == 0, text.stderr
    read = list(csv.DictReader(io.StringIO(text.stdout)))
    assert [(r["item_id"], int(r["sample"]), r["correct"]) for r in read] == [
        (r["item_id"], r["sample"], "true" if r["correct"] else "false") for r in rows]
    table = sql_here(world, QUERY)
    lines = table.stdout.splitlines()
    assert lines[0].split(" | ")[0].strip() == "run_id" and lines[-1] == f"({2 * N} rows)"
    assert len(lines) == 2 + 2 * N + 1


def test_output_file_parquet_and_refusals(world):
    out = world / "result.parquet"
    done = sql_here(world, QUERY, "-o", str(out))  # the format from the suffix
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {2 * N} rows to {out}"
    assert pq.read_table(out).to_pylist() == as_json(sql_here(world, QUERY, "--format", "json"))
    no_file = sql_here(world, QUERY, "--format", "parquet")
    assert no_file.returncode == 2 and len(no_file.stderr.strip().splitlines()) == 1 and "-o" in no_file.stderr
    run_file = world / "runs" / "a" / "responses.jsonl"
    before = run_file.read_bytes()
    refused = sql_here(world, QUERY, "--format", "csv", "-o", str(run_file))
    assert refused.returncode == 2 and "belongs to run a" in refused.stderr
    assert run_file.read_bytes() == before


def test_bad_sql_is_one_line_and_exit_2(world):
    for n, query in enumerate(("SELEC 1", "SELECT nope FROM rows", "SELECT * FROM nothing_here", "COPY rows TO '/tmp/x.csv'")):
        done = (sql if n == 0 else sql_here)(world, query)  # one real process, for the exit code and stderr
        assert done.returncode == 2, (query, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: SQL:"), (query, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_interactive_prompt_reads_queries_until_the_end(world):
    script = "SELECT count(*) AS n FROM runs;\nSELEC 1;\nSELECT 40 +\n 2 AS answer;\n.tables\nSELECT count(*) AS m FROM rows\n"
    done = sql_here(world, "--format", "json", input=script)
    assert done.returncode == 1, done.stderr  # a piped script with a failed statement: the others run, exit 1
    assert [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")] == [
        [{"n": 2}], [{"answer": 42}], [{"m": 3 * N}]]
    assert "events:" in done.stdout  # .tables
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: SQL: Parser Error")


def test_the_prompt_runs_a_statement_when_a_semicolon_ends_it(world):
    """A line that parses alone is not a statement yet: the prompt waits for the ';' (the
    audit's two scripts: `SELECT count(*)` ran alone, and a WHERE on the next line was lost)."""
    counted = sql(world, "--format", "csv", input="SELECT count(*)\n FROM rows;\n")
    assert (counted.returncode, counted.stdout, counted.stderr) == (0, f'"count_star()"\n{3 * N}\n', "")
    only_b = sql(world, "--format", "csv", input="SELECT avg(correct::int) AS accuracy FROM rows\nWHERE run_id = 'b';\n")
    assert (only_b.returncode, only_b.stdout, only_b.stderr) == (0, '"accuracy"\n0.5\n', "")
    script = ("SELECT ';' AS semi -- a ';' in a comment ends nothing;\n, 'x;y' AS s\n;\n"
              "SELECT 1 AS one; SELECT 2 AS two; SELECT\n3 AS three;\n"
              ".help\n.nope\n"
              "SELECT count(*) AS m\nFROM runs\n")  # the end of the input ends the last one
    done = sql_here(world, "--format", "json", input=script)
    assert done.returncode == 1, done.stderr  # .nope was refused: a piped script says so in its exit code
    lines = done.stdout.splitlines()
    assert [json.loads(line) for line in lines if line.startswith("[")] == [
        [{"semi": ";", "s": "x;y"}], [{"one": 1}], [{"two": 2}], [{"three": 3}], [{"m": 2}]]
    assert any(line.startswith("A statement runs when ';' ends it") for line in lines)  # .help
    assert done.stderr.strip().splitlines() == [
        "error: .nope: not a command of this prompt (.tables, .help, .quit; SQL ends with ';')"]
    left = sql_here(world, "--format", "json", input="SELECT 1 AS a;\n.quit\nSELECT 2 AS b;\n")
    assert (left.returncode, left.stdout) == (0, '[{"a":1}]\n')


def test_several_statements_in_one_query_are_refused(world):
    done = sql(world, "SELECT 1 AS a; SELECT 2 AS b", "--format", "json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: SQL: 2 statements in one query: give one (`ledger sql` reading them "
                                        "from standard input runs several, each ended by ';', in turn)"]
    assert as_json(sql_here(world, "SELECT 1 AS a;", "--format", "json")) == [{"a": 1}]


def test_help_lists_every_view(world):
    from llm_ledger.projections.sql_views import VIEWS

    done = run_cli("sql", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert list(VIEWS) == ["runs", "rows", "events", "reviews"]
    for name in VIEWS:
        assert f"{name} (" in text, (name, text)


# -- a live run ---------------------------------------------------------------------------


def test_a_live_run_is_queried_as_it_is(world, tmp_path):
    runs = tmp_path / "runs"
    data = write_dataset(tmp_path / "live.jsonl", "a", n=60)
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "run", str(data), "--runs-dir", str(runs),
                             "--run-id", "live", "--parser", "choice", "--concurrency", "1", "--sim", '{"latency": 0.05}'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        responses = runs / "live" / "responses.jsonl"
        deadline = time.monotonic() + 30
        while not (responses.exists() and responses.read_bytes().count(b"\n") >= 3):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        with Catalog(str(runs)) as catalog:
            before = responses.read_bytes().count(b"\n")
            status = catalog.query("SELECT status, done FROM runs").to_pylist()
            rows = catalog.query("SELECT count(*) AS n, count(*) FILTER (WHERE correct) AS right FROM rows").to_pylist()
            after = responses.read_bytes().count(b"\n")
        assert proc.poll() is None  # still running: every figure above is of a live run
        assert status[0]["status"] == "running" and before - 1 <= status[0]["done"] <= after + 1
        assert before <= rows[0]["n"] <= after and rows[0]["right"] == rows[0]["n"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_the_command_module_loads_no_duckdb_or_pyarrow():
    code = "import sys, llm_ledger.cli.sql_cmd; print(sorted(m for m in ('duckdb', 'pyarrow') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_a_damaged_run_is_left_out_with_a_note(world, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(world / "runs" / "a", runs / "a")
    shutil.copytree(world / "runs" / "a", runs / "broken")
    with open(runs / "broken" / "events.log", "r+b") as f:
        f.seek(300)
        f.write(b"XXXXXXXX")
    with Catalog(str(runs)) as catalog:
        got = catalog.query("SELECT run_id, count(*) AS n FROM events GROUP BY ALL").to_pylist()
        assert got == [{"run_id": "a", "n": len(list(iter_events(str(runs / "a" / "events.log"))))}]
        assert len(catalog.notes) == 1 and catalog.notes[0].startswith("warning: events: run broken left out: ")
        status = {r["run_id"]: r["status"] for r in catalog.query("SELECT run_id, status FROM runs").to_pylist()}
    assert status["a"] == "completed" and status["broken"].startswith("damaged: ")


def test_the_prompt_at_a_terminal(world):
    """At a real terminal (a pty): the banner, `ledger> ` and `...> ` prompts, an error that
    leaves the prompt going, Ctrl-D to leave with exit 0."""
    import select

    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "sql", "--runs-dir", str(world / "runs")],
                            stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm"},
                            preexec_fn=os.setsid)
    os.close(slave)
    seen = bytearray()

    def until(token: bytes, after: int = 0) -> None:
        deadline = time.monotonic() + 30
        while token not in seen[after:]:
            assert time.monotonic() < deadline, bytes(seen)
            if select.select([master], [], [], 0.1)[0]:
                seen.extend(os.read(master, 65536))

    try:
        until(b"ledger> ")
        os.write(master, b"SELECT count(*) AS n FROM rows WHERE\n")
        until(b"...> ")
        os.write(master, b"run_id = 'a';\n")
        until(b"(1 row)")
        os.write(master, b"SELEC 1;\n")
        until(b"error: SQL: Parser Error")
        until(b"ledger> ", seen.index(b"error: SQL: Parser Error"))
        os.write(master, b".nope\n")
        until(b"not a command of this prompt")
        until(b"ledger> ", seen.index(b"not a command of this prompt"))  # the prompt is back: Ctrl-D now means leave
        os.write(master, b"\x04")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = bytes(seen).decode().replace("\r", "")
    assert "views runs, rows, events, reviews" in text and f"\n{N}\n(1 row)" in text
