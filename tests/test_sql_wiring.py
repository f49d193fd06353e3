"""`ledger sql` over what the other features record: a person's verdicts (the `reviews` view
and `accuracy_reviewed`) and experiments (the `experiment` / `arm` columns)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

PARSER = "regex:answer is (.+)$"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("sqlwire")
    (base / "d.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"answer: A{i}", "expected": f"A{i}"}) + "\n"
                                          for i in range(4)))
    (base / "eval.toml").write_text(f'name = "exp"\ndataset = "d.jsonl"\nparser = \'{PARSER}\'\n\n'
                                    '[providers.sim]\nconcurrency = 4\n\n[[arms]]\nname = "one"\n\n[[arms]]\nname = "two"\n')
    for args in (("run", "d.jsonl", "--run-id", "solo", "--parser", PARSER), ("run", "eval.toml"),
                 ("review", "solo", "q1", "--incorrect", "--note", "wrong city")):
        r = run_cli(*args, "--runs-dir", str(base / "runs"), cwd=base)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return base / "runs"


def sql(runs: Path, query: str) -> list[dict]:
    r = run_cli("sql", query, "--format", "json", "--runs-dir", str(runs))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_reviews_are_a_view_and_runs_carry_both_accuracies(runs):
    assert sql(runs, "SELECT run_id, item_id, sample, verdict, note, stale, latest FROM reviews") == [
        {"run_id": "solo", "item_id": "q1", "sample": 0, "verdict": "incorrect", "note": "wrong city", "stale": False, "latest": True}]
    solo = sql(runs, "SELECT accuracy, accuracy_reviewed FROM runs WHERE run_id = 'solo'")
    assert solo == [{"accuracy": 1.0, "accuracy_reviewed": 0.75}]
    rows = sql(runs, "SELECT item_id, correct, correct_reviewed FROM rows WHERE run_id = 'solo' ORDER BY item_id")
    assert [(r["item_id"], r["correct"], r["correct_reviewed"]) for r in rows] == [
        ("q0", True, True), ("q1", True, False), ("q2", True, True), ("q3", True, True)]


def test_experiment_and_arm_are_columns(runs):
    got = sql(runs, "SELECT run_id, experiment, arm FROM runs ORDER BY run_id")
    assert got == [{"run_id": "exp.one", "experiment": "exp", "arm": "one"},
                   {"run_id": "exp.two", "experiment": "exp", "arm": "two"},
                   {"run_id": "solo", "experiment": None, "arm": None}]
    per = sql(runs, "SELECT experiment, count(*) AS n, avg(correct::INT) AS acc FROM rows GROUP BY experiment ORDER BY experiment")
    assert per == [{"experiment": "exp", "n": 8, "acc": 1.0}, {"experiment": None, "n": 4, "acc": 1.0}]


def test_a_run_with_no_rows_yet_is_left_out_with_a_note(runs, tmp_path):
    """A run just started (its writer holds the log; no responses.jsonl yet) and a sharded run
    whose shards were never merged (its top level holds only run_started) contribute no rows,
    each said in one `note:` line; the query of the other runs answers, and `runs` lists both."""
    import shutil

    from llm_ledger.ledger.events import RunStarted
    from llm_ledger.ledger.writer import LogWriter
    from llm_ledger.projections.sql import Catalog

    here = tmp_path / "runs"
    shutil.copytree(runs / "solo", here / "solo")
    for name in ("fresh", "k5"):
        (here / name).mkdir()
    (here / "k5" / "shards").mkdir()
    sharded = LogWriter.open(str(here / "k5" / "events.log"))
    sharded.append(RunStarted(run_id="k5", items=4, config={"model": "sim-1", "shards": 2}))
    sharded.close()
    fresh = LogWriter.open(str(here / "fresh" / "events.log"))  # held: the run is live
    try:
        fresh.append(RunStarted(run_id="fresh", items=4, config={"model": "sim-1"}))
        r = run_cli("sql", "SELECT run_id, count(*) AS n FROM rows GROUP BY ALL", "--format", "json", "--runs-dir", str(here))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == [{"run_id": "solo", "n": 4}]
        assert r.stderr.splitlines() == [
            "note: run fresh has no rows yet (it is running and has recorded no reply so far)",
            "note: run k5 has no rows yet (a sharded run's rows appear when its shards are merged: "
            "ledger merge k5, or ledger resume k5 to finish it)"]
        listed = run_cli("sql", "SELECT run_id, status, planned, done FROM runs ORDER BY run_id", "--format", "json",
                         "--runs-dir", str(here))
        assert listed.returncode == 0 and listed.stderr == "", listed.stderr
        assert json.loads(listed.stdout) == [{"run_id": "fresh", "status": "running", "planned": 4, "done": 0},
                                             {"run_id": "k5", "status": "interrupted", "planned": 4, "done": 0},
                                             {"run_id": "solo", "status": "completed", "planned": 4, "done": 4}]
        assert sorted(p.name for p in (here / "k5").iterdir()) == ["events.log", "events.log.lock", "shards"]
        with Catalog(str(here)) as catalog:  # the prompt's catalog says it at each query, not once
            for _ in range(2):
                catalog.query("SELECT count(*) FROM rows")
                assert [n.split(" (")[0] for n in catalog.notes] == ["note: run fresh has no rows yet",
                                                                     "note: run k5 has no rows yet"]
                catalog.notes.clear()
            status = "SELECT status FROM runs WHERE run_id = 'fresh'"
            assert catalog.query(status).to_pylist() == [{"status": "running"}]
            fresh.close()  # its writer is gone; not one byte of its files changed
            assert catalog.query(status).to_pylist() == [{"status": "interrupted"}]
            assert catalog.query("SELECT count(*) AS n FROM rows WHERE run_id = 'fresh'").to_pylist() == [{"n": 0}]
            assert [n.split(" (")[0] for n in catalog.notes] == ["note: run k5 has no rows yet"]
    finally:
        fresh.close()
