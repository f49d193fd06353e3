"""`ledger replay` as a user meets it (issue 11): a rebuild that fails leaves every file as it
was, wall time and throughput are the sessions' sending time (a re-parse or an empty resume
adds none), and a bad `--reparse` names that option.

Real subprocesses (`python -m cli`) on a real finished run; each test works on a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.events import SessionEnded, SessionStarted, Started
from llm_ledger.ledger.reader import iter_events, iter_frames

REGEX = "regex:answer is (.+)$"
N = 60


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("finished")
    data = base / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(N)))
    sim = json.dumps({"latency": 0.01, "seed": 3})
    r = run_cli("run", str(data), "--runs-dir", str(base / "runs"), "--run-id", "r", "--parser", REGEX,
                "--concurrency", "4", "--sim", sim, cwd=base)
    assert r.returncode == 0, r
    return base / "runs" / "r"


def copy_run(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "runs" / run.name)
    return tmp_path / "runs" / run.name


def files(run: Path) -> dict[str, bytes]:
    """Every projection file and the checkpoint, by name (what a failed rebuild must keep)."""
    out = {}
    for path in sorted(run.rglob("*")):
        rel = str(path.relative_to(run))
        if path.is_file() and not rel.startswith(("index.lmdb", "events.log")):
            out[rel] = path.read_bytes()
    return out


def ledger(tmp_path: Path, *args: str):
    return run_cli(*args, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)


# -- 11.2: a failed rebuild destroys nothing ------------------------------------------------


@pytest.mark.parametrize("where", [0.5, 0.9])
def test_a_rebuild_that_fails_on_a_damaged_log_leaves_every_file_as_it_was(finished, tmp_path, where):
    run = copy_run(finished, tmp_path)
    frames = list(iter_frames(str(run / "events.log")))
    frame = frames[int(len(frames) * where)]
    with open(run / "events.log", "r+b") as f:  # one byte inside a frame's payload, mid-log
        f.seek(frame.end - 3)
        byte = f.read(1)
        f.seek(frame.end - 3)
        f.write(bytes([byte[0] ^ 0x40]))
    before = files(run)

    r = ledger(tmp_path, "replay", "r", "--rebuild")
    assert r.returncode == 1, r
    assert "corrupt frame" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert files(run) == before, "a failed rebuild changed the projections"
    listing = ledger(tmp_path, "ls")
    assert listing.returncode == 0, listing
    row = next(line for line in listing.stdout.splitlines() if line.startswith("r\t") or line.startswith("r "))
    assert "completed" in row and "running" not in row, listing.stdout
    assert json.loads((run / "summary.json").read_bytes())["counts"]["done"] == N


@pytest.mark.parametrize("command", [("replay", "r"), ("resume", "r"), ("export", "r", "jsonl")])
def test_a_fold_from_zero_that_fails_on_a_damaged_log_leaves_every_file_as_it_was(finished, tmp_path, command):
    """The same class of failure without --rebuild: the checkpoint is gone (or fails its
    checks), so the next open folds from zero -- into staged files, swapped in only when
    complete. The log is damaged: every command fails in one line, and nothing is lost."""
    run = copy_run(finished, tmp_path)
    (run / "projections.ckpt").unlink()
    frames = list(iter_frames(str(run / "events.log")))
    frame = frames[len(frames) // 2]
    with open(run / "events.log", "r+b") as f:
        f.seek(frame.end - 3)
        byte = f.read(1)
        f.seek(frame.end - 3)
        f.write(bytes([byte[0] ^ 0x40]))
    before = files(run)
    args = [*command, "-o", str(tmp_path / "out.jsonl")] if command[0] == "export" else list(command)
    r = ledger(tmp_path, *args)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r
    assert "corrupt frame" in r.stderr, r.stderr
    assert files(run) == before, f"a failed `ledger {' '.join(command)}` changed the projections"


# -- 11.4: wall time is the sessions' sending time -----------------------------------------


def sending_time(log: Path) -> float:
    """Sum over sessions that sent a request of (its last event - its session_started)."""
    total, start, end, sent = 0.0, None, 0.0, False
    for event in iter_events(str(log)):
        if isinstance(event, SessionStarted):
            if start is not None and sent:
                total += end - start
            start, sent = event.ts, False
        sent |= isinstance(event, Started)
        end = event.ts
        if isinstance(event, SessionEnded):
            if start is not None and sent:
                total += end - start
            start = None
    if start is not None and sent:
        total += end - start
    return total


def figures(run: Path) -> tuple[float, float]:
    summary = json.loads((run / "summary.json").read_bytes())
    return summary["wall_time_s"], summary["throughput_per_s"]


def test_reparse_and_an_empty_resume_add_no_wall_time(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    wall, throughput = figures(run)
    assert wall == pytest.approx(sending_time(run / "events.log"), abs=0.002)
    assert throughput == pytest.approx(N / wall, rel=2e-3)

    r = ledger(tmp_path, "resume", "r")
    assert r.returncode == 0 and "0 to send" in r.stdout, r
    assert figures(run) == (wall, throughput), "an empty resume changed wall time / throughput"

    r = ledger(tmp_path, "replay", "r", "--reparse", "regex:answer is (A\\d+)$")
    assert r.returncode == 0, r
    assert figures(run) == (wall, throughput), "a re-parse changed wall time / throughput"
    assert f"{wall:.1f} s" in r.stdout  # the table printed agrees with the file (as printed: one decimal)

    r = ledger(tmp_path, "replay", "r", "--rebuild")
    assert r.returncode == 0, r
    assert figures(run) == (wall, throughput)


def test_wall_time_of_a_resumed_run_is_the_sum_of_its_sending_sessions(tmp_path):
    """Interrupted (Ctrl-C), resumed after a pause: the pause is not wall time."""
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}"}) + "\n" for i in range(40)))
    sim = json.dumps({"latency": 0.05, "seed": 1})
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "run", str(data), "--runs-dir", str(tmp_path / "runs"),
                             "--run-id", "w", "--concurrency", "2", "--sim", sim], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "runs" / "w" / "events.log"
    deadline = time.monotonic() + 60
    while sum(isinstance(e, Started) for e in _events(log)) < 10:
        assert time.monotonic() < deadline and proc.poll() is None, "the run never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    time.sleep(1.5)  # a pause between the sessions: not sending time
    r = ledger(tmp_path, "resume", "w")
    assert r.returncode == 0, r
    run = tmp_path / "runs" / "w"
    wall, throughput = figures(run)
    span = _events(log)[-1].ts - _events(log)[0].ts
    assert wall == pytest.approx(sending_time(log), abs=0.002) and wall < span - 1.0, (wall, span)
    assert throughput == pytest.approx(40 / wall, rel=2e-3)


def _events(log: Path) -> list:
    try:
        return list(iter_events(str(log)))
    except Exception:
        return []


# -- 11.16: a bad --reparse names --reparse -------------------------------------------------


def test_a_bad_reparse_spec_names_the_reparse_option_and_writes_nothing(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    log = (run / "events.log").read_bytes()
    before = files(run)
    for spec in ("bogus", "regex:(", "nosuchmodule_xyz:f"):
        r = ledger(tmp_path, "replay", "r", "--reparse", spec)
        assert r.returncode == 2, r
        line = r.stderr.strip()
        assert "--reparse" in line and "--parser" not in line and len(line.splitlines()) == 1, line
    assert (run / "events.log").read_bytes() == log and files(run) == before

