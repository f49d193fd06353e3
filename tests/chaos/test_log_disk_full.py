"""A real full disk (a small tmpfs) at every moment of a run: start-up (the run directory,
the log, the lock's note, LMDB's set-up), the log mid-run, and the index or the
projections on a small file system of their own.

Before: SIGBUS inside LMDB's set-up (exit 135, no message) with 8-32 KB free, an OSError
traceback with 2 KB free, and an empty log that `resume` then rejected. Now, every time: one
line naming the path and the cause, exit 1, no acknowledged event lost; once space is freed
(the tmpfs remounted larger), `resume` -- or `run` again, when not even run_started became
durable -- completes without re-sending anything durable, projections equal to a rebuild.

Root only (it mounts tmpfs); skipped with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.chains import REGEX_PARSER
from chaos.invariants import check_final_log, check_prefix, check_projections, encoded, read_log, reply_keys, resent
from chaos.procs import run_cli

N = 60
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs: needs root")


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[None]:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def grow(where: Path) -> None:
    """Free space: the same tmpfs, remounted larger (its files stay)."""
    subprocess.run(["mount", "-o", "remount,size=64m", str(where)], check=True)


def fill(where: Path, free_kb: int) -> None:
    st = os.statvfs(where)
    (where / "fill").write_bytes(b"x" * max(0, st.f_bavail * st.f_frsize - free_kb * 1024))


def dataset(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}-" + "k" * 100, "prompt": f"Item {i}? answer: A{i} " + "x" * 400,
                                        "expected": f"A{i}"}) + "\n" for i in range(N)))
    return path


# where the small file system is mounted (relative to the base), its size, KB left free
CASES = {
    **{f"run_dir_{kb}k_free": ("runs", "1m", kb) for kb in (0, 2, 8, 16, 32, 64, 128, 256)},
    "index_alone_100k": ("runs/e/index.lmdb", "100k", None),
    "index_alone_120k": ("runs/e/index.lmdb", "120k", None),
    "projections_alone_16k": ("runs/e/conversations", "16k", None),
    "projections_alone_64k": ("runs/e/conversations", "64k", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_full_disk_at_any_moment_is_one_line_and_resume_completes(tmp_path, case):
    mount, size, free_kb = CASES[case]
    data, req_log = dataset(tmp_path / "qa.jsonl"), tmp_path / "requests.jsonl"
    runs, run = tmp_path / "runs", tmp_path / "runs" / "e"
    args = ("run", str(data), "--runs-dir", str(runs), "--run-id", "e", "--parser", REGEX_PARSER, "--concurrency", "8",
            "--sim", json.dumps({"latency": 0.003, "request_log": str(req_log)}))
    with tmpfs(tmp_path / mount, size):
        if free_kb is not None:
            fill(tmp_path / mount, free_kb)
        r = run_cli(*args, cwd=tmp_path)
        lines = [line for line in r.stderr.splitlines() if line.strip() and "━" not in line and "…" not in line]
        assert r.returncode == 1, (case, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("error:"), (case, r.stderr[-2000:])
        assert "No space left on device" in lines[0] and str(runs / "e") in lines[0], lines[0]

        events, error = read_log(run / "events.log") if (run / "events.log").exists() else ([], "")
        assert error == ""
        durable, offset = reply_keys(events), req_log.stat().st_size if req_log.exists() else 0
        grow(tmp_path / mount)
        if events:
            r = run_cli("resume", "e", "--runs-dir", str(runs), cwd=tmp_path)
        else:  # not even run_started was durable: nothing is left behind, the run starts again
            assert not (run / "events.log").exists(), "an empty log was left behind"
            r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 0, (case, r.stderr[-2000:])
        assert resent(req_log, offset, durable) == [], f"{case}: durable replies were requested again"
        after, error = read_log(run / "events.log")
        assert error == "" and check_prefix(encoded(events), encoded(after), case) == []
        assert check_final_log(after, {f"q{i}-{'k' * 100}/0/0" for i in range(N)}) == []
        assert check_projections(run, tmp_path / "scratch", repair=False) == []
        summary = json.loads((run / "summary.json").read_bytes())
        assert summary["status"] == "completed" and summary["counts"]["done"] == N, summary["counts"]


def test_repair_on_a_full_disk_is_one_line_and_changes_nothing(tmp_path):
    """`verify --repair` writes a copy of the log and of the damaged bytes: on a full disk it
    says so in one line and leaves the log as it was; with space, it repairs."""
    from llm_ledger.ledger.events import Response, RunStarted, Started
    from llm_ledger.ledger.reader import iter_frames
    from llm_ledger.ledger.writer import LogWriter

    runs = tmp_path / "runs"
    with tmpfs(runs, "1m"):
        log = runs / "r" / "events.log"
        log.parent.mkdir()
        with LogWriter.open(str(log)) as writer:
            writer.append(RunStarted(run_id="r", items=200))
            for i in range(200):
                writer.append_many([Started(item_id=f"q{i}", request={"p": "x" * 300}), Response(item_id=f"q{i}", text="y" * 300)])
        middle = list(iter_frames(str(log)))[50]
        with open(log, "r+b") as f:
            f.seek(middle.offset + 40)
            f.write(b"\xff\xff")
        damaged = log.read_bytes()
        fill(runs, 4)
        r = run_cli("verify", "r", "--repair", "--runs-dir", str(runs), cwd=tmp_path)
        lines = [line for line in r.stderr.splitlines() if line.strip() and "corrupt frame" not in line]
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(lines) == 1 and "No space left on device" in lines[0] and str(log) in lines[0], r.stderr
        assert log.read_bytes() == damaged
        assert sorted(p.name for p in log.parent.iterdir()) == ["events.log", "events.log.lock"], "temp files left behind"
        grow(runs)
        r = run_cli("verify", "r", "--repair", "--runs-dir", str(runs), cwd=tmp_path)
        assert r.returncode == 0 and "salvaged" in r.stdout, r
        assert run_cli("verify", "r", "--runs-dir", str(runs), cwd=tmp_path).returncode == 0
