"""Bad input beyond tests/test_datasets.py: huge lines, wrong types through the CLI, bad
--sim settings, a runs directory without write permission, and a run id that names no run,
for every command. Always exit 2, one clear line, nothing half-written.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chaos.procs import run_cli

GOOD = b'{"id": "a", "prompt": "one answer: A"}\n'


def _parquet(path: Path, **columns) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path.read_bytes()


# name -> (file name, bytes or None (made by the test), extra args, text the one error line must hold)
CASES = {
    "huge_garbage_line": ("d.jsonl", GOOD + b"{" + b"x" * (30 << 20) + b"\n", [], "d.jsonl:2: not valid JSON"),
    "huge_line_without_newline": ("d.jsonl", GOOD + b'{"id": "b", "prompt": "' + b"y" * (30 << 20), [], "d.jsonl:2: not valid JSON"),
    "turns_a_string": ("d.jsonl", GOOD + b'{"id": "b", "turns": "hello"}\n', [], "d.jsonl:2: field 'turns' must be a non-empty string list"),
    "messages_an_object": ("d.jsonl", GOOD + b'{"id": "b", "messages": {"role": "user"}}\n', [], "d.jsonl:2: field 'messages' must be a non-empty list"),
    "id_a_list": ("d.jsonl", GOOD + b'{"id": [1], "prompt": "x"}\n', [], "d.jsonl:2: field 'id' must be a string or an integer"),
    "top_level_number": ("d.jsonl", GOOD + b"5\n", [], "d.jsonl:2: expected a JSON object"),
    "batch_body_without_messages": ("d.jsonl", b'{"custom_id": "a", "body": {"model": "m"}}\n', [], "d.jsonl:1: needs exactly one of"),
    "csv_without_prompt_column": ("d.csv", b"id,question\n1,what\n", [], "d.csv:2: needs exactly one of"),
    "parquet_prompt_numbers": ("d.parquet", None, [], "d.parquet:2: field 'prompt' must be a non-empty string"),
    "parquet_id_floats": ("d.parquet", None, [], "d.parquet:2: field 'id' must be a string or an integer"),
    "sim_not_an_object": ("d.jsonl", GOOD, ["--sim", "[1]"], "--sim: expected a JSON object"),
    "sim_unknown_knob": ("d.jsonl", GOOD, ["--sim", '{"no_such_knob": 1}'], "--sim"),
    "sim_knob_of_the_wrong_type": ("d.jsonl", GOOD, ["--sim", '{"rate_429": "x"}'], "--sim"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")

    def one(name: str):
        file_name, data, args, _ = CASES[name]
        case = base / name
        case.mkdir()
        dataset = case / file_name
        if name == "parquet_prompt_numbers":
            _parquet(dataset, id=["a", "b"], prompt=[1, 2])
        elif name == "parquet_id_floats":
            _parquet(dataset, id=[1.5, 2.5], prompt=["x", "y"])
        else:
            dataset.write_bytes(data)
        sim = [] if "--sim" in args else ["--sim", json.dumps({"request_log": str(case / "req.jsonl")})]
        r = run_cli("run", str(dataset), "--runs-dir", str(case / "runs"), *sim, *args, cwd=case)
        return name, (r, case)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(bad_runs, name):
    r, case = bad_runs[name]
    want = CASES[name][3]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], lines
    assert len(lines[0]) < 500, "the error quotes too much of the input"
    assert not (case / "runs").exists() and not (case / "req.jsonl").exists()


# -- a run id that names no run, for every command ---------------------------------------------

COMMANDS = [
    ["resume", "nope"], ["status", "nope"], ["show", "nope", "q1"], ["log", "nope"], ["log", "nope", "--follow"],
    ["replay", "nope"], ["replay", "nope", "--rebuild"], ["export", "nope", "jsonl"], ["verify", "nope"],
    ["verify", "nope", "--repair"], ["compare", "nope", "nope2"], ["view", "nope"],
]


def test_a_run_that_does_not_exist_is_exit_2_and_one_line_for_every_command(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda args: run_cli(*args, "--runs-dir", str(runs), cwd=tmp_path, timeout=30), COMMANDS))
    for args, r in zip(COMMANDS, results):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, r)
        assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0], (args, lines)
    assert sorted(p.name for p in runs.iterdir()) == []  # nothing created
    assert not (tmp_path / "nope.jsonl").exists()


# -- a runs directory without write permission --------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 24, 1, 2, 3


def _without_dac_override() -> None:
    """In the child, before exec: as root, give up the capabilities that ignore file modes
    (the exec'd interpreter then obeys chmod like any user)."""
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _unprivileged(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    preexec = _without_dac_override if os.geteuid() == 0 else None
    return subprocess.run([sys.executable, "-m", "llm_ledger.cli", *args], cwd=cwd, capture_output=True, text=True,
                          preexec_fn=preexec, timeout=120)


@pytest.fixture(scope="module")
def read_only_runs(tmp_path_factory):
    """A finished run, then every file and directory under runs/ made read-only."""
    base = tmp_path_factory.mktemp("readonly")
    base.chmod(0o755)
    (base / "d.jsonl").write_bytes(GOOD + b'{"id": "b", "prompt": "two answer: B"}\n')
    r = run_cli("run", str(base / "d.jsonl"), "--runs-dir", str(base / "runs"), "--run-id", "r", cwd=base)
    assert r.returncode == 0, r
    probe = subprocess.run([sys.executable, "-c", "open('/proc/self/status').read()"], preexec_fn=(
        _without_dac_override if os.geteuid() == 0 else None), capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot give up CAP_DAC_OVERRIDE here (root ignores chmod): {probe.stderr.strip()[-200:]}")
    for root, dirs, files in os.walk(base / "runs"):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
        os.chmod(root, 0o555)
    yield base
    for root, dirs, files in os.walk(base / "runs"):
        os.chmod(root, 0o755)


def _snapshot(runs: Path) -> dict[str, bytes]:
    return {str(p.relative_to(runs)): p.read_bytes() for p in runs.rglob("*") if p.is_file()}


def test_a_read_only_run_is_refused_clearly_by_writers_and_read_by_readers(read_only_runs):
    base = read_only_runs
    runs = base / "runs"
    before = _snapshot(runs)
    (base / "out").mkdir(exist_ok=True)
    for args in (["resume", "r"], ["replay", "r", "--rebuild"], ["export", "r", "jsonl", "-o", str(base / "out" / "x.jsonl")]):
        r = _unprivileged(*args, "--runs-dir", str(runs), cwd=base)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "cannot open for writing" in lines[0], (args, r.stderr[-2000:])
    for args in (["status", "r"], ["log", "r"], ["verify", "r"], ["show", "r", "a"], ["ls"]):
        r = _unprivileged(*args, "--runs-dir", str(runs), cwd=base)
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr[-2000:])
    assert _snapshot(runs) == before


def test_a_new_run_in_a_read_only_runs_directory_is_one_line_exit_2(read_only_runs):
    base = read_only_runs
    r = _unprivileged("run", str(base / "d.jsonl"), "--runs-dir", str(base / "runs"), cwd=base)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
