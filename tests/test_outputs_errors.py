"""What a command says when the disk refuses (11.11) and what ``-o -`` means (11.14).

A full disk under ``ledger export`` (every format), ``ledger replay`` or ``ledger log > file``
used to end in a traceback, and an existing output could be left half-written. Now: one line
naming the path and the reason, exit 1, and the earlier file at that path untouched (the
export is written aside and renamed). A read-only or missing folder, or a directory given as
the output, is a bad call: one line, exit 2, nothing written.

``-o -`` used to create a file named ``-``; it is standard output for the text formats (the
same bytes as the file would hold), and a clear refusal for the binary ones.

The full disk is a small tmpfs (root only; skipped otherwise), real CLI subprocesses.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli

ITEMS = 60
FORMATS = ("arrow", "parquet", "csv", "jsonl", "jsonl.gz", "xlsx", "openai-batch")
TEXT = ("csv", "jsonl", "openai-batch")
STREAMED = (*TEXT, "jsonl.gz")  # may go to standard output (jsonl.gz: binary, but front to back)
NOSPACE = "No space left on device"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run whose exports are ~250 KB of incompressible text (bigger than the small
    disks below and than a pipe's buffer)."""
    base = tmp_path_factory.mktemp("outerrs")
    rng = random.Random(7)
    data = base / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "%x" % rng.getrandbits(16000), "expected": "a"}) + "\n"
                            for i in range(ITEMS)))
    r = run_cli("run", str(data), "--run-id", "r", "--runs-dir", str(base / "runs"), cwd=base)
    assert r.returncode == 0, r.stderr[-2000:]
    return {"base": base, "runs": base / "runs"}


@contextlib.contextmanager
def tmpfs(where: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full or read-only disk) needs root")
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()[-200:]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> None:
    """Use up every byte left."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def export(world, *args: str, **kw) -> subprocess.CompletedProcess:
    return run_cli("export", *args, "--runs-dir", str(world["runs"]), cwd=world["base"], **kw)


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


# -- 11.11: OSError is one line ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_onto_a_full_disk_is_one_line_exit_1_and_the_old_file_stays(world, fmt, tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        target = disk / f"x.{fmt}"
        target.write_bytes(b"the earlier export")
        fill(disk)
        r = export(world, "r", fmt, "-o", str(target))
        assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
        line = one_line(r)
        assert str(target) in line and NOSPACE in line, line
        assert sorted(os.listdir(disk)) == ["filler", target.name]
        assert target.read_bytes() == b"the earlier export"


def test_replay_onto_a_full_disk_is_one_line_exit_1_then_works_once_there_is_room(world, tmp_path):
    with tmpfs(tmp_path / "disk", "2m") as disk:
        run = disk / "runs" / "r"
        run.mkdir(parents=True)
        shutil.copyfile(world["runs"] / "r" / "events.log", run / "events.log")
        fill(disk)
        r = run_cli("replay", "r", "--rebuild", "--runs-dir", str(disk / "runs"), cwd=tmp_path)
        assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
        line = one_line(r)
        assert NOSPACE in line and str(run) in line, line
        (disk / "filler").unlink()
        r = run_cli("replay", "r", "--rebuild", "--runs-dir", str(disk / "runs"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert len((run / "responses.jsonl").read_text().splitlines()) == ITEMS


def test_log_into_a_file_on_a_full_disk_is_one_line_exit_1(world, tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        fill(disk)
        with open(disk / "log.jsonl", "wb") as sink:
            r = subprocess.run([sys.executable, "-m", "llm_ledger.cli", "log", "r", "--runs-dir", str(world["runs"])],
                               cwd=tmp_path, stdout=sink, stderr=subprocess.PIPE, text=True, timeout=120)
        assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
        line = one_line(r)
        assert "standard output" in line and NOSPACE in line, line


def test_a_read_only_folder_is_one_line_exit_2_and_nothing_written(world, tmp_path):
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as disk:
        r = export(world, "r", "xlsx", "-o", str(disk / "x.xlsx"))
        assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
        line = one_line(r)
        assert str(disk / "x.xlsx") in line and "Read-only file system" in line, line
        assert os.listdir(disk) == []


@pytest.mark.parametrize("case", ["missing-folder", "a-directory", "a-fifo"])
def test_an_output_that_cannot_be_a_file_is_one_line_exit_2(world, tmp_path, case):
    """(A fifo stands for every special file: renaming over ``/dev/null`` as root would
    replace the device; the test does not risk the machine's own.)"""
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    path = {"missing-folder": tmp_path / "nope" / "x.csv", "a-directory": tmp_path / "adir", "a-fifo": tmp_path / "fifo"}[case]
    r = export(world, "r", "csv", "-o", str(path))
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert str(path) in one_line(r)
    assert sorted(os.listdir(tmp_path)) == ["adir", "fifo"] and os.listdir(tmp_path / "adir") == []
    assert (tmp_path / "fifo").is_fifo()


# -- 11.14: -o - -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", STREAMED)
def test_dash_is_standard_output_with_the_bytes_of_the_file(world, fmt, tmp_path):
    to_file = export(world, "r", fmt, "-o", str(tmp_path / "file.out"))
    assert to_file.returncode == 0, to_file.stderr
    proc = subprocess.run([sys.executable, "-m", "llm_ledger.cli", "export", "r", fmt, "-o", "-", "--runs-dir", str(world["runs"])],
                          cwd=tmp_path, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == (tmp_path / "file.out").read_bytes()
    assert proc.stderr.decode().strip() == f"wrote {ITEMS} rows to standard output"
    assert not (tmp_path / "-").exists()


def test_dash_appends_to_a_redirected_file_without_truncating_it(world, tmp_path):
    sink_path = tmp_path / "all.jsonl"
    sink_path.write_bytes(b'{"earlier": true}\n')
    with open(sink_path, "ab") as sink:
        r = subprocess.run([sys.executable, "-m", "llm_ledger.cli", "export", "r", "jsonl", "-o", "-", "--runs-dir", str(world["runs"])],
                           cwd=tmp_path, stdout=sink, stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = sink_path.read_bytes().splitlines()
    assert lines[0] == b'{"earlier": true}' and len(lines) == ITEMS + 1


@pytest.mark.parametrize("fmt", TEXT)
def test_a_reader_leaving_the_pipe_is_a_quiet_exit_0(world, fmt, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "export", "r", fmt, "-o", "-", "--runs-dir", str(world["runs"])],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err[-3000:]
    assert first.startswith(b'"run_id","item_id",' if fmt == "csv" else b"{"), first[:200]
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("fmt", ["arrow", "parquet", "xlsx"])
def test_dash_is_refused_for_a_binary_format(world, fmt, tmp_path):
    r = run_cli("export", "r", fmt, "-o", "-", "--runs-dir", str(world["runs"]), cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    line = one_line(r)
    assert fmt in line and "standard output" in line, line
    assert r.stdout == "" and os.listdir(tmp_path) == []
