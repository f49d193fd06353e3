"""`ledger export RUN jsonl.gz`: the format added through the table (one entry in
``projections/formats.py``, one writer in ``projections/writers.py``), read back with gzip.

Two real runs on the built-in simulator, 12 items x 2 samples each, three items too long for
``--max-context`` (they fail without a request); every export is a real subprocess.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

REGEX = "regex:answer is (.+)$"
LONG = {2, 5, 9}
ITEMS, SAMPLES = 12, 2


def _dataset(path: Path) -> Path:
    lines = []
    for i in range(ITEMS):
        letter = "ABCD"[i % 4]
        prompt = f"Question {i}? The same words again and again." + (" filler" * 300 if i in LONG else "") + f" answer: {letter}"
        lines.append(json.dumps({"id": f"q{i}", "prompt": prompt, "expected": letter}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("gzip")
    runs = base / "runs"
    data = _dataset(base / "d.jsonl")
    for run in ("g", "h"):
        r = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", run, "--parser", REGEX,
                    "--samples", str(SAMPLES), "--max-context", "200")
        assert r.returncode == 1, r.stdout + r.stderr  # the long items fail finally
    return {"base": base, "runs": runs}


def export(world, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    r = run_cli("export", *args, "--runs-dir", str(world["runs"]), cwd=cwd or world["base"])
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def test_a_run_exports_to_gzipped_jsonl_with_every_row(world, tmp_path):
    r = export(world, "g", "jsonl.gz", cwd=tmp_path)  # the default name comes from the entry's suffix
    path = tmp_path / "g.jsonl.gz"
    assert r.stdout.strip() == f"wrote {ITEMS * SAMPLES} rows to g.jsonl.gz"
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # a gzip member, not plain text
    rows = _lines(gzip.decompress(raw))
    assert sorted((row["item_id"], row["sample"]) for row in rows) == sorted((f"q{i}", s) for i in range(ITEMS) for s in range(SAMPLES))
    for row in rows:
        i = int(row["item_id"][1:])
        assert row["expected"] == "ABCD"[i % 4]
        if i in LONG:
            assert row["error"] and row["response"] is None and row["correct"] is False, row
        else:
            assert row["error"] is None and row["parsed"] == "ABCD"[i % 4] and row["correct"] is True, row
            assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"] > 0, row
    # byte for byte the jsonl export once decompressed, and smaller than it
    plain = export(world, "g", "jsonl", "-o", str(tmp_path / "g.jsonl"))
    assert plain.returncode == 0
    assert gzip.decompress(raw) == (tmp_path / "g.jsonl").read_bytes()
    assert len(raw) < (tmp_path / "g.jsonl").stat().st_size / 3


def test_the_event_table_exports_too(world, tmp_path):
    export(world, "g", "jsonl.gz", "--events", "-o", str(tmp_path / "e.jsonl.gz"))
    export(world, "g", "jsonl", "--events", "-o", str(tmp_path / "e.jsonl"))
    events = _lines(gzip.decompress((tmp_path / "e.jsonl.gz").read_bytes()))
    assert gzip.decompress((tmp_path / "e.jsonl.gz").read_bytes()) == (tmp_path / "e.jsonl").read_bytes()
    log = _lines(run_cli("log", "g", "--runs-dir", str(world["runs"])).stdout.encode())
    assert [e["seq"] for e in events] == [e["seq"] for e in log]
    assert [e["type"] for e in events] == [e["type"] for e in log]
    assert sum(e["type"] == "failed" for e in events) == len(LONG) * SAMPLES


def test_standard_output_gets_the_bytes_of_the_file(world, tmp_path):
    export(world, "g", "jsonl.gz", "-o", str(tmp_path / "file.jsonl.gz"))
    proc = subprocess.run([sys.executable, "-m", "llm_ledger.cli", "export", "g", "jsonl.gz", "-o", "-", "--runs-dir", str(world["runs"])],
                          cwd=tmp_path, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (tmp_path / "file.jsonl.gz").read_bytes()  # no name, no time in the header
    flags, mtime = proc.stdout[3], int.from_bytes(proc.stdout[4:8], "little")
    assert (flags & 0x08, mtime) == (0, 0)  # FNAME unset: not the temporary file's name either
    assert proc.stderr.decode().strip() == f"wrote {ITEMS * SAMPLES} rows to standard output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.jsonl.gz"]


def test_several_runs_have_a_run_id_column(world, tmp_path):
    export(world, "g", "h", "jsonl.gz", "-o", str(tmp_path / "both.jsonl.gz"))
    rows = _lines(gzip.decompress((tmp_path / "both.jsonl.gz").read_bytes()))
    assert [row["run_id"] for row in rows] == ["g"] * (ITEMS * SAMPLES) + ["h"] * (ITEMS * SAMPLES)
    assert len({(row["run_id"], row["item_id"], row["sample"]) for row in rows}) == 2 * ITEMS * SAMPLES


def test_the_cli_lists_it_from_the_table(world, tmp_path):
    help_text = run_cli("export", "--help", env={"COLUMNS": "300"}).stdout
    assert "jsonl.gz" in help_text and "gzipped JSONL" in help_text
    bad = run_cli("export", "g", "zip", "--runs-dir", str(world["runs"]), cwd=tmp_path)
    assert bad.returncode == 2 and "jsonl.gz" in bad.stderr, bad.stderr
    binary = run_cli("export", "g", "parquet", "-o", "-", "--runs-dir", str(world["runs"]), cwd=tmp_path)
    assert binary.returncode == 2 and "jsonl.gz" in binary.stderr, binary.stderr
