"""The simulator's ``accuracy``: a set share of questions answered wrongly, the same ones on
every run with the same seed.

In-process for the reply function (the share over 2,000 prompts, nesting, wrong answers of
the same kind that never score); real subprocesses for the options people type:
`ledger run --sim-accuracy` (the embedded HTTP simulator, and the in-process transport),
`ledger simulate --accuracy` over real HTTP, and the one-line refusals.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import run_cli
from llm_ledger.projections.scoring import score
from llm_ledger.runners.simulator import reply_text, wrong_answer

PROMPTS = [f"Question {i}? answer: {'ABCD'[i % 4]}" for i in range(2000)]


def _right(prompt: str, seed: int, accuracy: float) -> bool:
    return reply_text(prompt, seed, accuracy) == "The answer is " + prompt.rsplit("answer:", 1)[1].strip()


def test_the_share_answered_right_is_the_accuracy_and_the_same_each_time():
    for accuracy in (0.0, 0.3, 0.7, 1.0):
        right = sum(_right(p, 0, accuracy) for p in PROMPTS)
        assert abs(right / len(PROMPTS) - accuracy) < 0.03, (accuracy, right)
    assert [reply_text(p, 0, 0.7) for p in PROMPTS[:50]] == [reply_text(p, 0, 0.7) for p in PROMPTS[:50]]
    wrong_at = {a: {p for p in PROMPTS if not _right(p, 0, a)} for a in (0.9, 0.6)}
    assert wrong_at[0.9] < wrong_at[0.6]  # a worse model misses what a better one misses, and more
    other_seed = {p for p in PROMPTS if not _right(p, 1, 0.6)}
    assert other_seed != wrong_at[0.6] and len(other_seed & wrong_at[0.6]) < len(other_seed)
    assert reply_text("Write a haiku.", 0, 0.0) == reply_text("Write a haiku.", 0, 1.0)  # no question: nothing to get wrong


@pytest.mark.parametrize("right", ["A", "D", "J", "b", "42", "1,000", "2.5", "yes", "False", "Paris", "Hotel"])
def test_a_wrong_answer_is_of_the_same_kind_and_never_scores(right):
    for pick in range(0, 256, 7):
        wrong = wrong_answer(right, pick)
        assert score(wrong, right) is False, (right, pick, wrong)
        if right in ("A", "D"):
            assert wrong in "ABCD" and len(wrong) == 1
        if right == "42":
            assert wrong.isdigit()


def _dataset(tmp_path: Path, n: int = 40) -> Path:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": PROMPTS[i], "expected": "ABCD"[i % 4]}) + "\n" for i in range(n)))
    return data


def _rows(runs: Path, run: str) -> dict[str, bool]:
    return {r["item_id"]: r["correct"] for r in map(json.loads, (runs / run / "responses.jsonl").read_text().splitlines())}


def test_ledger_run_sim_accuracy_on_the_embedded_and_in_process_simulator(tmp_path):
    data, runs = _dataset(tmp_path), tmp_path / "runs"
    want = {f"q{i}": _right(PROMPTS[i], 0, 0.6) for i in range(40)}
    for run_id, extra in (("http", []), ("inproc", ["--transport", "simulator"])):
        done = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", run_id, "--parser", "choice",
                       "--sim-accuracy", "0.6", *extra)
        assert done.returncode == 0, done.stderr
        assert _rows(runs, run_id) == want
        assert json.loads((runs / run_id / "summary.json").read_text())["correct"] == sum(want.values())
    changed = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "http", "--parser", "choice", "--sim-accuracy", "0.9")
    assert changed.returncode == 2 and "--sim" in changed.stderr and changed.stderr.count("\n") == 1, changed.stderr


def test_refusals_are_one_line_exit_2(tmp_path):
    data, runs = _dataset(tmp_path, 2), tmp_path / "runs"
    for extra, said in ((["--sim-accuracy", "1.5"], "simulator accuracy 1.5: must be a share in [0, 1]"),
                        (["--sim-accuracy", "nan"], "simulator accuracy nan"),
                        (["--sim-accuracy", "0.5", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"],
                         "--sim-accuracy is for the built-in simulator")):
        done = run_cli("run", str(data), "--runs-dir", str(runs), *extra)
        assert done.returncode == 2 and said in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not runs.exists() or not any(runs.iterdir())  # nothing half-written
    bad = run_cli("simulate", "--accuracy", "-0.1", "--port", "0")
    assert bad.returncode == 2 and "simulator accuracy -0.1" in bad.stderr


def test_ledger_simulate_accuracy_over_http():
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "simulate", "--port", "0", "--accuracy", "0.5", "--seed", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://\S+/v1", proc.stdout.readline())[0]
        with httpx.Client(base_url=url, timeout=10) as http:
            for prompt in PROMPTS[:20]:
                body = {"model": "sim-1", "messages": [{"role": "user", "content": prompt}]}
                text = http.post("/chat/completions", json=body).json()["choices"][0]["message"]["content"]
                assert text == reply_text(prompt, 3, 0.5)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
