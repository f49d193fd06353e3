"""Start-up of big runs (issue 14): fast validation that refuses exactly what the record by
record checks refuse, a resume that trusts an unchanged dataset and streams its plan, and a
CLI that loads no heavy library for ``--help`` or ``status``.

Validation: JSONL without a template is checked in blocks at msgspec speed; with a template
(``{prompt}`` renders every prompt as it is) every record goes through the record by record
checks. Both must give the same count and sha256, or the same one-line error, on every file,
at any block size (a small one puts block boundaries everywhere).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, SessionStarted, Started
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.runners import dataset as dataset_module
from llm_ledger.runners import prepare as prepare_module
from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.dataset import file_sha256, scan
from llm_ledger.runners.prepare import prepare, prepare_resume
from llm_ledger.runners.session import Session, run_prepared

# -- validation: blocks agree with record by record --------------------------------------

PLAIN = [b'{"id": %d, "prompt": "q%d", "expected": "a%d"}\n' % (i, i, i) for i in range(200)]

# name -> lines put among the plain ones (at the start, the middle and the end)
TRICKY: dict[str, list[bytes]] = {
    "metadata_fields": [b'{"id": "m1", "prompt": "x", "topic": "geo", "level": 2}\n'],
    "no_ids_line_numbers": [b'{"prompt": "x"}\n', b'{"prompt": "y", "expected": [1, {"a": null}]}\n'],
    "custom_id": [b'{"custom_id": "c1", "prompt": "x"}\n'],
    "id_null_then_custom_id": [b'{"id": null, "custom_id": "c2", "prompt": "x"}\n'],
    "empty_id_is_the_line": [b'{"id": "", "prompt": "x"}\n'],
    "big_int_id": [b'{"id": 123456789012345678901234567890, "prompt": "x"}\n'],
    "messages_turns_body": [b'{"id": "mm", "messages": [{"role": "user", "content": "hi"}]}\n',
                            b'{"id": "tt", "turns": ["a", "b"]}\n',
                            b'{"custom_id": "bb", "body": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}}\n'],
    "blank_and_space_lines": [b"\n", b"   \n", b"\t\r\n"],
    "crlf": [b'{"id": "cr", "prompt": "x"}\r\n'],
    "two_objects_on_a_line": [b'{"id": "t1", "prompt": "x"} {"id": "t2", "prompt": "y"}\n'],
    "object_over_two_lines": [b'{"id": "s1",\n', b'"prompt": "x"}\n'],
    "split_and_doubled": [b'{"id": "s2", "prompt":\n', b'"x"} {"id": "s3", "prompt": "y"}\n'],
    "number_out_of_range_in_metadata": [b'{"id": "n1", "prompt": "x", "score": 1e999}\n'],
    "number_out_of_range_expected": [b'{"id": "n2", "prompt": "x", "expected": -1e999}\n'],
    "int_beyond_64_bits_in_metadata": [b'{"id": "n5", "prompt": "x", "topic": 123456789012345678901234567890}\n'],
    "unstorable_int_expected": [b'{"id": "n3", "prompt": "x", "expected": 123456789012345678901234567890}\n'],
    "unstorable_int_nested": [b'{"id": "n4", "prompt": "x", "expected": {"a": [18446744073709551616]}}\n'],
    "invalid_utf8_in_metadata": [b'{"id": "u1", "prompt": "x", "note": "caf\xe9"}\n'],
    "lone_surrogate_in_metadata": [b'{"id": "u2", "prompt": "x", "note": "\\ud800"}\n'],
    "nan": [b'{"id": "u3", "prompt": "x", "expected": NaN}\n'],
    "array_line": [b'["x", "y"]\n'],
    "scalar_line": [b'"x"\n'],
    "empty_prompt": [b'{"id": "e1", "prompt": ""}\n'],
    "prompt_not_a_string": [b'{"id": "e2", "prompt": 5}\n'],
    "id_float": [b'{"id": 1.5, "prompt": "x"}\n'],
    "id_bool": [b'{"id": true, "prompt": "x"}\n'],
    "prompt_and_messages_null": [b'{"id": "e3", "prompt": "x", "messages": null}\n'],
    "duplicate_keys": [b'{"id": "d0", "prompt": "", "prompt": "x"}\n', b'{"id": "d1", "prompt": "x", "prompt": ""}\n'],
    "duplicate_of_a_plain_id": [b'{"id": "150", "prompt": "x"}\n'],  # 150 as an integer id in PLAIN
    "duplicate_of_a_line_number": [b'{"id": "%d", "prompt": "x"}\n' % 260, b'{"prompt": "x"}\n'],
    "trailing_comma": [b'{"id": "c", "prompt": "x",}\n'],
    "byte_order_mark": [b'\xef\xbb\xbf{"id": "bom", "prompt": "x"}\n'],
}


def _outcome(path: str, template: str | None) -> object:
    try:
        info = scan(path, template)
    except InputError as exc:
        return str(exc)
    return info.items, info.sha256, info.size


@pytest.mark.parametrize("block", [dataset_module._BLOCK, 97, 4096])
@pytest.mark.parametrize("name", list(TRICKY))
def test_block_validation_refuses_and_accepts_exactly_what_record_checks_do(tmp_path, monkeypatch, name, block):
    monkeypatch.setattr(dataset_module, "_BLOCK", block)
    lines = TRICKY[name]
    for where, data in (("start", lines + PLAIN), ("middle", PLAIN[:100] + lines + PLAIN[100:]),
                        ("end", PLAIN + lines), ("end_without_newline", PLAIN + lines[:-1] + [lines[-1].rstrip(b"\r\n")])):
        path = tmp_path / f"{where}.jsonl"
        path.write_bytes(b"".join(data))
        fast, slow = _outcome(str(path), None), _outcome(str(path), "{prompt}")
        assert fast == slow, (name, where, fast, slow)


def test_plain_blocks_count_hash_and_find_duplicates_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_module, "_BLOCK", 1000)
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(PLAIN))
    info = scan(str(path))
    assert (info.items, info.sha256, info.size) == (200, file_sha256(str(path)), path.stat().st_size)
    path.write_bytes(b"".join(PLAIN) + b'{"id": "3", "prompt": "again"}\n')  # "3" is the integer id 3 of line 4
    with pytest.raises(InputError) as exc:
        scan(str(path))
    assert str(exc.value) == f"{path}:201: duplicate id '3'"


def test_a_bad_record_at_the_end_of_a_big_dataset_is_refused_before_any_request(tmp_path):
    """100,000 good lines, one bad at the very end: exit 2, one line naming it, no request."""
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        f.writelines(b'{"id": %d, "prompt": "what is %d?", "expected": "%d"}\n' % (i, i, i) for i in range(100_000))
        f.write(b'{"id": "last", "prompt": "x", "expected": 1e999}\n')
    req_log = tmp_path / "req.jsonl"
    r = run_cli("run", str(path), "--runs-dir", str(tmp_path / "runs"), "--sim", json.dumps({"request_log": str(req_log)}),
                cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}:100001: not valid JSON (Number out of range"), line
    assert not req_log.exists()  # the simulator never started: 0 requests
    assert not (tmp_path / "runs").exists()


# -- resume: an unchanged dataset is trusted; a changed one is found as before -----------

def _finished_run(tmp_path: Path, n: int = 30) -> RunPaths:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i}?", "expected": str(i)}) + "\n"
                            for i in range(n)))
    prepared = prepare(str(data), RunConfig(transport="simulator"), str(tmp_path / "runs"), "r")
    _, reason = run_prepared(prepared)
    assert reason == "completed"
    return prepared.paths


@pytest.fixture
def scans(monkeypatch):
    """The scans prepare_resume makes (each still runs)."""
    calls: list[str] = []

    def counted(path, template=None):
        calls.append(path)
        return scan(path, template)

    monkeypatch.setattr(prepare_module, "scan", counted)
    return calls


def test_a_resume_trusts_an_unchanged_dataset_and_finds_every_change(tmp_path, scans):
    paths = _finished_run(tmp_path)
    scans.clear()  # the run's own validation
    started = next(iter_events(paths.log))
    data = Path(started.dataset)
    assert (started.dataset_items, started.dataset_size) == (30, data.stat().st_size)

    assert prepare_resume(paths).dataset.items == 30 and scans == []  # not validated again
    os.utime(data, (1, 1))  # touched: the same bytes
    assert prepare_resume(paths).dataset.items == 30 and scans == []

    original = data.read_bytes()
    stamp = data.stat()
    changed = re.escape("the dataset changed since the run started (sha256 differs)")
    data.write_bytes(original.replace(b"What is 7?", b"What is 8?"))  # same size, same mtime
    os.utime(data, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    with pytest.raises(InputError, match=changed):
        prepare_resume(paths)
    data.write_bytes(original + b'{"id": "new", "prompt": "x"}\n')
    with pytest.raises(InputError, match=changed):
        prepare_resume(paths)
    data.write_bytes(original + b'{"id": "q0", "prompt": "x"}\n')  # invalid: said first, as before
    with pytest.raises(InputError, match=r"qa\.jsonl:31: duplicate id 'q0'"):
        prepare_resume(paths)
    data.unlink()
    with pytest.raises(InputError, match="qa.jsonl: no such file"):
        prepare_resume(paths)
    assert len(scans) == 4  # every changed or missing dataset was scanned, as before


def test_a_log_without_the_dataset_facts_validates_on_resume(tmp_path, scans):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "x"}) + "\n" for i in range(5)))
    paths = RunPaths(str(tmp_path / "runs" / "old"))
    os.makedirs(paths.dir)
    writer = LogWriter.open(paths.log)
    writer.append(RunStarted(run_id="old", config=RunConfig(transport="simulator").to_dict(), dataset=str(data),
                             dataset_sha256=file_sha256(str(data)), items=5, version="0.1.0"))
    writer.close()
    assert prepare_resume(paths).dataset.items == 5 and scans == [str(data)]


# -- the resume plan: exactly the unfinished (item, sample)s, streamed -------------------

N, SAMPLES = 1300, 2  # more items than one batch of index reads (plan._BATCH)


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory) -> tuple[RunPaths, dict[tuple[str, int], str]]:
    """A run whose log says, per (item, sample): done, in flight, failed (finally), or nothing."""
    tmp = tmp_path_factory.mktemp("plan")
    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"i{i}", "prompt": "p" * (i % 50 + 1)}) + "\n" for i in range(N)))
    paths = RunPaths(str(tmp / "runs" / "p"))
    os.makedirs(paths.dir)
    config = RunConfig(transport="simulator", samples=SAMPLES).to_dict()
    writer = LogWriter.open(paths.log)
    writer.append(RunStarted(run_id="p", config=config, dataset=str(data), dataset_sha256=file_sha256(str(data)),
                             items=N, dataset_items=N, dataset_size=data.stat().st_size, version="0.1.0"))
    writer.append(SessionStarted(pid=1))
    states: dict[tuple[str, int], str] = {}
    events = []
    for i in range(0, N, 3):
        for s in range(SAMPLES):
            item, kind = f"i{i}", ("done", "in_flight", "failed", "done", "none")[(i + s) % 5]
            states[(item, s)] = kind
            if kind == "none":
                continue
            events.append(Started(item_id=item, sample=s))
            if kind == "done":
                events += [Response(item_id=item, sample=s, text="x"), Parsed(item_id=item, sample=s, value="x")]
            elif kind == "failed":
                events.append(Failed(item_id=item, sample=s, error_type="bad_request", final=True))
    writer.append_many(events)
    writer.close()
    return paths, states


@pytest.mark.parametrize("skip_failed", [False, True])
def test_the_resume_plan_is_exactly_the_unfinished_work_and_says_so(partial_run, skip_failed):
    paths, states = partial_run
    prepared = prepare_resume(paths, skip_failed)
    session = Session(prepared)
    try:
        works = session.plan()
        assert not isinstance(works, list)  # streamed, never held whole
        sent = [(w.item.id, w.sample) for w in works if w is not None]  # None: the plan's pause between batches
    finally:
        session.close("interrupted")
    skipped = {"done"} | ({"failed"} if skip_failed else set())
    expected = [(f"i{i}", s) for i in range(N) for s in range(SAMPLES) if states.get((f"i{i}", s), "none") not in skipped]
    assert sent == expected  # in file order, each once
    found = session.found
    count = {k: sum(v == k for v in states.values()) for k in ("done", "in_flight", "failed")}
    assert (found.done, found.in_flight, found.failed) == (count["done"], count["in_flight"], count["failed"])
    assert found.never_started == N * SAMPLES - sum(count.values())
    assert found.to_send == len(expected)
    in_flight = [int(k[0][1:]) for k, v in states.items() if v == "in_flight"]
    assert found.in_flight_tokens == sum((i % 50 + 1) // 4 + 1 for i in in_flight)


# -- CLI start-up: what --help and status load -------------------------------------------

HEAVY = {"pyarrow", "openpyxl", "openai", "httpx", "httpx2", "starlette", "uvicorn", "aiohttp", "tenacity",
         "aiolimiter", "asyncio", "ssl"}

MACHINERY = {"llm_ledger.ledger.writer", "llm_ledger.runners.session", "llm_ledger.runners.engine",
             "llm_ledger.runners.prepare", "llm_ledger.projections.projector"}  # what only a run needs


def _imported(*args: str) -> set[str]:
    """Top-level modules a real `ledger ARGS` process imported (``-X importtime`` lists each)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "llm_ledger.cli", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def test_help_and_status_load_no_heavy_library(tmp_path):
    paths = _finished_run(tmp_path, 3)
    for args in (["--help"], ["status", paths.dir], ["status", paths.dir, "--json"]):
        imported = _imported(*args)
        assert "llm_ledger.cli.app" in imported, args  # the listing is real
        top = {name.split(".")[0] for name in imported}
        assert not top & HEAVY, (args, top & HEAVY)
        assert not imported & MACHINERY, (args, imported & MACHINERY)
    assert "lmdb" not in {name.split(".")[0] for name in _imported("--help")}
