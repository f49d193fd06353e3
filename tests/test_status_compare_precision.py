"""`ledger compare` keeps full precision in what it writes (issue 11.5).

Two real runs on the simulator over 30 items: run "a" answers every item right, run "b"
every item wrong, so McNemar's exact test has 30 discordant pairs all one way and
p = 2 / 2**30 = 1.86e-9. The JSON must say that number (it said 0.0 when it was rounded
to 6 decimals); the screen may round, but never to zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

N = 30


def _runs(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    for name, hint in (("a", "A"), ("b", "B")):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Q{i}? answer: {hint}", "expected": "A"}) + "\n"
                                for i in range(N)), encoding="utf-8")
        done = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", name, "--parser", "choice")
        assert done.returncode == 0, done.stdout + done.stderr
    return runs


def test_tiny_p_values_are_written_in_full_and_never_shown_as_zero(tmp_path):
    runs = _runs(tmp_path)
    as_json = run_cli("compare", "a", "b", "--json", "--runs-dir", str(runs))
    assert as_json.returncode == 0, as_json.stderr
    pair = json.loads(as_json.stdout)["pairs"][0]
    assert (pair["only_a_correct"], pair["only_b_correct"]) == (N, 0)
    assert pair["p_value"] == pytest.approx(2 / 2**N, rel=1e-12) and pair["p_value"] > 0
    assert pair["significant"] is True
    text = run_cli("compare", "a", "b", "--runs-dir", str(runs))
    assert text.returncode == 0, text.stderr
    row = next(line for line in text.stdout.splitlines() if line.split()[:2] == ["a", "b"] and line.split()[-1] == "yes")
    cells = row.split()
    assert cells[5] == "1.863e-09", row  # the p column: rounded for the eye, not to 0
