"""Derived files damaged by hand or by a disk: said in one line with what to do, never a
traceback, never read as "nothing there" (batches.json, the cache's cache.cleared)."""

from __future__ import annotations

import json

from conftest import run_cli


def _one_error_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    return lines[0]


def test_a_damaged_batches_json_is_rewritten_from_the_log_or_not_read(tmp_path):
    """A stopped batch run's status catches batches.json up with the log (a damaged one is
    rewritten whole); a per-request run has no batches: its status does not read the file."""
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "prompt": "answer: A"}) + "\n")
    assert run_cli("run", "d.jsonl", "--run-id", "r", cwd=tmp_path).returncode == 0
    (tmp_path / "runs" / "r" / "batches.json").write_text('[{"chunk": ')
    status = run_cli("status", "r", cwd=tmp_path)
    assert status.returncode == 0 and "done: 1" in " ".join(status.stdout.split()) and status.stderr == "", status
    assert run_cli("run", "d.jsonl", "--run-id", "b", "--batch", "--no-cache", cwd=tmp_path).returncode == 0
    (tmp_path / "runs" / "b" / "batches.json").write_text('[{"chunk": ')
    status = run_cli("status", "b", cwd=tmp_path)
    assert status.returncode == 0 and "batches: 1 (0 open)" in status.stdout, status
    assert json.loads((tmp_path / "runs" / "b" / "batches.json").read_text())[0]["final_status"] == "completed"


def test_a_damaged_cache_cleared_is_never_read_as_nothing_cleared(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "prompt": "answer: A"}) + "\n")
    assert run_cli("run", "d.jsonl", "--run-id", "first", cwd=tmp_path).returncode == 0
    cleared = run_cli("cache", "clear", cwd=tmp_path)
    assert cleared.returncode == 0, cleared.stderr
    (tmp_path / "runs" / "cache.cleared").write_text('{"before": 1')
    (tmp_path / "runs" / "cache.lmdb").unlink()  # a rebuild must not bring the cleared reply back
    line = _one_error_line(run_cli("cache", "stats", cwd=tmp_path))
    assert "cache.cleared: damaged" in line and "delete it" in line
    again = run_cli("run", "d.jsonl", "--run-id", "second", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "note: the cross-run cache is unavailable this session" in again.stdout + again.stderr
    rows = [json.loads(x) for x in (tmp_path / "runs" / "second" / "responses.jsonl").read_text().splitlines()]
    assert [r.get("cached_from") for r in rows] == [None]  # sent, not served from a reply the user cleared
