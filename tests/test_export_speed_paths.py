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
import random
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
              failed: frozenset[str] = frozenset(), numbered: bool = False, samples: int = 1,
              order: list[int] | None = None, metadata: Any = None) -> RunPaths:
    """A finished run of ``(item_id, prompt, expected, parsed)`` items. An item in ``retried``
    fails finally, then succeeds (its first line is superseded); one in ``failed`` only fails.
    ``numbered``: the events carry the item's dataset line (n + 1), as today's runner writes
    them (else as a log older than that field); ``order``: the order in which the
    (item, sample) pairs finish, as indexes into their dataset order (default: that order);
    ``metadata(n)``: item n's other dataset fields."""
    run_dir.mkdir(parents=True)
    writer = LogWriter.open(str(run_dir / "events.log"))
    writer.linger = 0
    writer.append(RunStarted(run_id=run_dir.name, config={"model": "m-1", "samples": samples}, items=len(items)))
    writer.append(SessionStarted(pid=os.getpid()))
    events: list[Any] = []
    pairs = [(n, sample) for n in range(len(items)) for sample in range(samples)]
    for n, sample in (pairs if order is None else [pairs[i] for i in order]):
        item_id, prompt, expected, parsed = items[n]
        key = {"item_id": item_id, "sample": sample}
        where = {"line": n + 1, "metadata": metadata(n) if metadata else {}} if numbered else {}
        body = {"model": "m-1", "messages": [{"role": "user", "content": prompt}]}
        events.append(Started(**key, request=body, expected=expected, **where))
        if item_id in retried or item_id in failed:
            events.append(Failed(**key, error_type="server_error", message="boom ✗", status=500, final=True))
        if item_id not in failed:
            if item_id in retried:
                events.append(Started(**key, attempt=2, request=body, expected=expected, **where))
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
    kept, in the export's order: by dataset line, then sample; lines without one (an older
    log) by the order in which their item first finished."""
    with open(paths.responses, "rb") as f:
        rows = [json.loads(line) for line in f if line.endswith(b"\n")]
    last = {(r["item_id"], r["sample"]): n for n, r in enumerate(rows)}
    first_seen: dict[str, int] = {}
    for r in rows:
        first_seen.setdefault(r["item_id"], len(first_seen))
    kept = [r for n, r in enumerate(rows) if last[(r["item_id"], r["sample"])] == n]
    return sorted(kept, key=lambda r: (r.get("line", 0), 0 if r.get("line") else first_seen[r["item_id"]], r["sample"]))


def as_text(value: Any) -> str | None:
    """The export's text form: a string as itself, anything else as compact JSON, keys sorted."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def wanted(line: dict, run_id: str) -> dict:
    """A responses.jsonl line as the export row it must become (without metadata columns)."""
    usage = line.get("usage")
    row = {
        "run_id": run_id, "item_id": line["item_id"], "sample": line["sample"], "model": line.get("model", ""),
        "prompt": as_text(line.get("prompt")), "response": line.get("response"),
        "parsed": as_text(line.get("parsed")), "expected": as_text(line.get("expected")), "correct": line.get("correct"),
        "correct_reviewed": line.get("correct_reviewed", line.get("correct")),  # a line without it: the machine's
        "latency": None if line.get("latency") is None else float(line["latency"]), "attempts": line.get("attempts", 0), "error": line.get("error"),
        "finished_at": int(line.get("finished_at", 0.0) * 1_000_000), "seq": line.get("seq", 0), "conversation": None,
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
    assert [got(r) for r in table.to_pylist()] == [wanted(line, paths.run_id) for line in last_lines(paths)]


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
    assert [got(r) for r in rows] == [wanted(line, paths.run_id) for line in last_lines(paths)]
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
    assert [got(r) for r in rows] == [wanted(line, paths.run_id) for line in last_lines(paths)]


def test_superseded_lines_and_several_runs(tmp_path: Path, small_chunks: None) -> None:
    retried = frozenset({"r0", "r57", "r120", "r199"})
    failed = frozenset({"r5", "r150"})
    first = write_run(tmp_path / "first", [(f"r{i}", f"Q{i}", str(i), str(i)) for i in range(200)], retried=retried, failed=failed)
    second = write_run(tmp_path / "second", [(f"r{i}", f"Q{i}", i, i % 4) for i in range(50)], retried=frozenset({"r3"}))
    out = tmp_path / "both.arrow"
    assert export([first, second], "arrow", str(out)) == 250
    table, _ = read_arrow(out)
    assert table.schema == SCHEMA  # run_id first, as for one run
    rows = table.to_pylist()
    want = [wanted(line, "first") for line in last_lines(first)]
    want += [wanted(line, "second") for line in last_lines(second)]
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
    assert rows == [wanted(line, paths.run_id) for line in last_lines(paths)]
    # no dataset line in these lines (as in an older log): items in the order they first finished
    assert [r["item_id"] for r in rows[-2:]] == ["bare", "some"] and "in progress" not in {r["item_id"] for r in rows}
    assert [r["item_id"] for r in rows[:5]] == ["k0", "k1", "k2", "k3", "k4"]
    bare, some = rows[-2], rows[-1]
    assert (bare["model"], bare["latency"], bare["attempts"], bare["finished_at"], bare["seq"]) == ("", None, 0, 0, 900)  # no latency recorded: null, not 0
    assert bare["prompt_tokens"] is None and bare["correct"] is None
    assert [some[name] for name in TOKENS] == [4, 0, 0] and some["latency"] == 1.0 and some["seq"] == 0
    assert rows[3]["parsed"] == '{"n":3}' and rows[3]["seq"] == 901


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


def test_rows_come_in_dataset_order_with_metadata_columns_whatever_finished_first(tmp_path: Path, small_chunks: None) -> None:
    """Items finish in a shuffled order over many chunks, three samples each, some retried
    (a superseded line): every format's rows come back by dataset line, then sample, with a
    typed column per metadata field (after ``sample``, by name)."""
    seed = 20261130
    print("seed", seed)
    n_items, samples = 240, 3
    order = list(range(n_items * samples))
    random.Random(seed).shuffle(order)
    items = [(f"w{(n * 7919) % 1000:03d}", f"Prompt {n} " + "x" * (n % 90), str(n % 4), str(n % 3)) for n in range(n_items)]

    def metadata(n: int) -> dict[str, Any]:
        fields: dict[str, Any] = {"topic": ["geo", "math", "art"][n % 3], "level": n % 5, "model": f"src-{n % 2}"}
        fields["score"] = n / 2 if n % 2 else n // 2  # ints and floats: a float column
        fields["tags"] = ["a", n] if n % 4 else "plain"  # mixed: text (JSON for the list)
        if n % 10:
            fields["note"] = f"note {n}"  # missing from some records: null there
        return fields

    paths = write_run(tmp_path / "shuffled", items, numbered=True, samples=samples, order=order, metadata=metadata,
                      retried=frozenset({items[5][0], items[100][0]}))
    rows_by_format = {}
    for fmt in ("arrow", "parquet", "jsonl", "csv"):
        out = tmp_path / f"out.{fmt}"
        assert export([paths], fmt, str(out)) == n_items * samples
        if fmt == "arrow":
            table, batches = read_arrow(out)
            assert batches > 5
        elif fmt == "parquet":
            table = pq.read_table(out)
        else:
            import pyarrow.csv as pacsv
            import pyarrow.json as pajson

            table = pacsv.read_csv(out) if fmt == "csv" else pajson.read_json(out)
            keys = [list(json.loads(line)) for line in out.read_text(encoding="utf-8").splitlines()] if fmt == "jsonl" else None
            if keys is not None:  # JSONL keys in the schema's order, on every line
                assert all(k == keys[0] for k in keys) and keys[0] == table.column_names
        rows_by_format[fmt] = table
    arrow = rows_by_format["arrow"]
    columns = ["run_id", "item_id", "sample", "level", "metadata.model", "note", "score", "tags", "topic", *SCHEMA.names[3:]]
    for fmt, table in rows_by_format.items():
        assert table.column_names == columns, fmt
    types = dict(zip(arrow.schema.names, arrow.schema.types))
    assert (types["level"], types["score"], types["topic"], types["tags"], types["metadata.model"]) == (
        pa.int64(), pa.float64(), pa.string(), pa.string(), pa.string())
    rows = arrow.to_pylist()
    assert [(r["item_id"], r["sample"]) for r in rows] == [(item[0], s) for item in items for s in range(samples)]
    for fmt in ("parquet", "jsonl", "csv"):
        assert rows_by_format[fmt].column("item_id").to_pylist() == arrow.column("item_id").to_pylist(), fmt
        assert rows_by_format[fmt].column("sample").to_pylist() == arrow.column("sample").to_pylist(), fmt
    for r in rows:
        n = int(r["prompt"].split()[1])
        want = metadata(n)
        assert (r["topic"], r["level"], r["metadata.model"], r["score"]) == (want["topic"], want["level"], want["model"], want["score"])
        assert r["tags"] == ("plain" if n % 4 == 0 else json.dumps(["a", n], separators=(",", ":")))
        assert r["note"] == want.get("note") and r["model"] == "m-1" and r["run_id"] == "shuffled"
    assert [got(r) for r in rows] == [{**wanted(line, "shuffled"), **{c: r[c] for c in columns[3:9]}}
                                      for line, r in zip(last_lines(paths), rows)]
    with open(paths.responses, "rb") as f:
        finished = [json.loads(line)["item_id"] for line in f]
    assert len(finished) == n_items * samples + 2 * samples and finished[:20] != [item[0] for item in items[:20]]  # not the file's order
