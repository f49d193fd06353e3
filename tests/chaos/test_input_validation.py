"""Issue 12.12: input that crashed, or was accepted and then broke the run.

Every case runs the real CLI and must end in one line on stderr, exit 2, no traceback,
nothing sent to the simulator (its request log stays absent) and nothing written: the
case's directory holds afterwards exactly what it held before.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli

GOOD = '{"id": "a", "prompt": "one answer: A"}\n'


def _dataset_with_id(item_id: str) -> str:
    return GOOD + json.dumps({"id": item_id, "prompt": "x"}) + "\n"


# name -> (dataset text, extra args, setup of the case directory, text the one error line must hold)
CASES: dict[str, tuple[str, list[str], str, str]] = {
    "runs_dir_is_a_file": (GOOD, ["--runs-dir", "runs"], "file:runs", "runs: cannot hold runs: not a directory"),
    "runs_dir_under_a_file": (GOOD, ["--runs-dir", "f/runs"], "file:f", "is not a directory"),
    "run_dir_is_a_file": (GOOD, ["--run-id", "r"], "file:runs/r", "runs/r: cannot hold runs: not a directory"),
    "run_dir_under_a_file_in_runs_dir": (GOOD, ["--run-id", "r", "--runs-dir", "runs/x"], "file:runs/x", "not a directory"),
    "events_log_is_a_directory": (GOOD, ["--run-id", "r"], "dir:runs/r/events.log", "events.log: not a file"),
    "template_huge_width": (GOOD, ["--template", "{prompt:>99999999999}"], "", "width 99,999,999,999 is too large"),
    "template_nested_width": (GOOD, ["--template", "{prompt:>{w}}"], "", "fields inside a format spec"),
    "concurrency_huge": (GOOD, ["--concurrency", "100000000"], "", "at most 10,000"),
    "run_id_trailing_newline": (GOOD, ["--run-id", "abc\n"], "", "run id 'abc\\n'"),
    "run_id_leading_space": (GOOD, ["--run-id", " abc"], "", "run id ' abc'"),
    "timeout_nan": (GOOD, ["--timeout", "nan"], "", "--timeout nan: must be a finite number > 0"),
    "timeout_negative": (GOOD, ["--timeout", "-1"], "", "--timeout -1.0: must be a finite number > 0"),
    "timeout_inf": (GOOD, ["--timeout", "inf"], "", "--timeout inf"),
    "temperature_nan": (GOOD, ["--temperature", "nan"], "", "--temperature nan: must be a finite number >= 0"),
    "temperature_negative": (GOOD, ["--temperature", "-0.5"], "", "--temperature -0.5"),
    "price_in_nan": (GOOD, ["--price-in", "nan"], "", "--price-in nan"),
    "price_out_negative": (GOOD, ["--price-out", "-2"], "", "--price-out -2.0"),
    "give_up_after_nan": (GOOD, ["--give-up-after", "nan"], "", "--give-up-after nan"),
    "give_up_after_negative": (GOOD, ["--give-up-after", "-5"], "", "--give-up-after -5.0"),
    "sim_rate_above_one": (GOOD, ["--sim", '{"rate_500": 1.5}'], "", "--sim: rate_500 = 1.5: must be a probability in [0, 1]"),
    "sim_rate_negative": (GOOD, ["--sim", '{"rate_429": -0.1}'], "", "--sim: rate_429 = -0.1"),
    "sim_latency_negative": (GOOD, ["--sim", '{"latency": -1}'], "", "--sim: latency = -1"),
    "sim_latency_nan": (GOOD, ["--sim", '{"latency": NaN}'], "", "--sim: latency = nan: must be finite and >= 0"),
    "sim_retry_after_inf": (GOOD, ["--sim", '{"retry_after": Infinity}'], "", "--sim: retry_after = inf"),
    "samples_beyond_64_bits": (GOOD, ["--samples", str(2**64)], "", "too large"),
}


def _setup(case: Path, how: str) -> None:
    if not how:
        return
    kind, rel = how.split(":")
    target = case / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        target.write_bytes(b"not a directory\n")
    else:
        target.mkdir()


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    base = tmp_path_factory.mktemp("input")

    def one(name: str):
        text, args, how, _ = CASES[name]
        case = base / name
        case.mkdir()
        (case / "d.jsonl").write_text(text)
        _setup(case, how)
        before = _snapshot(case)
        sim = [] if "--sim" in args else ["--sim", json.dumps({"request_log": str(base / f"{name}.req.jsonl")})]
        try:
            r = run_cli("run", "d.jsonl", *sim, *args, cwd=case, timeout=60)
        except subprocess.TimeoutExpired:  # a hang is a failure of its own case, not of the module
            r = subprocess.CompletedProcess(args, -1, "", "(timed out after 60 s)")
        return name, (r, before, _snapshot(case), base / f"{name}.req.jsonl")

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(outcomes, name):
    r, before, after, request_log = outcomes[name]
    want = CASES[name][3]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], lines
    assert len(lines[0]) < 400
    assert after == before, "something was written"
    assert not request_log.exists(), "something was sent"


ODD_IDS = [" b", "b ", "b\nc", "b\x00c", "b\tc", "\x7f"]


def test_odd_item_ids_are_made_to_work(tmp_path):
    """Ids with a leading space, a newline, NUL, a tab: each sent once and done (they used to
    fail as 'connection' errors after every retry)."""
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD + "".join(json.dumps({"id": i, "prompt": f"answer: A{n}"}) + "\n" for n, i in enumerate(ODD_IDS)))
    req_log = tmp_path / "req.jsonl"
    r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "odd",
                "--sim", json.dumps({"request_log": str(req_log)}), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "odd" / "responses.jsonl").read_bytes().splitlines()]
    assert sorted(row["item_id"] for row in rows) == sorted(["a", *ODD_IDS])
    assert all(row["error"] is None for row in rows)
    sent = [json.loads(line)["key"] for line in req_log.read_bytes().splitlines()]
    assert sorted(sent) == sorted(f"{i}/0/0" for i in ["a", *ODD_IDS])
