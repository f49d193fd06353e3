"""Damaged or missing derived files: the LMDB index, the projections, and a log that lost its
tail after the projections had consumed it. The log is the truth; everything else is
rebuilt from it, and never left ahead of it.

(Torn log tails at every offset and corrupted log bytes are tests/test_log_recovery.py.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from chaos.chains import REGEX_PARSER
from chaos.invariants import check_projections, projection_files, read_log, reply_keys, resent
from chaos.procs import kill_when, lines_after, run_cli, start_cli
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_frames
from llm_ledger.projections.projector import Projector, rebuild
from llm_ledger.projections.runs import run_status

N = 40


def write_dataset(path: Path, n: int = N) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(n)))
    return path


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run killed with SIGKILL after 20 requests: (base, run dir, request log)."""
    base = tmp_path_factory.mktemp("killed")
    data = write_dataset(base / "qa.jsonl")
    req_log = base / "requests.jsonl"
    sim = json.dumps({"latency": 0.01, "request_log": str(req_log), "seed": 5})
    proc = start_cli("run", str(data), "--runs-dir", str(base / "runs"), "--run-id", "k", "--parser", REGEX_PARSER,
                     "--concurrency", "8", "--sim", sim, cwd=base)
    code, _ = kill_when(proc, lambda: lines_after(req_log, 0) >= 20, 0.02)
    assert code == -9, proc.stderr
    return base, base / "runs" / "k", req_log


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("finished")
    data = write_dataset(base / "qa.jsonl", 40)
    r = run_cli("run", str(data), "--runs-dir", str(base / "runs"), "--run-id", "f", "--parser", REGEX_PARSER,
                "--concurrency", "8", cwd=base)
    assert r.returncode == 0, r
    return base / "runs" / "f"


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / run_dir.name)
    return runs / run_dir.name


# -- the LMDB index ---------------------------------------------------------------------------


