"""Outputs never land on a run's own files (12.9), and killed exports leave no litter.

``ledger export RUN jsonl -o runs/RUN/events.log`` used to replace the log with the export:
the run was gone. Every path a run owns (log, lock, ``.broken`` copies, index, projections,
checkpoint, conversations) is refused, however it is spelled (``..``, a symlinked file or
directory), and the run's bytes stay as they were. A file of the user's own inside the run
directory (``runs/RUN/export.parquet``) works: its temp file used to be deleted by the
projection refresh as "stale", and the export crashed. A killed export's temp files are
removed by the next export into that folder when their process is dead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from llm_ledger.projections.outputs import check_output_path, owner_of

ITEMS = 30


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("outpaths")
    data = base / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}", "expected": "a"}) + "\n" for i in range(ITEMS)))
    r = run_cli("run", str(data), "--run-id", "r", "--runs-dir", str(base / "runs"), cwd=base)
    assert r.returncode == 0, r.stderr[-2000:]
    run = base / "runs" / "r"
    (run / "events.log.broken").write_bytes(b"cut-off bytes kept by a repair")
    (base / "out").mkdir()
    (base / "linked-log.jsonl").symlink_to(run / "events.log")
    (base / "linked-run").symlink_to(run, target_is_directory=True)
    return {"base": base, "runs": base / "runs", "run": run}


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run except the export of the user's own the tests may add (the lock
    only by name: whoever takes it, an export's projection refresh too, writes its pid)."""
    return {str(p.relative_to(run)): b"" if p.name.endswith(".lock") else p.read_bytes()
            for p in sorted(run.rglob("*")) if p.is_file() and not p.name.startswith("mine")}


def export(world, *args: str) -> subprocess.CompletedProcess:
    return run_cli("export", *args, "--runs-dir", str(world["runs"]), cwd=world["base"])


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


OWNED = ["events.log", "events.log.lock", "events.log.broken", "events.log.broken.3", "index.lmdb/data.mdb",
         "index.lmdb", "responses.jsonl", "summary.json", "projections.ckpt", "conversations/qq1_s0.json", "failures.jsonl",
         "conversations/new.json", "plan.jsonl", "summary.json.tmp.77"]


@pytest.mark.parametrize("name", OWNED)
@pytest.mark.parametrize("spelling", ["plain", "dotdot", "linked-dir"])
def test_an_export_onto_a_file_the_run_owns_is_refused_and_the_run_is_untouched(world, name, spelling):
    run = world["run"]
    path = {"plain": str(run / name), "dotdot": str(world["base"] / "out" / ".." / "runs" / "r" / name),
            "linked-dir": str(world["base"] / "linked-run" / name)}[spelling]
    before = snapshot(run)
    r = export(world, "r", "jsonl", "-o", path)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    line = one_line(r)
    assert "refusing" in line and "run r" in line, line
    assert snapshot(run) == before
    assert not [p for p in run.rglob("*") if "tmp" in p.name], sorted(p.name for p in run.iterdir())


def test_a_symlink_to_the_log_does_not_get_around_the_check(world):
    before = snapshot(world["run"])
    r = export(world, "r", "csv", "-o", str(world["base"] / "linked-log.jsonl"))
    assert r.returncode == 2 and "refusing" in one_line(r)
    assert snapshot(world["run"]) == before
    assert (world["base"] / "linked-log.jsonl").is_symlink()
    v = run_cli("verify", "r", "--runs-dir", str(world["runs"]), cwd=world["base"])
    assert v.returncode == 0 and v.stdout.strip().endswith("ok"), v.stdout + v.stderr


