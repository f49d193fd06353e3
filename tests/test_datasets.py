"""Datasets: every bad input is refused before anything is written or sent.

The CLI cases run `ledger run` in real subprocesses (in parallel, once per module) and check
the exit code (2), a single stderr line naming ``file:line``, that no run directory exists
and that the simulator's request log was never even created. The unit cases call the
dataset reader in-process on real files.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.errors import InputError
from llm_ledger.runners.dataset import iter_items, scan, template_fields

# name -> (file name, file bytes, extra args, the "file:line" (or file) the error must name, text it must contain)
# The file part is the path as given on the command line; "{f}" stands for it.
GOOD = b'{"id": "a", "prompt": "one"}\n'
CASES: dict[str, tuple[str, bytes, list[str], str, str]] = {
    "malformed_json_line_3": ("d.jsonl", GOOD + b'{"id": "b", "prompt": "two"}\n{"id": "c", "prompt": \n', [],
                              "{f}:3:", "not valid JSON"),
    "json_array_line": ("d.jsonl", GOOD + b'["b", "two"]\n', [], "{f}:2:", "expected a JSON object"),
    "missing_prompt": ("d.jsonl", GOOD + b'\n{"id": "b", "expected": "x"}\n', [], "{f}:3:", "needs exactly one of"),
    "duplicate_ids": ("d.jsonl", GOOD + b'{"id": "b", "prompt": "two"}\n{"id": "a", "prompt": "three"}\n', [],
                      "{f}:3:", "duplicate id 'a'"),
    "empty_file": ("d.jsonl", b"", [], "{f}:", "no items"),
    "invalid_utf8_jsonl": pytest.param(
        "d.jsonl", GOOD + b'{"id": "b", "prompt": "caf\xe9"}\n', [], "{f}:2:", "UTF-8"),
    "csv_too_many_columns": ("d.csv", b"id,prompt\n1,one\n2,two,extra\n", [], "{f}:3:", "more values than header"),
    "invalid_utf8_csv": pytest.param(
        "d.csv", b"id,prompt\n1,one\n2,caf\xe9\n", [], "{f}:3:", "UTF-8"),
    "unknown_template_field": ("d.jsonl", b'{"id": "a", "prompt": "one", "topic": "t"}\n{"id": "b", "prompt": "two"}\n',
                               ["--template", "{prompt} ({topic})"], "{f}:2:", "'topic'"),
    "unknown_parser": ("d.jsonl", GOOD, ["--parser", "bogus"], "", "--parser 'bogus'"),
    "nonexistent_path": ("missing.jsonl", None, [], "{f}:", "no such file"),
    # Not a dataset problem, but the same promise: a remote endpoint without its key is refused
    # before anything is written (the variable is surely unset in the test environment).
    "missing_api_key_remote": ("d.jsonl", GOOD, ["--base-url", "https://api.example.invalid/v1", "--model", "m",
                                                 "--api-key-env", "LEDGER_TEST_NO_SUCH_KEY_VAR"],
                               "", "LEDGER_TEST_NO_SUCH_KEY_VAR"),
}


def _params():
    for name, case in CASES.items():
        yield pytest.param(name, marks=getattr(case, "marks", ()), id=name)


def _case(name: str) -> tuple:
    case = CASES[name]
    return tuple(case.values) if hasattr(case, "marks") else case


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Run every bad case once, in parallel subprocesses: {name: (result, dataset, case_dir)}."""
    base = tmp_path_factory.mktemp("bad")

    def one(name: str):
        file_name, data, args, _, _ = _case(name)
        case_dir = base / name
        case_dir.mkdir()
        dataset = case_dir / file_name
        if data is not None:
            dataset.write_bytes(data)
        sim = json.dumps({"request_log": str(case_dir / "req.jsonl")})
        r = run_cli("run", str(dataset), "--runs-dir", str(case_dir / "runs"), "--sim", sim, *args, cwd=case_dir)
        return name, (r, dataset, case_dir)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("name", list(_params()))
def test_bad_input_exits_2_naming_the_line_and_writes_nothing(bad_runs, name):
    r, dataset, case_dir = bad_runs[name]
    _, _, _, where, what = _case(name)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines
    assert where.format(f=dataset) in lines[0], (where.format(f=dataset), lines[0])
    assert what in lines[0], lines[0]
    assert not (case_dir / "runs").exists()  # no run directory
    assert not (case_dir / "req.jsonl").exists()  # the simulator never started: nothing sent
    assert r.stdout == ""


# -- in-process: what the reader makes of real files -----------------------------------


