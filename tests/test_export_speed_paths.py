"""`export`'s chunked parse: every path read back with pyarrow and compared with the lines.

The export parses ``responses.jsonl`` in chunks with pyarrow's JSON reader and falls back to
msgspec for the text columns once a chunk holds a non-string there. These tests cover what
the simulator runs of test_export.py do not reach: many chunk boundaries (the chunk and block
sizes are lowered for that, the code is unchanged), a switch to the fallback in the middle of
a run, a line longer than a chunk and than a block at the real sizes, superseded lines, a
live run's partial line, lines with keys in another order or left out, and several runs.

Runs are real: logs written with the real LogWriter, projections by the real projector.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

import llm_ledger.projections.export as export_module
from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started, Usage
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import RunLock
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.export import SCHEMA, export
from llm_ledger.projections.projector import refresh

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")


# -- helpers ------------------------------------------------------------------------------


def write_run(run_dir: Path, items: list[tuple[str, Any, Any, Any]], *, retried: frozenset[str] = frozenset(),
              failed: frozenset[str] = frozenset()) -> RunPaths:
    """A finished run of ``(item_id, prompt, expected, parsed)`` items. An item in ``retried``
    fails finally, then succeeds (its first line is superseded); one in ``failed`` only fails."""
    run_dir.mkdir(parents=True)
    writer = LogWriter.open(str(run_dir / "events.log"))
    writer.linger = 0
    writer.append(RunStarted(run_id=run_dir.name, config={"model": "m-1", "samples": 1}, items=len(items)))
    writer.append(SessionStarted(pid=os.getpid()))
    events: list[Any] = []
    for n, (item_id, prompt, expected, parsed) in enumerate(items):
        key = {"item_id": item_id, "sample": 0}
        body = {"model": "m-1", "messages": [{"role": "user", "content": prompt}]}
        events.append(Started(**key, request=body, expected=expected))
        if item_id in retried or item_id in failed:
            events.append(Failed(**key, error_type="server_error", message="boom ✗", status=500, final=True))
        if item_id not in failed:
            if item_id in retried:
                events.append(Started(**key, attempt=2, request=body, expected=expected))
            events.append(Response(**key, text=f"reply {item_id} — ✓", latency=0.125 + n % 7 / 1000,
                                   usage=Usage(prompt_tokens=11 + n % 5, completion_tokens=3, total_tokens=14 + n % 5)))
            events.append(Parsed(**key, value=parsed))
        if len(events) >= 64:
            writer.append_many(events)
            events = []
    writer.append_many(events + [SessionEnded(reason="completed")])
    writer.close()
    return RunPaths(str(run_dir))


def last_lines(paths: RunPaths) -> list[dict]:
    """responses.jsonl's complete lines, read with the json module, the last line per key
    kept at its place."""
    with open(paths.responses, "rb") as f:
        rows = [json.loads(line) for line in f if line.endswith(b"\n")]
    last = {(r["item_id"], r["sample"]): n for n, r in enumerate(rows)}
    return [r for n, r in enumerate(rows) if last[(r["item_id"], r["sample"])] == n]


def as_text(value: Any) -> str | None:
    """The export's text form: a string as itself, anything else as compact JSON, keys sorted."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def wanted(line: dict) -> dict:
    """A responses.jsonl line as the export row it must become."""
    usage = line.get("usage")
    row = {
        "item_id": line["item_id"], "sample": line["sample"], "model": line.get("model", ""),
        "prompt": as_text(line.get("prompt")), "response": line.get("response"),
        "parsed": as_text(line.get("parsed")), "expected": as_text(line.get("expected")), "correct": line.get("correct"),
        "latency": float(line.get("latency", 0.0)), "attempts": line.get("attempts", 0), "error": line.get("error"),
        "finished_at": int(line.get("finished_at", 0.0) * 1_000_000), "seq": line.get("seq", 0),
    }
    for name in TOKENS:
        row[name] = None if usage is None else usage.get(name, 0)
    return row


