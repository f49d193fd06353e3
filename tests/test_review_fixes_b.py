"""Review fixes (part b): what an experiment and a sharded run say at their end -- the
session's notes, an unreadable summary.json (an error line and exit 1, never a quiet 0), and
items left pending with the reason `ledger run` gives. One tiny experiment on the built-in
simulator (its runs directory's cache store made unopenable) serves every test."""

from __future__ import annotations

import json
import pytest

from conftest import run_cli
from llm_ledger.runners.shard_worker import ShardOutcome
from llm_ledger.runners.shards import ShardedRun
from test_run_e2e import write_jsonl

TOML = """
name = "notes"
dataset = "ds.jsonl"
parser = 'regex:answer is (\\S+)'
price_in = 0.5
price_out = 2.0

[providers.sim]
concurrency = 4

[[arms]]
name = "one"
provider = "sim"
model = "sim-model"
"""


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """`ledger run notes.toml` with ``runs/cache.lock`` a directory: the cache store cannot open."""
    root = tmp_path_factory.mktemp("review-b")
    write_jsonl(root / "ds.jsonl", [{"id": f"q{i}", "prompt": f"Pick {i}. answer: A", "expected": "A"} for i in range(4)])
    (root / "notes.toml").write_text(TOML)
    (root / "runs" / "cache.lock").mkdir(parents=True)  # the store's flock cannot be taken
    result = run_cli("run", "notes.toml", cwd=root, env={"COLUMNS": "200"})
    return root, result


def test_an_arm_says_its_session_notes(done):
    root, result = done
    notes = [line for line in result.stderr.splitlines() if line.startswith("arm one: note: ")]
    assert len(notes) == 1, result.stderr
    assert "the cross-run cache is unavailable this session" in notes[0] and "every request was sent" in notes[0]
    assert (root / "runs" / "notes.one" / "summary.json").is_file()


@pytest.fixture(scope="module")
def arm(done):
    """A prepared arm and its closed session (in-process: the printing is the point, not the CLI)."""
    root, _ = done
    from llm_ledger.runners.experiment import prepare_experiment, run_arms
    from llm_ledger.runners.experiment_config import load_experiment

    text = TOML.replace('name = "notes"', 'name = "inproc"')
    (root / "inproc.toml").write_text(text)
    results = run_arms(prepare_experiment(load_experiment(str(root / "inproc.toml")), str(root / "runs")))
    assert [r.reason for r in results] == ["completed"]
    return root, results


def test_an_unreadable_summary_is_an_error_line_and_exit_1(arm, capsys):
    from llm_ledger.cli.common import resume_line
    from llm_ledger.cli.experiment_cmd import _finish
    from llm_ledger.ledger.layout import RunPaths

    root, results = arm
    summary = root / "runs" / "inproc.one" / "summary.json"
    good = summary.read_bytes()
    assert json.loads(good)["counts"]["pending"] == 0
    try:
        summary.write_bytes(b"{not json")
        capsys.readouterr()
        code = _finish("inproc", str(root / "runs"), RunPaths(str(root / "runs" / "inproc")), results, ["one"])
        errors = capsys.readouterr().err.splitlines()
    finally:
        summary.write_bytes(good)
    assert code == 1
    line = next(line for line in errors if "summary.json unreadable" in line)
    assert line.startswith("arm one (run inproc.one): summary.json unreadable: not JSON")
    assert "`ledger replay inproc.one --rebuild" in line and "rewrites it" in line
    assert any(line.startswith("arm one: note: the cross-run cache is unavailable") for line in errors)
    assert resume_line(RunPaths(str(root / "runs" / "inproc"))) not in errors  # nothing to resume: a rebuild
    capsys.readouterr()
    assert _finish("inproc", str(root / "runs"), RunPaths(str(root / "runs" / "inproc")), results, ["one"]) == 0


def test_pending_arm_items_say_why_in_run_words(arm):
    from llm_ledger.cli.experiment_cmd import _arm_end_lines

    _, results = arm
    result = results[0]
    summary = {"counts": {"pending": 3, "failed": 0}}
    lines = _arm_end_lines(result.arm, result.session, summary, 1)
    assert lines[-1] == "the session ended with 3 items pending (neither done nor failed)"
    assert lines[0].startswith("note: the cross-run cache is unavailable")
    assert not any(line.startswith("resume with") for line in lines)  # the experiment's own, said once
    assert _arm_end_lines(result.arm, result.session, summary, 75)[-1] == \
        "every endpoint stayed down past give_up_after; 3 items pending"  # the file's key, not a flag
    assert _arm_end_lines(result.arm, result.session, summary, 130)[-1] == "interrupted; 3 items pending"


def test_pending_sharded_items_say_why_in_run_words(arm):
    from llm_ledger.cli.merge_cmd import _pending_line

    _, results = arm
    prepared = results[0].arm.prepared
    done = ShardOutcome(index=0, reason="completed")
    stopped = ShardOutcome(index=1, reason="completed", stop_reason="error: disk full")
    assert _pending_line(prepared, ShardedRun(outcomes=[done, stopped]), 5, 1) == \
        "stopped by an error (shard 1: disk full); 5 items pending"
    crashed = ShardOutcome(index=1, reason="error", error="error: boom", code=1)
    assert _pending_line(prepared, ShardedRun(reason="error", outcomes=[done, crashed]), 2, 1) == \
        "stopped by an error (shard 1, said above); 2 items pending"
    down = ShardOutcome(index=1, reason="completed", stop_reason="endpoint down past give_up_after")
    assert _pending_line(prepared, ShardedRun(outcomes=[done, down]), 2, 75) == \
        "every endpoint stayed down past --give-up-after; 2 items pending"
    assert _pending_line(prepared, ShardedRun(reason="interrupted", outcomes=[done]), 4, 130) == "interrupted; 4 items pending"
    assert _pending_line(prepared, ShardedRun(outcomes=[done]), 4, 1) == \
        "the session ended with 4 items pending (neither done nor failed)"
    assert _pending_line(prepared, ShardedRun(outcomes=[done]), 0, 0) == ""