def _scribble_named_databases(path: Path, rng: random.Random) -> None:
    """Noise over the header of every page but the meta pages and the main database's root
    (which names the others): LMDB opens the environment, then finds the pages of the
    named databases corrupt -- as a crash with sync off can leave them."""
    data = bytearray(path.read_bytes())
    metas = [(int.from_bytes(data[p + 144:p + 152], "little"), p) for p in (0, 4096)]  # (txnid, offset)
    meta = max(metas)[1]
    main_root = int.from_bytes(data[meta + 128:meta + 136], "little")  # mm_dbs[MAIN_DBI].md_root
    for page in range(2, len(data) // 4096):
        if page != main_root:
            data[page * 4096:page * 4096 + 16] = rng.randbytes(16)
    path.write_bytes(bytes(data))


INDEX_DAMAGE = {
    "deleted": lambda d, rng: shutil.rmtree(d),
    "data_cut_in_half": lambda d, rng: os.truncate(d / "data.mdb", os.path.getsize(d / "data.mdb") // 2),
    "meta_pages_zeroed": lambda d, rng: (d / "data.mdb").write_bytes(b"\0" * 8192 + (d / "data.mdb").read_bytes()[8192:]),
    "all_noise": lambda d, rng: (d / "data.mdb").write_bytes(rng.randbytes(os.path.getsize(d / "data.mdb"))),
    "named_databases_scribbled": lambda d, rng: _scribble_named_databases(d / "data.mdb", rng),
    "lock_file_deleted": lambda d, rng: os.unlink(d / "lock.mdb"),
}


@pytest.mark.parametrize("damage", list(INDEX_DAMAGE))
def test_a_damaged_or_deleted_index_is_rebuilt_and_resume_pays_nothing_twice(killed_run, tmp_path, damage):
    base, run_dir, req_log = killed_run
    run = copy_run(run_dir, tmp_path)
    events, _ = read_log(run / "events.log")
    done = len({e.item_id for e in events if e.__class__.__name__ == "Parsed"})
    INDEX_DAMAGE[damage](run / "index.lmdb", random.Random(damage))
    status = run_status(RunPaths(str(run)))  # a reader: falls back to summary.json, never crashes
    assert status.run_id == "k", status

    r = run_cli("resume", "k", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r
    assert f"resume: {done} done" in r.stdout, r.stdout
    events, error = read_log(run / "events.log")
    assert error == ""
    # One reply per item: none durable at the kill was requested again, none is missing.
    replies = [f"{e.item_id}/{e.sample}/{e.turn}" for e in events if e.__class__.__name__ == "Response"]
    assert sorted(replies) == sorted(f"q{i}/0/0" for i in range(N)), f"{damage}: a reply was requested twice or never"
    status = run_status(RunPaths(str(run)))
    assert (status.status, status.done, status.planned) == ("completed", N, N), status


@pytest.mark.parametrize("damage", ["deleted", "data_cut_in_half"])
def test_an_index_damaged_during_a_run_is_rebuilt_by_the_next_session(tmp_path, damage):
    """Deleted mid-run, the live process keeps its (unlinked) environment and finishes; cut
    mid-run, it may stop with one line (the index could not apply a frame) or die of SIGBUS
    like a kill -9. Either way the next session rebuilds the index from the log and pays for
    nothing twice."""
    data = write_dataset(tmp_path / "qa.jsonl")
    req_log = tmp_path / "requests.jsonl"
    runs = str(tmp_path / "runs")
    run = tmp_path / "runs" / "d"
    proc = start_cli("run", str(data), "--runs-dir", runs, "--run-id", "d", "--parser", REGEX_PARSER, "--concurrency", "4",
                     "--sim", json.dumps({"latency": 0.01, "request_log": str(req_log)}), cwd=tmp_path)
    deadline = time.monotonic() + 60
    while lines_after(req_log, 0) < 10:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.005)
    if damage == "deleted":
        shutil.rmtree(run / "index.lmdb")
    else:
        os.truncate(run / "index.lmdb" / "data.mdb", os.path.getsize(run / "index.lmdb" / "data.mdb") // 2)
    code = proc.wait(60)
    # finished; or the index failed to apply a frame, which stops the run loudly (exit 1, one
    # line), never silently; or SIGBUS through the cut map
    assert code in (0, 1, -7), (code, proc.stderr[-2000:])
    if code == 1:
        assert "the next session brings it up to date" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    events, _ = read_log(run / "events.log")
    offset = req_log.stat().st_size
    durable = reply_keys(events)
    status = run_status(RunPaths(str(run)))  # no usable index: from summary.json
    assert status.run_id == "d"
    r = run_cli("resume", "d", "--runs-dir", runs, cwd=tmp_path)
    assert r.returncode == 0, r
    assert resent(req_log, offset, durable) == []
    status = run_status(RunPaths(str(run)))
    assert (status.status, status.done) == ("completed", N), status


# -- projection files -------------------------------------------------------------------------


def _conversation(run: Path) -> Path:
    return sorted((run / "conversations").iterdir())[3]


PROJECTION_DAMAGE = {  # name -> (damage, repaired by the next open, not only by --rebuild)
    "responses_deleted": (lambda run: os.unlink(run / "responses.jsonl"), True),
    "responses_cut_mid_line": (lambda run: os.truncate(run / "responses.jsonl", os.path.getsize(run / "responses.jsonl") // 2 + 3), True),
    "summary_deleted": (lambda run: os.unlink(run / "summary.json"), True),
    "summary_garbage": (lambda run: (run / "summary.json").write_bytes(b'{"status": "compl'), False),
    "checkpoint_garbage": (lambda run: (run / "projections.ckpt").write_bytes(b"\x93\x01garbage"), True),
    "checkpoint_cut": (lambda run: os.truncate(run / "projections.ckpt", 9), True),
    "failures_deleted": (lambda run: os.unlink(run / "failures.jsonl"), True),
    "failures_garbage": (lambda run: (run / "failures.jsonl").write_bytes(b'{"item_id": "q1", "err'), True),
    "conversation_deleted": (lambda run: os.unlink(_conversation(run)), False),
    "conversation_cut": (lambda run: os.truncate(_conversation(run), 10), False),
    "conversations_dir_deleted": (lambda run: shutil.rmtree(run / "conversations"), False),
    "everything_deleted": (lambda run: [shutil.rmtree(run / "conversations")] + [
        os.unlink(run / n) for n in ("responses.jsonl", "summary.json", "projections.ckpt")], True),
}


@pytest.mark.parametrize("damage", list(PROJECTION_DAMAGE))
def test_deleted_or_cut_projection_files_are_repaired(finished_run, tmp_path, damage):
    from llm_ledger.projections.replay import replay

    run = copy_run(finished_run, tmp_path)
    pristine = projection_files(run)
    hurt, on_open = PROJECTION_DAMAGE[damage]
    hurt(run)
    assert projection_files(run) != pristine or "checkpoint" in damage
    replay(RunPaths(str(run)))  # what every open does (`ledger replay RUN`, resume, export)
    if on_open:
        assert projection_files(run) == pristine, f"{damage}: not repaired by the next open"
    r = run_cli("replay", "f", "--rebuild", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r
    assert projection_files(run) == pristine, f"{damage}: not repaired by `ledger replay --rebuild`"


def test_a_zeroed_sector_in_responses_below_the_checkpoint_is_repaired_on_open(finished_run, tmp_path):
    from llm_ledger.projections.replay import replay

    run = copy_run(finished_run, tmp_path)
    pristine = projection_files(run)
    data = bytearray((run / "responses.jsonl").read_bytes())
    start = len(data) // 2 // 512 * 512
    data[start:start + 512] = bytes(512)
    (run / "responses.jsonl").write_bytes(bytes(data))
    replay(RunPaths(str(run)))
    r = run_cli("export", "f", "jsonl", "-o", str(tmp_path / "f.jsonl"), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r
    assert projection_files(run) == pristine


# -- a log that lost its tail after the projections consumed it --------------------------------


def _frame_ends(log: Path) -> list[int]:
    return [frame.end for frame in iter_frames(str(log))]


def test_projections_ahead_of_a_log_that_lost_its_tail_are_rebuilt_then_resume_finishes(finished_run, tmp_path):
    """The checkpoint (written at the end of the run) is ahead of the cut log: the next open
    rebuilds everything from the log, and a resume re-runs what the lost tail held."""
    run = copy_run(finished_run, tmp_path)
    ends = _frame_ends(run / "events.log")
    os.truncate(run / "events.log", ends[len(ends) // 2])
    events, _ = read_log(run / "events.log")
    r = run_cli("replay", "f", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r
    assert check_projections(run, tmp_path / "scratch", repair=False) == []
    rows = [json.loads(line) for line in (run / "responses.jsonl").read_bytes().splitlines()]
    assert {row["item_id"] for row in rows} == {e.item_id for e in events if e.__class__.__name__ == "Parsed"}
    assert rows and len(rows) < 40

    r = run_cli("resume", "f", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r
    assert check_projections(run, tmp_path / "scratch", repair=False) == []
    rows = [json.loads(line) for line in (run / "responses.jsonl").read_bytes().splitlines()]
    assert sorted(row["item_id"] for row in rows) == sorted(f"q{i}" for i in range(40))


def test_verify_repair_of_a_corrupt_frame_then_resume_rebuilds_and_finishes(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    ends = _frame_ends(run / "events.log")
    with open(run / "events.log", "r+b") as f:  # a flipped byte in a frame in the middle
        f.seek(ends[len(ends) // 3] + 30)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x5A]))
    runs = str(tmp_path / "runs")
    r = run_cli("log", "f", "--runs-dir", runs, cwd=tmp_path)
    assert r.returncode == 1 and "corrupt frame at byte offset" in r.stderr, r  # a read that reaches it fails
    r = run_cli("verify", "f", "--repair", "--runs-dir", runs, cwd=tmp_path)
    assert r.returncode == 0, r
    assert (run / "events.log.broken").exists()
    r = run_cli("resume", "f", "--runs-dir", runs, cwd=tmp_path)
    assert r.returncode == 0, r
    events, error = read_log(run / "events.log")
    assert error == "" and len({e.item_id for e in events if e.__class__.__name__ == "Parsed"}) == 40
    assert check_projections(run, tmp_path / "scratch", repair=False) == []


def test_conversation_files_ahead_of_a_cut_log_are_not_left_behind(tmp_path):
    from llm_ledger.ledger.events import Parsed, Response, RunStarted, SessionStarted, Started
    from llm_ledger.ledger.writer import LogWriter

    run = tmp_path / "r"
    run.mkdir()
    paths = RunPaths(str(run))
    with LogWriter.open(paths.log) as writer:
        writer.append_many([RunStarted(run_id="r", items=20), SessionStarted(pid=1)])
        for i in range(20):
            key = {"item_id": f"q{i}"}
            writer.append_many([Started(**key, request={"messages": [{"role": "user", "content": f"q{i}"}]}, expected="A")])
            writer.append_many([Response(**key, text="A"), Parsed(**key, value="A")])
    frames = list(iter_frames(paths.log))
    projector = Projector(paths, refresh=3600, checkpoint_every=3600)  # as a live run between checkpoints
    projector._open_files()
    projector.apply_frames(frames[:4])  # the first batch writes the checkpoint
    projector.apply_frames(frames[4:])  # then the run goes on; the process dies before the next one
    # (nothing is left buffered: rows are flushed and conversation writes drained per batch)
    os.truncate(paths.log, frames[20].end)  # the log loses its tail, past the checkpoint
    Projector.open(paths).close()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(paths.log, copy / "events.log")
    rebuild(RunPaths(str(copy)))
    assert projection_files(run) == projection_files(copy)