def got(row: dict) -> dict:
    """An exported row with its timestamp back in integer microseconds (exact comparison)."""
    return {**row, "finished_at": (row["finished_at"] - EPOCH) // datetime.timedelta(microseconds=1)}


def read_arrow(path: Path) -> tuple[pa.Table, int]:
    with pa.ipc.open_file(str(path)) as reader:
        return reader.read_all(), reader.num_record_batches


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 16 KiB parsed in 4 KiB blocks: a few hundred rows give dozens of chunks."""
    monkeypatch.setattr(export_module, "_CHUNK", 16 << 10)
    monkeypatch.setattr(export_module, "_BLOCK", 4 << 10)


# -- tests --------------------------------------------------------------------------------


def test_string_rows_over_many_chunks_read_back_exactly(tmp_path: Path, small_chunks: None) -> None:
    items = [(f"q{i}", f"Question {i}: ¿qué es {i}² ? 答え {'é' * (i % 50)}", str(i * i), str(i * i % 997)) for i in range(600)]
    paths = write_run(tmp_path / "strings", items)
    out = tmp_path / "out.arrow"
    assert export([paths], "arrow", str(out)) == 600
    table, batches = read_arrow(out)
    assert table.schema == SCHEMA
    assert batches > 5  # many chunks, each its own record batch
    assert [got(r) for r in table.to_pylist()] == [wanted(line) for line in last_lines(paths)]


def test_non_string_values_after_the_first_chunks_become_json_text(tmp_path: Path, small_chunks: None) -> None:
    odd: list[Any] = [7, 0.5, -3, True, False, [1, "two", None], {"b": [1, {"z": 1, "a": "é"}], "a": None}, "", "naïve ✓"]
    items: list[tuple[str, Any, Any, Any]] = [(f"s{i}", f"Prompt {i}", f"E{i}", f"P{i}") for i in range(300)]  # strings only
    for i in range(300):
        value = odd[i % len(odd)]
        prompt: Any = [{"type": "text", "text": f"part {i}"}] if i % 11 == 0 else f"Mixed {i}"
        items.append((f"m{i}", prompt, value if i % 2 else f"x{i}", None if i % 4 == 0 else value))
    paths = write_run(tmp_path / "mixed", items)
    out = tmp_path / "out.parquet"
    assert export([paths], "parquet", str(out)) == 600
    table = pq.read_table(out)
    assert table.schema == SCHEMA
    rows = table.to_pylist()
    assert [got(r) for r in rows] == [wanted(line) for line in last_lines(paths)]
    by_id = {r["item_id"]: r for r in rows}
    assert (by_id["m6"]["parsed"], by_id["m6"]["expected"]) == ('{"a":null,"b":[1,{"a":"é","z":1}]}', "x6")
    assert (by_id["m1"]["expected"], by_id["m1"]["parsed"]) == ("0.5", "0.5")
    assert (by_id["m3"]["expected"], by_id["m3"]["parsed"]) == ("true", "true")
    assert (by_id["m4"]["expected"], by_id["m4"]["parsed"]) == ("x4", None)
    assert (by_id["m5"]["expected"], by_id["m7"]["parsed"]) == ('[1,"two",null]', "")
    assert by_id["m11"]["prompt"] == '[{"text":"part 11","type":"text"}]'
    assert (by_id["s299"]["parsed"], by_id["m17"]["parsed"]) == ("P299", "naïve ✓")


def test_a_line_longer_than_a_chunk_and_a_block(tmp_path: Path) -> None:
    """At the real sizes: the chunk grows to hold the line, pyarrow parses it in one block."""
    huge = "long answer ✓ " * ((export_module._CHUNK + (1 << 20)) // 14)
    assert len(huge.encode()) > export_module._CHUNK > export_module._BLOCK
    items = [("a", "short", "1", "1"), ("b", huge, "2", "2"), ("c", "short again", "3", [3])]
    paths = write_run(tmp_path / "long", items)
    out = tmp_path / "out.arrow"
    assert export([paths], "arrow", str(out)) == 3
    table, _ = read_arrow(out)
    rows = table.to_pylist()
    assert rows[1]["prompt"] == huge and rows[2]["parsed"] == "[3]"
    assert [got(r) for r in rows] == [wanted(line) for line in last_lines(paths)]


def test_superseded_lines_and_several_runs(tmp_path: Path, small_chunks: None) -> None:
    retried = frozenset({"r0", "r57", "r120", "r199"})
    failed = frozenset({"r5", "r150"})
    first = write_run(tmp_path / "first", [(f"r{i}", f"Q{i}", str(i), str(i)) for i in range(200)], retried=retried, failed=failed)
    second = write_run(tmp_path / "second", [(f"r{i}", f"Q{i}", i, i % 4) for i in range(50)], retried=frozenset({"r3"}))
    out = tmp_path / "both.arrow"
    assert export([first, second], "arrow", str(out)) == 250
    table, _ = read_arrow(out)
    assert table.schema.names == ["run_id", *SCHEMA.names]
    rows = table.to_pylist()
    want = [{"run_id": "first", **wanted(line)} for line in last_lines(first)]
    want += [{"run_id": "second", **wanted(line)} for line in last_lines(second)]
    assert [got(r) for r in rows] == want
    with open(first.responses, "rb") as f:
        assert sum(1 for _ in f) == 204  # a superseded line per retried key, left out above
    by_id = {r["item_id"]: r for r in rows if r["run_id"] == "first"}
    assert by_id["r57"]["error"] is None and by_id["r57"]["attempts"] == 2 and by_id["r57"]["prompt_tokens"] is not None
    assert by_id["r5"]["error"].startswith("server_error: boom ✗") and by_id["r5"]["prompt_tokens"] is None


def test_a_live_run_partial_line_reordered_keys_and_left_out_fields(tmp_path: Path, small_chunks: None) -> None:
    """While a writer holds the run, its lines are read as they are: any key order, fields
    left out at their defaults, the line in progress and superseded lines left out."""
    paths = write_run(tmp_path / "live", [(f"k{i}", f"Q{i}", str(i), str(i)) for i in range(150)])
    assert refresh(paths) is not None  # the projections, written once while no one holds the run
    lines = [json.loads(line) for line in Path(paths.responses).read_text(encoding="utf-8").splitlines()]
    order = ["item_id", "sample", "model", "prompt", "response", "parsed", "expected", "correct", "usage",
             "latency", "attempts", "error", "finished_at", "seq"]
    text = "".join(json.dumps({k: line[k] for k in order}, ensure_ascii=False) + "\n" for line in lines)
    text += json.dumps({"seq": 900, "sample": 1, "item_id": "bare"}) + "\n"
    text += json.dumps({"item_id": "some", "sample": 0, "usage": {"prompt_tokens": 4, "cached_tokens": 2}, "latency": 1, "extra": [1]}) + "\n"
    text += json.dumps({**lines[3], "parsed": {"n": 3}, "seq": 901}) + "\n"  # supersedes k3
    text += '{"item_id": "in progress", "sam'
    lock = RunLock.acquire(paths.lock)  # a live writer owns the run: no refresh
    try:
        Path(paths.responses).write_text(text, encoding="utf-8")
        out = tmp_path / "live.parquet"
        assert export([paths], "parquet", str(out)) == 152
    finally:
        lock.release()
    rows = [got(r) for r in pq.read_table(out).to_pylist()]
    assert rows == [wanted(line) for line in last_lines(paths)]
    assert [r["item_id"] for r in rows[-3:]] == ["bare", "some", "k3"] and "in progress" not in {r["item_id"] for r in rows}
    bare, some = rows[-3], rows[-2]
    assert (bare["model"], bare["latency"], bare["attempts"], bare["finished_at"], bare["seq"]) == ("", 0.0, 0, 0, 900)
    assert bare["prompt_tokens"] is None and bare["correct"] is None
    assert [some[name] for name in TOKENS] == [4, 0, 0] and some["latency"] == 1.0 and some["seq"] == 0
    assert rows[-1]["parsed"] == '{"n":3}'


def test_a_damaged_line_is_a_ledger_error_and_leaves_no_file(tmp_path: Path) -> None:
    paths = write_run(tmp_path / "damaged", [(f"d{i}", f"Q{i}", str(i), str(i)) for i in range(20)])
    assert refresh(paths) is not None
    lines = Path(paths.responses).read_bytes().splitlines(keepends=True)
    lines[7] = lines[7][:40] + b"\n"  # cut inside a value: no longer JSON
    lock = RunLock.acquire(paths.lock)  # as a live writer would see it: no repair first
    try:
        Path(paths.responses).write_bytes(b"".join(lines))
        out = tmp_path / "damaged.arrow"
        with pytest.raises(LedgerError, match=r"responses\.jsonl: a line cannot be exported .*--rebuild"):
            export([paths], "arrow", str(out))
    finally:
        lock.release()
    assert list(tmp_path.glob("damaged.arrow*")) == []
