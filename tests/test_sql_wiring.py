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
