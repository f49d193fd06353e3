"""The Batch API runner and the cross-run cache: a request some run's log already answers is
recorded from the cache and never goes into a batch (issue 17's "the batch mode uses the same
cache"); a conversation's later turns follow their cached first turns."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli

PARSER = "regex:answer is (.+)$"


def _log(runs: Path, run: str) -> list[dict]:
    r = run_cli("log", run, "--runs-dir", str(runs))
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_cached_requests_never_go_into_a_batch(tmp_path):
    items = [{"id": f"q{i}", "prompt": f"answer: A{i}", "expected": f"A{i}"} for i in range(5)]
    items.append({"id": "chat", "turns": ["answer: C1", "answer: C2"], "expected": "C2"})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    runs = tmp_path / "runs"
    common = ("--parser", PARSER, "--temperature", "0", "--runs-dir", str(runs))
    # the first run buys q0..q2 and the chat's two turns
    (tmp_path / "first.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [*items[:3], items[5]]))
    first = run_cli("run", "first.jsonl", "--run-id", "first", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    second = run_cli("run", "d.jsonl", "--run-id", "second", "--batch", *common, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    events = _log(runs, "second")
    planned = [e for e in events if e["type"] == "batch_planned"]
    batched = sorted(cid.split("/")[0] for e in planned for cid in e["custom_ids"])
    assert batched == ["q3", "q4"], batched  # only what no log answers was bought
    cached = sorted((e["item_id"], e["turn"]) for e in events if e["type"] == "response" and e.get("cached_from"))
    assert cached == [("chat", 0), ("chat", 1), ("q0", 0), ("q1", 0), ("q2", 0)]
    assert all(e["cached_from"]["run"] == "first" for e in events if e["type"] == "response" and e.get("cached_from"))
    rows = {json.loads(line)["item_id"]: json.loads(line) for line in (runs / "second" / "responses.jsonl").read_text().splitlines()}
    assert set(rows) == {x["id"] for x in items} and all(r["correct"] for r in rows.values()), rows
    assert "cached" in second.stdout and "5 of 7" in second.stdout, second.stdout


def test_a_sharded_batch_run_is_refused_in_one_line_before_anything_is_written(tmp_path):
    """--batch with --shards: the provider runs a file's requests in parallel already, and one
    log reconciles one run's batches (shards would name, sweep and cancel theirs apart)."""
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "q0", "prompt": "answer: A", "expected": "A"}) + "\n")
    r = run_cli("run", "d.jsonl", "--run-id", "sb", "--batch", "--shards", "2", "--runs-dir", str(tmp_path / "runs"),
                cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --batch with --shards 2: the Batch API runs a file's requests in parallel at the provider already; "
        "run --batch without --shards"], r.stderr
    assert not (tmp_path / "runs" / "sb").exists()

