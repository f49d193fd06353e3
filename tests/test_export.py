"""`ledger export`: every format read back with its own reader (pyarrow, csv, json, openpyxl).

Two runs are made once for the module against the embedded simulator:

- ``clean``: 20 items x 2 samples, no faults, with a mix of right, wrong and unscored
  answers, a non-string ``expected`` (an int and a list), a prompt full of CSV hazards,
  metadata fields (``topic``, and ``level`` but in one record) and a multi-turn item (q3);
- ``flaky``: 20 items, ``--retries 0`` and 50% HTTP 500s, then one ``ledger resume``: some
  keys failed first and were finished by the resume (so ``responses.jsonl`` has more lines
  than keys, and finished in another order than the dataset's), some failed twice.

Every export is then written once: in-process through the export use case (what the tests
read back is the format, not the command line), and a few through the real CLI (the default
file name, the "wrote N rows" line, the bad calls and their exit codes). Each test reads one
back and compares it with ``responses.jsonl`` (last line per key, in dataset order) or with
the log.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events
from llm_ledger.projections.export import export

REGEX = "regex:answer is (.+)$"
FORMATS = ("arrow", "parquet", "csv", "jsonl", "xlsx", "openai-batch")
EXT = {"arrow": "arrow", "parquet": "parquet", "csv": "csv", "jsonl": "jsonl", "xlsx": "xlsx", "openai-batch": "batch.jsonl"}
TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")
INT_COLUMNS = ("sample", "attempts", "seq", "level", *TOKENS)
UTC = datetime.timezone.utc
EVENT_FORMATS = {"flaky": ("arrow", "jsonl", "csv")}  # (the clean run's events: in multi-events.arrow)
MULTI_FORMATS = ("arrow", "xlsx")
CLI_EXPORTS = {("flaky", "csv"), ("multi", "xlsx")}  # through `ledger export` (and the default path, the bad calls)
HAZARD = 'Line one, "quoted"; a\nnewline, tab\t and é ✓'
TOPICS = ("geography", "arithmetic", "history")
METADATA = {"clean": ["level", "topic"], "flaky": []}  # each run's metadata columns, by name


# -- helpers ------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def clean_records() -> list[dict]:
    records = []
    for i in range(20):
        letter = "ABCD"[i % 4]
        records.append({"id": f"q{i}", "prompt": f"Question {i}? answer: {letter}", "expected": letter})
    records[16]["expected"] = "B"  # hint A: wrong
    records[17] = {"id": "q17", "prompt": HAZARD + " answer: B", "expected": "C"}  # wrong, CSV hazards
    del records[18]["expected"]  # unscored: correct is null
    records[19] = {"id": "q19", "prompt": "Seven? answer: 7", "expected": 7}  # an int expected
    records[15]["expected"] = ["D", "d"]  # a list expected (any of them)
    records[3] = {"id": "q3", "turns": ["Warm-up for 3?", "Question 3? answer: D"], "expected": "D"}  # multi-turn
    for i, record in enumerate(records):
        record["topic"] = TOPICS[i % 3]
        if i != 11:
            record["level"] = i % 5  # an int column, null where a record has none
    return records


def flaky_records() -> list[dict]:
    return [{"id": f"f{i}", "prompt": f"Item {i}? answer: {'ABCD'[i % 4]}", "expected": "ABCD"[i % 4]} for i in range(20)]


DATASET_IDS = {"clean": [r["id"] for r in clean_records()], "flaky": [r["id"] for r in flaky_records()]}
SAMPLES = {"clean": 2, "flaky": 1}


def dataset_order(run: str) -> list[tuple[str, int]]:
    """The (item_id, sample) keys as every export lists them: dataset order, then sample."""
    return [(item_id, s) for item_id in DATASET_IDS[run] for s in range(SAMPLES[run])]


def last_rows(run_dir: Path) -> list[dict]:
    """responses.jsonl with only the last line of each (item, sample), in the dataset's
    order (the line each item has in its dataset), then by sample."""
    rows = read_jsonl(run_dir / "responses.jsonl")
    last = {(r["item_id"], r["sample"]): n for n, r in enumerate(rows)}
    kept = [r for n, r in enumerate(rows) if last[(r["item_id"], r["sample"])] == n]
    return sorted(kept, key=lambda r: (r["line"], r["sample"]))


def text_of(value):
    return value if value is None or isinstance(value, str) else json.dumps(value)


def flat(row: dict, metadata: list[str]) -> dict:
    """A responses.jsonl row as an export row: usage flattened, a column per metadata field,
    the conversation (a multi-turn item's) as role/content pairs, finished_at as a float."""
    out = {k: v for k, v in row.items() if k not in ("usage", "line", "metadata", "conversation")}
    usage = row["usage"] or {}
    for name in TOKENS:
        out[name] = usage.get(name) if row["usage"] else None
    for name in metadata:
        out[name] = row.get("metadata", {}).get(name)
    conversation = row.get("conversation")
    out["conversation"] = None if conversation is None else [{"role": m["role"], "content": m["content"]} for m in conversation]
    return out


def assert_rows_match(got: list[dict], run: str, world, run_id: str | None = None, time_tolerance: float = 1.5e-6,
                      metadata: list[str] | None = None) -> None:
    """Exported rows (python values, finished_at an aware datetime) equal responses.jsonl,
    in the dataset's order. Timestamps are microseconds (Excel keeps milliseconds: xlsx
    passes a wider tolerance); a conversation read from text (CSV, xlsx) is parsed first."""
    want = [flat(r, METADATA[run] if metadata is None else metadata) for r in last_rows(run_dir(world, run))]
    assert len(got) == len(want)
    assert [(g["item_id"], g["sample"]) for g in got] == [(w["item_id"], w["sample"]) for w in want] == dataset_order(run)
    for g, w in zip(got, want):
        assert g["run_id"] == (run_id or run)
        for name, value in w.items():
            if name == "finished_at":
                ts = g[name]
                assert isinstance(ts, datetime.datetime) and ts.utcoffset() == datetime.timedelta(0), ts
                assert abs(ts.timestamp() - value) < time_tolerance, (ts, value)
            elif name == "latency":  # a JSON number, or null for a key no reply of which was timed: float64
                assert (value is None and g[name] is None) or (isinstance(g[name], float) and g[name] == value), \
                    (w["item_id"], name, g[name], value)
            elif name in ("parsed", "expected", "prompt") and not (value is None or isinstance(value, str)):
                assert isinstance(g[name], str) and json.loads(g[name]) == value, (name, g[name], value)
            elif name == "conversation" and isinstance(g[name], str):
                assert value is not None and json.loads(g[name]) == value and list(json.loads(g[name])[0]) == ["role", "content"]
            else:
                assert g[name] == value and type(g[name]) is type(value), (w["item_id"], name, g[name], value)


def expected_columns(metadata: list[str] = ()) -> list[str]:
    return ["run_id", "item_id", "sample", *metadata, "model", "prompt", "response", "parsed", "expected", "correct", "correct_reviewed",
            *TOKENS, "latency", "attempts", "error", "finished_at", "seq", "conversation"]


def parse_time(text: str) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert value.utcoffset() == datetime.timedelta(0), text
    return value


def csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    """CSV read with the csv module, then typed by column (pyarrow writes null as empty)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        raw = [dict(zip(header, line, strict=True)) for line in reader]
    rows = []
    for r in raw:
        row = {}
        for name, s in r.items():
            if name in INT_COLUMNS:
                row[name] = int(s) if s else None
            elif name in ("correct", "correct_reviewed"):
                row[name] = {"true": True, "false": False, "": None}[s]
            elif name == "latency":
                row[name] = float(s) if s else None
            elif name == "finished_at":
                row[name] = parse_time(s)
            else:
                row[name] = s if s != "" else None
        rows.append(row)
    return header, rows


def jsonl_rows(path: Path) -> list[dict]:
    rows = read_jsonl(path)
    for r in rows:
        r["finished_at"] = parse_time(r["finished_at"])
    return rows


def xlsx_book(path: Path):
    from openpyxl import load_workbook

    return load_workbook(path, read_only=True)


def xlsx_rows(path: Path) -> tuple[list[str], list[dict]]:
    book = xlsx_book(path)
    assert book.sheetnames == ["rows", "summary"]
    values = list(book["rows"].iter_rows(values_only=True))
    header = list(values[0])
    rows = []
    for line in values[1:]:
        assert len(line) <= len(header)  # (read-only openpyxl drops a row's trailing empty cells)
        row = dict(zip(header, (*line, *[None] * (len(header) - len(line))), strict=True))
        ts = row["finished_at"]
        assert isinstance(ts, datetime.datetime) and ts.tzinfo is None  # Excel: naive, UTC
        row["finished_at"] = ts.replace(tzinfo=UTC)
        assert row["latency"] is None or isinstance(row["latency"], (int, float))  # Excel numbers: 0.0 reads as 0
        row["latency"] = None if row["latency"] is None else float(row["latency"])
        rows.append(row)
    book.close()
    return header, rows


def log_events(run: Path) -> list[dict]:
    """The run's events as `ledger log` prints them (one JSON object each, DESIGN's names)."""
    return [json.loads(msgspec.json.encode(event)) for event in iter_events(str(run / "events.log"))]


# -- the module's runs and exports ---------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    runs = base / "runs"
    out = base / "out"
    out.mkdir()
    clean_ds = write_jsonl(base / "clean.jsonl", clean_records())
    flaky_ds = write_jsonl(base / "flaky.jsonl", flaky_records())

    def cli(*args, cwd=base):
        return run_cli(*args, "--runs-dir", str(runs), cwd=cwd)

    with ThreadPoolExecutor(2) as pool:
        clean = pool.submit(cli, "run", str(clean_ds), "--run-id", "clean", "--samples", "2", "--parser", REGEX,
                            "--sim", json.dumps({"latency": 0.02, "latency_jitter": 0.02}))  # finished in a shuffled order
        flaky = pool.submit(cli, "run", str(flaky_ds), "--run-id", "flaky", "--parser", REGEX, "--retries", "0",
                            "--sim", json.dumps({"rate_500": 0.5, "seed": 3}))
        r = clean.result()
        assert r.returncode == 0, (r.stdout, r.stderr)
        r = flaky.result()
        assert r.returncode == 1, (r.stdout, r.stderr)  # some items failed finally
    r = cli("resume", "flaky")
    assert r.returncode in (0, 1), (r.stdout, r.stderr)

    jobs = {}  # key -> (runs, format, output, events)
    for run in ("clean", "flaky"):
        for fmt in FORMATS:
            jobs[(run, fmt)] = ([run], fmt, out / f"{run}.{EXT[fmt]}", False)
        for fmt in EVENT_FORMATS.get(run, ()):
            jobs[(run, fmt, "events")] = ([run], fmt, out / f"{run}-events.{EXT[fmt]}", True)
    for fmt in MULTI_FORMATS:
        jobs[("multi", fmt)] = (["clean", "flaky"], fmt, out / f"multi.{EXT[fmt]}", False)
    jobs[("multi", "arrow", "events")] = (["clean", "flaky"], "arrow", out / "multi-events.arrow", True)
    rows = {key: export([RunPaths(str(runs / name)) for name in names], fmt, str(path), events=events)
            for key, (names, fmt, path, events) in jobs.items() if key not in CLI_EXPORTS}

    default_dir = base / "default"
    default_dir.mkdir()
    bad = {name: base / name for name in ("bad-format", "bad-run", "bad-missing", "bad-dir")}
    for where in bad.values():
        where.mkdir()
    (bad["bad-run"] / "keep.parquet").write_bytes(b"precious")
    with ThreadPoolExecutor(4) as pool:
        futures = {}
        for key in CLI_EXPORTS:
            names, fmt, path, events = jobs[key]
            futures[key] = pool.submit(cli, "export", *names, fmt, *(["--events"] if events else []), "-o", str(path))
        futures["default"] = pool.submit(cli, "export", "clean", "parquet", cwd=default_dir)
        # bad calls, each in a directory of its own (checked by the tests below)
        futures["bad-format"] = pool.submit(cli, "export", "clean", "xml", "-o", str(bad["bad-format"] / "out.xml"), cwd=bad["bad-format"])
        futures["bad-run"] = pool.submit(cli, "export", "clean", "nosuchrun", "parquet", "-o", str(bad["bad-run"] / "keep.parquet"), cwd=bad["bad-run"])
        futures["bad-missing"] = pool.submit(cli, "export", "clean", cwd=bad["bad-missing"])
        futures["bad-dir"] = pool.submit(cli, "export", "clean", "arrow", "-o", str(bad["bad-dir"] / "missing" / "x.arrow"), cwd=bad["bad-dir"])
        results = {key: f.result() for key, f in futures.items()}
    for key, r in results.items():
        if not str(key).startswith("bad-"):
            assert r.returncode == 0, (key, r.stdout, r.stderr)
    for key in CLI_EXPORTS:  # what the command says it wrote
        path = jobs[key][2]
        line = results[key].stdout.strip()
        assert line.startswith("wrote ") and line.endswith(f" rows to {path}"), line
        rows[key] = int(line.split()[1])
    return {"base": base, "runs": runs, "out": out, "results": results, "default": default_dir, "bad": bad, "rows": rows,
            "logs": {run: log_events(runs / run) for run in ("clean", "flaky")}}


def run_dir(world, run: str) -> Path:
    return world["runs"] / run


# -- the runs are what the tests need --------------------------------------------------------


def test_the_flaky_run_has_keys_finished_twice(world):
    rows = read_jsonl(run_dir(world, "flaky") / "responses.jsonl")
    keys = {(r["item_id"], r["sample"]) for r in rows}
    assert len(keys) == 20 and len(rows) > len(keys)
    last = {(r["item_id"], r["sample"]): r for r in rows}
    first = {}
    for r in rows:
        first.setdefault((r["item_id"], r["sample"]), r)
    rescued = [k for k in keys if first[k]["error"] and last[k]["correct"] is True]
    assert rescued, "no key failed and was then finished by the resume"
    assert all(last[k]["attempts"] == 2 and last[k]["error"] is None for k in rescued)
    # and the clean run scores as designed: 4 wrong (q16, q17 in both samples), 2 unscored (q18)
    clean = read_jsonl(run_dir(world, "clean") / "responses.jsonl")
    assert len(clean) == 40
    assert sorted(r["item_id"] for r in clean if r["correct"] is False) == ["q16", "q16", "q17", "q17"]
    assert sorted(r["item_id"] for r in clean if r["correct"] is None) == ["q18", "q18"]


# -- each format, read back ------------------------------------------------------------------


def read_table(path: Path, fmt: str) -> pa.Table:
    if fmt == "arrow":
        with pa.ipc.open_file(str(path)) as reader:  # the IPC *file* format
            return reader.read_all()
    return pq.read_table(str(path))


@pytest.mark.parametrize("run", ["clean", "flaky"])
@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_arrow_and_parquet_typed_columns_and_values(world, run, fmt):
    path = world["out"] / f"{run}.{EXT[fmt]}"
    table = read_table(path, fmt)
    assert table.column_names == expected_columns(METADATA[run])
    types = dict(zip(table.schema.names, table.schema.types))
    assert types["correct"] == pa.bool_()
    for name in INT_COLUMNS:
        if name in types:
            assert types[name] == pa.int64(), name
    assert types["latency"] == pa.float64()
    assert types["finished_at"] == pa.timestamp("us", tz="UTC")
    for name in ("run_id", "item_id", "model", "prompt", "response", "parsed", "expected", "error"):
        assert types[name] == pa.string(), name
    assert types["conversation"] == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    if run == "clean":
        assert (types["topic"], types["level"]) == (pa.string(), pa.int64())
    assert_rows_match(table.to_pylist(), run, world)
    assert world["rows"][(run, fmt)] == table.num_rows


def test_rows_are_in_dataset_order_not_in_the_order_they_finished(world):
    """The flaky run's rescued keys finished last (in the resume); the clean run's two
    samples finished interleaved. Every export lists both in dataset order, then sample."""
    for run in ("clean", "flaky"):
        finished = [(r["item_id"], r["sample"]) for r in read_jsonl(run_dir(world, run) / "responses.jsonl")]
        assert finished != dataset_order(run)  # responses.jsonl is in log order
        assert [(r["item_id"], r["sample"]) for r in jsonl_rows(world["out"] / f"{run}.jsonl")] == dataset_order(run)
        assert [tuple(r) for r in zip(*(read_table(world["out"] / f"{run}.parquet", "parquet").column(c).to_pylist()
                                        for c in ("item_id", "sample")))] == dataset_order(run)


def test_metadata_fields_become_columns(world):
    rows = {(r["item_id"], r["sample"]): r for r in read_table(world["out"] / "clean.arrow", "arrow").to_pylist()}
    for i, record in enumerate(clean_records()):
        for sample in range(2):
            row = rows[(record["id"], sample)]
            assert (row["topic"], row["level"]) == (TOPICS[i % 3], None if i == 11 else i % 5)
    assert [r["topic"] for r in jsonl_rows(world["out"] / "clean.jsonl")][:6] == ["geography"] * 2 + ["arithmetic"] * 2 + ["history"] * 2


def test_a_multi_turn_row_carries_its_whole_conversation(world):
    table = read_table(world["out"] / "clean.parquet", "parquet")
    by_key = {(r["item_id"], r["sample"]): r for r in table.to_pylist()}
    for sample in range(2):
        row = by_key[("q3", sample)]
        assert row["prompt"] == "Question 3? answer: D" and row["response"] == "The answer is D" and row["correct"] is True
        conversation = row["conversation"]
        assert [m["role"] for m in conversation] == ["user", "assistant", "user", "assistant"]
        assert [conversation[0]["content"], conversation[2]["content"], conversation[3]["content"]] == [
            "Warm-up for 3?", "Question 3? answer: D", "The answer is D"]
        assert conversation[1]["content"] and conversation[1]["content"] != "The answer is D"  # the first turn's own reply
    assert all(r["conversation"] is None for key, r in by_key.items() if key[0] != "q3")  # one turn: prompt and response say it
    for fmt in ("csv", "xlsx"):  # no list type there: the conversation as JSON text
        _, rows = csv_rows(world["out"] / "clean.csv") if fmt == "csv" else xlsx_rows(world["out"] / "clean.xlsx")
        texts = [r["conversation"] for r in rows if r["item_id"] == "q3"]
        assert [json.loads(t) for t in texts] == [by_key[("q3", s)]["conversation"] for s in range(2)], fmt


def test_order_metadata_and_conversations_are_rebuilt_from_the_log_alone(world, tmp_path):
    """Only the log copied (no responses.jsonl, no checkpoint, no dataset): the export
    folds it again and is the same table, metadata columns, order and conversations."""
    copy = tmp_path / "runs" / "clean"
    copy.mkdir(parents=True)
    (copy / "events.log").write_bytes((run_dir(world, "clean") / "events.log").read_bytes())
    assert export([RunPaths(str(copy))], "arrow", str(tmp_path / "again.arrow")) == 40
    assert read_table(tmp_path / "again.arrow", "arrow").equals(read_table(world["out"] / "clean.arrow", "arrow"))
    started = [e for e in world["logs"]["clean"] if e["type"] == "started" and e["item_id"] == "q11"]
    assert started and all(e["line"] == 12 and e["metadata"] == {"topic": "history"} for e in started)  # as `ledger log` shows them


@pytest.mark.parametrize("run", ["clean", "flaky"])
def test_csv_read_with_the_csv_module(world, run):
    header, rows = csv_rows(world["out"] / f"{run}.csv")
    assert header == expected_columns(METADATA[run])
    assert_rows_match(rows, run, world)
    assert world["rows"][(run, "csv")] == len(rows)
    if run == "clean":  # quotes, commas, a newline and non-ASCII survive the round trip
        assert [r["prompt"] for r in rows if r["item_id"] == "q17"] == [HAZARD + " answer: B"] * 2


@pytest.mark.parametrize("run", ["clean", "flaky"])
def test_jsonl_keys_are_the_columns_in_the_schema_order(world, run):
    path = world["out"] / f"{run}.jsonl"
    raw = read_jsonl(path)
    assert all(list(r) == expected_columns(METADATA[run]) for r in raw)  # the same order as arrow / parquet / csv
    assert list(raw[0]) == read_table(world["out"] / f"{run}.arrow", "arrow").column_names
    assert_rows_match(jsonl_rows(path), run, world)


@pytest.mark.parametrize("run", ["clean", "flaky"])
def test_xlsx_opens_on_the_rows_sheet_then_a_summary_sheet(world, run):
    path = world["out"] / f"{run}.xlsx"
    header, rows = xlsx_rows(path)
    assert header == expected_columns(METADATA[run])
    assert_rows_match(rows, run, world, time_tolerance=1.001e-3)
    summary = json.loads((run_dir(world, run) / "summary.json").read_bytes())
    book = xlsx_book(path)
    # (read-only openpyxl drops trailing empty cells: a null value reads as a 1-tuple)
    cells = {line[0]: (line[1] if len(line) > 1 else None) for line in book["summary"].iter_rows(values_only=True) if line}
    book.close()
    assert cells["run_id"] == run and cells["status"] == summary["status"]
    assert cells["counts.planned"] == summary["counts"]["planned"]
    assert cells["counts.done"] == summary["counts"]["done"]
    assert cells["counts.failed"] == summary["counts"]["failed"]
    assert cells["accuracy"] == pytest.approx(summary["accuracy"])


def test_xlsx_header_row_is_frozen_and_columns_have_widths(world):
    from openpyxl import load_workbook
    from openpyxl.utils import get_column_letter

    book = load_workbook(world["out"] / "clean.xlsx")  # (not read-only: the sheet's view and columns are read)
    sheet = book.active
    assert sheet.title == "rows" and book.sheetnames[0] == "rows"  # the sheet Excel opens on
    assert sheet.freeze_panes == "A2"  # the header row stays when scrolling
    header = [c.value for c in sheet[1]]
    widths = {name: sheet.column_dimensions[get_column_letter(i)].width for i, name in enumerate(header, 1)}
    assert all(width and width >= len(name) for name, width in widths.items()), widths
    assert widths["prompt"] >= 40 and widths["response"] >= 40 and widths["sample"] <= 12
    assert sheet.max_row == 41


@pytest.mark.parametrize("run", ["clean", "flaky"])
def test_openai_batch_one_line_per_finished_key(world, run):
    lines = read_jsonl(world["out"] / f"{run}.batch.jsonl")
    rows = last_rows(run_dir(world, run))
    assert len(lines) == len(rows) == world["rows"][(run, "openai-batch")]
    samples = 2 if run == "clean" else 1
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines)  # custom_id is unique
    final_raw = {}
    for e in world["logs"][run]:
        if e["type"] == "response":
            final_raw[(e["item_id"], e["sample"])] = e["raw"]
    for row in rows:
        custom_id = row["item_id"] if samples == 1 else f"{row['item_id']}#s{row['sample']}"
        line = by_id[custom_id]
        assert set(line) >= {"id", "custom_id", "response", "error"}
        if row["error"] is None:
            assert line["error"] is None
            assert line["response"]["status_code"] == 200
            body = line["response"]["body"]
            assert body == final_raw[(row["item_id"], row["sample"])]
            assert body["choices"][0]["message"]["content"] == row["response"]
        else:
            assert set(line["error"]) == {"code", "message"}
            assert line["error"]["code"] and "500" in line["error"]["message"]
            assert line["response"] is None or line["response"]["status_code"] == 500
    if run == "flaky":
        assert any(line["error"] for line in lines) and any(line["error"] is None for line in lines)


# -- several runs at once ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", MULTI_FORMATS)
def test_several_runs_have_a_run_id_column_first_and_every_metadata_column(world, fmt):
    path = world["out"] / f"multi.{EXT[fmt]}"
    if fmt == "arrow":
        table = read_table(path, fmt)
        header, rows = table.column_names, table.to_pylist()
        assert table.schema.field("run_id").type == pa.string()
    else:
        header, rows = xlsx_rows(path)
    assert header == expected_columns(METADATA["clean"])
    assert [r["run_id"] for r in rows] == ["clean"] * 40 + ["flaky"] * 20  # run after run
    assert world["rows"][("multi", fmt)] == len(rows)
    tolerance = 1.001e-3 if fmt == "xlsx" else 1.5e-6
    assert_rows_match(rows[:40], "clean", world, "clean", tolerance)
    assert_rows_match(rows[40:], "flaky", world, "flaky", tolerance, metadata=METADATA["clean"])  # null there


# -- the raw event table -----------------------------------------------------------------------


def _event_rows(path: Path, fmt: str) -> tuple[list[str], list[dict]]:
    if fmt == "arrow":
        with pa.ipc.open_file(str(path)) as reader:
            table = reader.read_all()
    elif fmt == "parquet":
        table = pq.read_table(str(path))
    else:
        table = None
    if table is not None:
        types = dict(zip(table.schema.names, table.schema.types))
        assert types["ts"] == pa.timestamp("us", tz="UTC")
        for name in ("seq", "sample", "turn", "attempt"):
            assert types[name] == pa.int64(), name
        return table.column_names, table.to_pylist()
    if fmt == "jsonl":
        rows = read_jsonl(path)
        for r in rows:
            r["ts"] = parse_time(r["ts"])
        return list(rows[0]), rows
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = []
        for line in reader:
            r = dict(zip(header, line, strict=True))
            for name in ("seq", "sample", "turn", "attempt"):
                r[name] = int(r[name]) if r[name] else None
            r["item_id"] = r["item_id"] or None
            r["ts"] = parse_time(r["ts"])
            rows.append(r)
    return header, rows


def _assert_events_match(rows: list[dict], log: list[dict]) -> None:
    assert len(rows) == len(log)
    for row, event in zip(rows, log):
        assert json.loads(row["data"]) == event
        assert row["seq"] == event["seq"] and row["type"] == event["type"]
        for name in ("item_id", "sample", "turn", "attempt"):
            assert row[name] == event.get(name), (name, row, event)
        assert abs(row["ts"].timestamp() - event["ts"]) < 1.5e-6
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))


@pytest.mark.parametrize(("run", "fmt"), [(run, fmt) for run, fmts in EVENT_FORMATS.items() for fmt in fmts])
def test_events_export_is_the_raw_event_table(world, run, fmt):
    header, rows = _event_rows(world["out"] / f"{run}-events.{EXT[fmt]}", fmt)
    assert header == ["run_id", "seq", "ts", "type", "item_id", "sample", "turn", "attempt", "data"]  # JSONL too
    log = world["logs"][run]
    _assert_events_match(rows, log)
    assert {r["run_id"] for r in rows} == {run}
    types = {e["type"] for e in log}
    assert {"run_started", "session_started", "started", "response", "parsed", "session_ended"} <= types
    if run == "flaky":
        assert "failed" in types
    assert world["rows"][(run, fmt, "events")] == len(log)


def test_events_of_several_runs_have_a_run_id_column(world):
    with pa.ipc.open_file(str(world["out"] / "multi-events.arrow")) as reader:
        table = reader.read_all()
    assert table.column_names == ["run_id", "seq", "ts", "type", "item_id", "sample", "turn", "attempt", "data"]
    rows = table.to_pylist()
    for run in ("clean", "flaky"):
        _assert_events_match([r for r in rows if r["run_id"] == run], world["logs"][run])
    assert len(rows) == len(world["logs"]["clean"]) + len(world["logs"]["flaky"])


# -- output paths, atomic writes, bad calls ------------------------------------------------------


def test_default_output_path_is_the_run_id_and_format(world):
    names = sorted(os.listdir(world["default"]))
    assert names == ["clean.parquet"]
    assert_rows_match(pq.read_table(str(world["default"] / "clean.parquet")).to_pylist(), "clean", world)


def test_exports_leave_no_temp_file_next_to_the_output(world):
    names = sorted(os.listdir(world["out"]))
    assert not [n for n in names if ".tmp" in n or n.startswith(".")], names
    wanted = {f"{run}.{EXT[fmt]}" for run in ("clean", "flaky") for fmt in FORMATS}
    wanted |= {f"{run}-events.{EXT[fmt]}" for run, fmts in EVENT_FORMATS.items() for fmt in fmts}
    wanted |= {f"multi.{EXT[fmt]}" for fmt in MULTI_FORMATS} | {"multi-events.arrow"}
    assert set(names) == wanted
    # exporting read nothing into the run directory either (no temp files, same responses)
    assert not [p for p in world["runs"].rglob("*") if ".tmp." in p.name]


def _one_error_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_unknown_format_exits_2_with_one_line_and_writes_nothing(world):
    r, where = world["results"]["bad-format"], world["bad"]["bad-format"]
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = _one_error_line(r)
    assert "xml" in line and "parquet" in line
    assert os.listdir(where) == []


def test_unknown_run_exits_2_and_leaves_the_output_untouched(world):
    r, where = world["results"]["bad-run"], world["bad"]["bad-run"]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "nosuchrun" in _one_error_line(r)
    assert (where / "keep.parquet").read_bytes() == b"precious"
    assert os.listdir(where) == ["keep.parquet"]


def test_missing_format_exits_2(world):
    r, where = world["results"]["bad-missing"], world["bad"]["bad-missing"]
    assert r.returncode == 2, (r.stdout, r.stderr)
    _one_error_line(r)
    assert os.listdir(where) == []


def test_output_in_a_missing_directory_is_a_bad_call(world):
    r, where = world["results"]["bad-dir"], world["bad"]["bad-dir"]
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    assert "missing" in _one_error_line(r)
    assert os.listdir(where) == []