def test_an_export_of_the_users_own_inside_the_run_directory_works(world):
    run = world["run"]
    before = snapshot(run)
    for fmt, name in (("parquet", "mine.parquet"), ("jsonl", "mine.jsonl")):
        r = export(world, "r", fmt, "-o", str(run / name))
        assert r.returncode == 0, (fmt, r.stderr[-3000:])
        assert f"wrote {ITEMS} rows" in r.stdout
    assert pq.read_table(run / "mine.parquet").num_rows == ITEMS
    assert len((run / "mine.jsonl").read_text().splitlines()) == ITEMS
    assert snapshot(run) == before
    assert not [p for p in run.rglob("*") if "tmp" in p.name]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_files_of_dead_exports_are_removed_and_live_ones_kept(world):
    out = world["base"] / "temps"
    out.mkdir()
    dead, live = _dead_pid(), os.getpid()
    stale = [f"a.parquet.tmp.{dead}", f"b.csv.tmp.{dead}", f"c.batch.jsonl.tmp.{dead}", f"d.xlsx.ledger-tmp.{dead}"]
    kept = [f"e.parquet.tmp.{live}", f"f.jsonl.ledger-tmp.{live}", f"notes.tmp.{dead}", "g.parquet"]
    for name in stale + kept:
        (out / name).write_bytes(b"x" * 1000)
    r = export(world, "r", "arrow", "-o", str(out / "new.arrow"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(out)) == sorted(kept + ["new.arrow"])


def test_an_export_killed_mid_write_leaves_nothing_after_the_next_one(world):
    """kill -9 at varying moments; whatever the moment, the next export to the folder leaves
    only finished files."""
    out = world["base"] / "killed"
    out.mkdir()
    env = {**os.environ}
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5):
        child = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "export", "r", "xlsx", "-o", str(out / "x.xlsx"),
                                  "--runs-dir", str(world["runs"])], cwd=world["base"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    r = export(world, "r", "xlsx", "-o", str(out / "y.xlsx"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [n for n in os.listdir(out) if "tmp" in n], os.listdir(out)


# -- the function other commands use (compare -o) ------------------------------------------------


def test_check_output_path_resolves_links_and_dotdot(world):
    run = world["run"]
    for path in (run / "events.log", world["base"] / "linked-log.jsonl", world["base"] / "linked-run" / "summary.json",
                 run / "conversations" / ".." / "responses.jsonl"):
        assert owner_of(str(path)) == os.path.realpath(run), path
        with pytest.raises(Exception, match="refusing"):
            check_output_path(str(path))
    assert check_output_path(str(run / "compare.csv")) == os.path.realpath(run / "compare.csv")
    assert owner_of(str(world["base"] / "out" / "x.csv")) is None
    for name in ("cache.lmdb", "cache.lmdb-lock", "cache.lock", "cache.cleared"):  # the runs directory's cache
        with pytest.raises(Exception, match="the cross-run cache of the runs directory"):
            check_output_path(str(world["runs"] / name))


def test_a_shard_inside_a_run_is_the_runs_too(tmp_path):
    run = tmp_path / "r"
    shard = run / "shards" / "0"
    shard.mkdir(parents=True)
    for d in (run, shard):
        (d / "events.log").write_bytes(b"")
    assert owner_of(str(shard / "mine.csv")) == os.path.realpath(run)  # the outer run owns shards/
    assert owner_of(str(run / "mine.csv")) is None


def test_an_export_onto_the_runs_own_dataset_is_refused(world):
    data = world["base"] / "d.jsonl"
    before = data.read_bytes()
    r = export(world, "r", "jsonl", "-o", str(world["base"] / "out" / ".." / "d.jsonl"))
    assert r.returncode == 2 and "dataset of run r" in one_line(r), r.stderr[-2000:]
    assert data.read_bytes() == before


@pytest.mark.parametrize("name", ["events.log", "summary.json"])
def test_compare_and_simulate_outputs_onto_a_runs_file_are_refused(world, name):
    """Every command's output goes through the same check, not only export's."""
    before = snapshot(world["run"])
    target = str(world["run"] / name)
    compared = run_cli("compare", "r", "r", "-o", target, "--runs-dir", str(world["runs"]), cwd=world["base"])
    assert compared.returncode == 2 and "run" in one_line(compared)
    simulated = run_cli("simulate", "--port", "0", "--request-log", target, cwd=world["base"], timeout=30)
    assert simulated.returncode == 2 and "run" in one_line(simulated)
    assert snapshot(world["run"]) == before


def test_simulate_on_a_busy_port_is_one_line(world):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run_cli("simulate", "--port", str(busy.getsockname()[1]), cwd=world["base"], timeout=30)
    assert r.returncode == 2 and "port" in one_line(r)
