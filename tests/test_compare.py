"""`ledger compare`: runs with known answers give the known matrix and p-values.

The runs are real: `ledger run` against the built-in simulator, which replies "The answer
is X" when a prompt contains "answer: X". Datasets share ids and expected answers and
differ in their hints, so which run answers what -- hence the agreement matrix and the
McNemar counts -- is known in advance. The p-values are computed here by hand (binomial,
two-sided, on the discordant pairs). `shared_runs` builds the runs once per session; the
view tests use it too.

The unit cases check McNemar's exact test and the incremental reader of responses.jsonl.
"""

from __future__ import annotations

import csv
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.projections.compare import Answer, AnswerIndex, mcnemar_exact
from llm_ledger.projections.summary import wilson

N = 12
EXPECTED = ["ABCD"[i % 4] for i in range(N)]


def _shift(letter: str) -> str:
    return "ABCD"[("ABCD".index(letter) + 1) % 4]


# run -> the answer its simulator gives for each item i0..i11
HINTS = {
    "a": list(EXPECTED),  # 12 / 12
    "b": [_shift(e) if 2 <= i < 10 else e for i, e in enumerate(EXPECTED)],  # wrong on i2..i9: 4 / 12
    "c": [_shift(e) if i in (0, 9, 10, 11) else e for i, e in enumerate(EXPECTED)],  # wrong on i0, i9..i11: 8 / 12
}
# run "d": another dataset holding i0..i5 (as "a" answers them) and two ids no other run has
D_IDS = [f"i{i}" for i in range(6)] + ["x0", "x1"]

_cache: dict[str, Path] = {}