def _write(tmp_path: Path, name: str, data: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def test_jsonl_items_fields_metadata_and_line_numbers(tmp_path):
    path = _write(tmp_path, "d.jsonl", "\n".join([
        json.dumps({"id": 7, "prompt": "p7", "expected": ["x", 1], "topic": "geo", "level": 2}),
        "",
        json.dumps({"prompt": "no id"}),
        json.dumps({"id": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}),
        json.dumps({"id": "t", "turns": ["a", "b"], "expected": "b"}),
    ]) + "\n")
    items = list(iter_items(path))
    assert [(i.id, i.line) for i in items] == [("7", 1), ("3", 3), ("m", 4), ("t", 5)]
    assert items[0].turns == [[{"role": "user", "content": "p7"}]]
    assert items[0].expected == ["x", 1] and items[0].metadata == {"topic": "geo", "level": 2}
    assert items[2].turns == [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]
    assert items[3].turns == [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    info = scan(path)
    assert info.items == 4 and info.format == "jsonl" and info.path == os.path.abspath(path)
    import hashlib

    assert info.sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_template_renders_metadata_on_every_turn(tmp_path):
    path = _write(tmp_path, "d.jsonl", json.dumps({"id": "a", "turns": ["x", "y"], "topic": "T", "n": 3}) + "\n")
    template = "[{topic}/{n:02d}] {prompt}"
    assert template_fields(template) == {"topic", "n", "prompt"}
    (item,) = iter_items(path, template)
    assert item.turns == [[{"role": "user", "content": "[T/03] x"}], [{"role": "user", "content": "[T/03] y"}]]


def test_batch_input_lines(tmp_path):
    line = {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-x", "temperature": 0.5, "messages": [{"role": "user", "content": "hi"}]}}
    path = _write(tmp_path, "b.jsonl", json.dumps(line) + "\n")
    (item,) = iter_items(path)
    assert item.id == "req-1" and item.params == {"temperature": 0.5} and item.metadata == {}
    assert item.turns == [[{"role": "user", "content": "hi"}]]


def test_parquet_rows_are_numbered_like_csv_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"id": ["a", "b", "c"], "prompt": ["x", None, "z"]}), path)
    with pytest.raises(InputError, match=r"d\.parquet:3: needs exactly one of"):
        scan(path)
    pq.write_table(pa.table({"prompt": ["x", "y"], "expected": [1.5, 2.0]}), path)
    items = list(iter_items(path))
    assert [(i.id, i.expected) for i in items] == [("2", 1.5), ("3", 2.0)]


@pytest.mark.parametrize("name,data,message", [
    ("d.jsonl", '{"id": 1.5, "prompt": "x"}\n', r"d\.jsonl:1: field 'id' must be a string or an integer"),
    ("d.jsonl", '{"id": true, "prompt": "x"}\n', r"d\.jsonl:1: field 'id' must be"),
    ("d.jsonl", '{"prompt": "x", "turns": ["a"]}\n', r"d\.jsonl:1: needs exactly one of .*prompt and turns"),
    ("d.jsonl", '{"turns": ["a", 3]}\n', r"d\.jsonl:1: field 'turns' must be a non-empty string list"),
    ("d.jsonl", '{"turns": []}\n', r"d\.jsonl:1: field 'turns' must be a non-empty string list"),
    ("d.jsonl", '{"messages": [{"content": "x"}]}\n', r"d\.jsonl:1: messages\[0\] needs 'role'"),
    ("d.jsonl", '{"prompt": 5}\n', r"d\.jsonl:1: field 'prompt' must be a non-empty string"),
    ("d.jsonl", '{"custom_id": "a", "body": "x"}\n', r"d\.jsonl:1: field 'body' must be an object"),
    ("d.jsonl", "\n  \n\n", r"d\.jsonl: the dataset has no items"),
    ("d.txt", "hello\n", r"d\.txt: unknown dataset format"),
    ("d.parquet", "not parquet", r"d\.parquet: not a readable Parquet file"),
])
def test_validation_messages(tmp_path, name, data, message):
    path = _write(tmp_path, name, data)
    with pytest.raises(InputError, match=message):
        scan(path)


def test_template_errors_name_the_line(tmp_path):
    path = _write(tmp_path, "d.jsonl", '{"prompt": "a", "x": 1}\n{"prompt": "b", "x": "s"}\n')
    with pytest.raises(InputError, match=r"d\.jsonl:2: --template cannot be rendered"):
        scan(path, "{prompt} {x:d}")
    with pytest.raises(InputError, match="--template"):
        template_fields("{prompt")


def test_a_directory_is_not_a_dataset(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        scan(str(tmp_path / "dir.jsonl"))


def test_csv_with_a_byte_order_mark_keeps_its_ids(tmp_path):
    path = _write(tmp_path, "d.csv", "\ufeffid,prompt\nx1,hello\nx2,world\n".encode("utf-8"))
    assert [(i.id, i.metadata) for i in iter_items(path)] == [("x1", {}), ("x2", {})]