def _dataset(path: Path, ids: list[str], hints: list[str], expected: list[str]) -> Path:
    lines = [json.dumps({"id": i, "prompt": f"Question {i}? answer: {h}", "expected": e}) for i, h, e in zip(ids, hints, expected)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def shared_runs(tmp_path_factory) -> Path:
    """A runs directory with runs a, b, c (12 items each) and d (8 items); built once."""
    if "runs" not in _cache:
        root = tmp_path_factory.mktemp("compare-runs")
        ids = [f"i{i}" for i in range(N)]
        data = {name: _dataset(root / f"{name}.jsonl", ids, hints, EXPECTED) for name, hints in HINTS.items()}
        data["d"] = _dataset(root / "d.jsonl", D_IDS, EXPECTED[:6] + ["A", "B"], EXPECTED[:6] + ["A", "A"])
        runs = root / "runs"

        def run(name: str):
            return run_cli("run", str(data[name]), "--runs-dir", str(runs), "--run-id", name, "--parser", "choice",
                           "--concurrency", "4", "--no-cache")  # run at once: each pays for its own replies

        with ThreadPoolExecutor(4) as pool:
            for done in pool.map(run, sorted(data)):
                assert done.returncode == 0, done.stdout + done.stderr
        _cache["runs"] = runs
    return _cache["runs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return shared_runs(tmp_path_factory)


def binomial_two_sided(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def expected_pair(x: str, y: str) -> tuple[float, int, int]:
    """Agreement, only-x-right and only-y-right counts, from the hint tables."""
    hx, hy = HINTS[x], HINTS[y]
    agree = sum(p == q for p, q in zip(hx, hy)) / N
    only_x = sum(p == e and q != e for p, q, e in zip(hx, hy, EXPECTED))
    only_y = sum(p != e and q == e for p, q, e in zip(hx, hy, EXPECTED))
    return agree, only_x, only_y


def compare(runs: Path, *args: str):
    return run_cli("compare", *args, "--runs-dir", str(runs))


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compare-csv")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def compare_here(runs: Path, *args: str) -> Result:
    """The same command in-process (Typer's runner): no interpreter start-up per call."""
    from typer.testing import CliRunner

    from llm_ledger.cli.app import _register, app

    _register()
    r = CliRunner().invoke(app, ["compare", *args, "--runs-dir", str(runs)])
    return Result(r.exit_code, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def outputs(runs, csv_dir) -> dict[str, Result]:
    """Every `ledger compare` these tests read: one real subprocess (the console script, --json
    and -o at once), the rest in-process."""
    done: dict[str, Result] = {"json": compare(runs, "a", "b", "c", "--json", "-o", str(csv_dir / "cmp.csv"))}
    here = {
        "csv": ["a", "b", "c", "-o", str(csv_dir / "cmp2.csv")],
        "text": ["a", "b"],
        "diff-json": ["a", "b", "--only-diff", "--json"],
        "diff-text": ["a", "b", "--only-diff"],
        "diff-csv": ["a", "b", "--only-diff", "-o", str(csv_dir / "diff.csv")],
        "subset-json": ["a", "d", "--json"],
        "subset-text": ["a", "d"],
    }
    done.update({name: compare_here(runs, *args) for name, args in here.items()})
    for name, r in done.items():
        assert r.returncode == 0, (name, r.stdout, r.stderr)
    return done


# -- unit cases --------------------------------------------------------------------------


def test_mcnemar_exact_matches_the_binomial_by_hand():
    assert mcnemar_exact(8, 0) == pytest.approx(2 / 256)
    assert mcnemar_exact(0, 8) == pytest.approx(2 / 256)
    assert mcnemar_exact(2, 3) == 1.0  # 2 * (1 + 5 + 10) / 32 = 1
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(0, 0) == 1.0
    for b in range(8):
        for c in range(8):
            assert mcnemar_exact(b, c) == pytest.approx(binomial_two_sided(b, c))


def test_answer_index_reads_appends_keeps_last_line_and_restarts_after_truncation(tmp_path):
    path = tmp_path / "responses.jsonl"
    line = lambda item, parsed: json.dumps({"item_id": item, "sample": 0, "parsed": parsed, "correct": parsed == "A"}) + "\n"
    index = AnswerIndex(str(path))
    assert index.refresh() is False and index.answers == {}
    path.write_text(line("q1", "A") + line("q2", "B") + '{"item_id": "q3", "sam')  # a partial last line
    assert index.refresh() is True
    assert sorted(index.answers) == [("q1", 0), ("q2", 0)]
    assert index.refresh() is False  # nothing new: nothing read
    with open(path, "a") as f:
        f.write('ple": 0, "parsed": "C"}\n' + line("q1", "D"))  # q3 completes; q1 finishes again
    assert index.refresh() is True
    assert index.answers[("q3", 0)].parsed == "C"
    assert index.answers[("q1", 0)] == Answer("q1", 0, parsed="D", correct=False, correct_reviewed=False)
    path.write_text(line("q9", "A"))  # rebuilt: shorter than what was read
    assert index.refresh() is True
    assert sorted(index.answers) == [("q9", 0)]


# -- the CLI on real runs ----------------------------------------------------------------


def test_json_gives_the_known_accuracy_agreement_matrix_and_p_values(outputs):
    data = json.loads(outputs["json"].stdout)
    assert data["shared"] == N
    names = ["a", "b", "c"]
    for row, name in zip(data["runs"], names):
        right = sum(h == e for h, e in zip(HINTS[name], EXPECTED))
        assert (row["run_id"], row["scored"], row["correct"], row["left_out"]) == (name, N, right, 0)
        assert row["accuracy"] == pytest.approx(right / N)
        assert row["ci95"] == wilson(right, N)
    assert [r["correct"] for r in data["runs"]] == [12, 4, 8]
    matrix = [[expected_pair(x, y)[0] for y in names] for x in names]
    assert data["agreement"] == [[pytest.approx(v, rel=1e-12) for v in row] for row in matrix]  # full precision
    assert matrix == [[1, 4 / 12, 8 / 12], [4 / 12, 1, 2 / 12], [8 / 12, 2 / 12, 1]]
    pairs = {(p["a"], p["b"]): p for p in data["pairs"]}
    assert sorted(pairs) == [("a", "b"), ("a", "c"), ("b", "c")]
    for (x, y), p in pairs.items():
        agree, only_x, only_y = expected_pair(x, y)
        assert (p["only_a_correct"], p["only_b_correct"]) == (only_x, only_y)
        assert p["p_value"] == pytest.approx(binomial_two_sided(only_x, only_y), abs=1e-6)
        assert p["significant"] == (binomial_two_sided(only_x, only_y) < 0.05)
    assert (pairs[("a", "b")]["only_a_correct"], pairs[("a", "b")]["only_b_correct"]) == (8, 0)
    assert pairs[("a", "b")]["p_value"] == pytest.approx(2 / 2**8, abs=1e-6)  # significant
    assert pairs[("a", "c")]["p_value"] == pytest.approx(2 / 2**4, abs=1e-6)  # 4 vs 0: not significant
    assert "differences" not in data


def test_text_output_shows_accuracy_matrix_and_tests(outputs):
    out = outputs["text"].stdout
    assert f"the runs share all {N} items" in out
    assert "100.0%" in out and "33.3%" in out  # a's and b's accuracy
    assert "0.0078" in out  # p = 2 / 256, with four decimals
    assert "yes" in out.split("paired differences")[1]
    assert "left out" not in out


def test_only_diff_lists_each_differing_item_with_each_runs_answer(outputs):
    diffs = json.loads(outputs["diff-json"].stdout)["differences"]
    assert [d["item_id"] for d in diffs] == [f"i{i}" for i in range(2, 10)]
    for d in diffs:
        i = int(d["item_id"][1:])
        assert d["answers"] == {"a": HINTS["a"][i], "b": HINTS["b"][i]}
        assert d["expected"] == EXPECTED[i] and d["agree"] is False
    text = outputs["diff-text"]
    assert "8 of 12 shared items differ" in text.stdout
    rows = [line for line in text.stdout.splitlines() if line.startswith("│ i")]
    assert len(rows) == 8 and "│ i5 " in rows[3] and "│ B " in rows[3] and "│ C " in rows[3]


def test_csv_per_item_table_reads_back(outputs, csv_dir):
    path = csv_dir / "cmp.csv"
    assert f"wrote {N} rows to {csv_dir / 'cmp2.csv'}" in outputs["csv"].stdout
    assert (csv_dir / "cmp2.csv").read_bytes() == path.read_bytes()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["item_id", "sample", "expected", "a.parsed", "a.correct", "a.correct_reviewed", "b.parsed",
                             "b.correct", "b.correct_reviewed", "c.parsed", "c.correct", "c.correct_reviewed", "agree"]
    assert [row["item_id"] for row in rows] == [f"i{i}" for i in range(N)]
    for i, row in enumerate(rows):
        assert row["expected"] == EXPECTED[i] and row["sample"] == "0"
        for name in "abc":
            assert row[f"{name}.parsed"] == HINTS[name][i]
            assert row[f"{name}.correct"] == str(HINTS[name][i] == EXPECTED[i]).lower()
            assert row[f"{name}.correct_reviewed"] == row[f"{name}.correct"]  # nobody reviewed these runs
        assert row["agree"] == str(len({HINTS[n][i] for n in "abc"}) == 1).lower()
    only = csv_dir / "diff.csv"
    assert "wrote 8 rows" in outputs["diff-csv"].stdout
    assert len(only.read_text().splitlines()) == 1 + 8


def test_different_datasets_are_compared_on_their_intersection(outputs):
    data = json.loads(outputs["subset-json"].stdout)
    assert data["shared"] == 6
    assert {row["run_id"]: row["left_out"] for row in data["runs"]} == {"a": 6, "d": 2}
    assert data["agreement"] == [[1.0, 1.0], [1.0, 1.0]]
    assert data["pairs"][0]["p_value"] == 1.0
    text = outputs["subset-text"]
    assert "the runs share 6 of 14 items; not in every run: a 6, d 2; compared on the 6 shared" in text.stdout
    assert data["coverage"] == {"shared": 6, "total": 14, "complete": False, "left_out": {"a": 6, "d": 2},
                                "message": "the runs share 6 of 14 items; not in every run: a 6, d 2"}


@pytest.mark.parametrize("args, message", [
    (["a"], "at least two runs"),
    (["a", "a"], "named twice"),
    (["a", "nope"], "no run 'nope'"),
])
def test_bad_arguments_are_one_red_line_and_exit_2(runs, args, message):
    r = compare_here(runs, *args)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_with_samples_the_keys_compared_are_answers_not_items():
    from llm_ledger.projections.compare import coverage

    c = coverage(["a", "b"], [{("i", 0), ("i", 1), ("j", 0)}, {("i", 0), ("j", 0)}])
    assert c.message() == "the runs share 2 of 3 answers (item x sample); not in every run: a 1"
    assert coverage(["a", "b"], [{("i", 0)}, {("i", 0)}]).message() == "the runs share all 1 items"
