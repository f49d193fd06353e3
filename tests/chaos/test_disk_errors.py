"""Disk errors in a real run, injected at the OS-call boundary (oshim.FaultyOs as the backend
of ``llm_ledger.ledger.fs``, which every file-system call goes through): a write that fails
with ENOSPC, an fdatasync that fails with EIO, once or for good.

What must hold: the run stops with one clear message (a LedgerError, exit 1 from the CLI);
nothing unsynced is acknowledged (no projection line, no index entry for an event the log
does not keep); the failed descriptor is never written or synced again; and once the fault
is gone, `ledger resume` completes without re-requesting a reply that was durable.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import pytest

from chaos.chains import REGEX_PARSER
from chaos.invariants import check_projections, read_log, reply_keys, resent
from chaos.oshim import FaultyOs, install
from chaos.procs import run_cli
from llm_ledger.ledger.errors import LedgerError, LogWriteError
from llm_ledger.ledger.events import Started
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter

FAULTS = {  # name -> FaultyOs arguments
    "enospc_write": dict(op="write", err=errno.ENOSPC),
    "eio_fdatasync": dict(op="fdatasync", err=errno.EIO),
    "eio_fdatasync_for_good": dict(op="fdatasync", err=errno.EIO, sticky=True),
}
STRERROR = {errno.ENOSPC: "No space left on device", errno.EIO: "Input/output error"}


def dataset(tmp_path: Path, n: int = 60) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(n)))
    return path


def no_reuse_after_failure(calls: list) -> list[str]:
    """After a failed write/fdatasync on a descriptor, that descriptor is never written or
    synced again (calls: (op, generation, fd, ok))."""
    failed_at = next((i for i, c in enumerate(calls) if not c[3]), None)
    if failed_at is None:
        return ["no call failed"]
    _, gen, fd, _ = calls[failed_at]
    return [f"{op} on the failed descriptor after the failure" for op, g, f, _ in calls[failed_at + 1:]
            if (g, f) == (gen, fd) and op in ("write", "fdatasync", "fsync")]


def check_nothing_unsynced_acknowledged(run_dir: Path) -> list[str]:
    """Every responses.jsonl line the dead session wrote stands for an event the recovered
    log holds (the projector only ever saw durable groups)."""
    with LogWriter.open(str(run_dir / "events.log")):
        pass  # recover exactly as the next session will
    events, error = read_log(run_dir / "events.log")
    if error:
        return [error]
    finishing = {(e.seq, e.item_id, e.sample) for e in events if e.__class__.__name__ in ("Parsed", "Failed")}
    lines = (run_dir / "responses.jsonl").read_bytes().splitlines() if (run_dir / "responses.jsonl").exists() else []
    return [f"responses.jsonl has seq {row['seq']} ({row['item_id']}) that the log does not keep"
            for row in map(json.loads, lines) if (row["seq"], row["item_id"], row["sample"]) not in finishing]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_disk_error_in_process_stops_the_run_cleanly_and_resume_finishes(tmp_path, monkeypatch, fault):
    from llm_ledger.runners.config import RunConfig
    from llm_ledger.runners.prepare import prepare, prepare_resume
    from llm_ledger.runners.session import Session, run_prepared

    data = dataset(tmp_path)
    req_log = tmp_path / "requests.jsonl"
    config = RunConfig(parser=REGEX_PARSER, concurrency=8,
                       simulator={"request_log": str(req_log), "latency": 0.003, "seed": 3})
    faulty = FaultyOs(after=12, **FAULTS[fault])
    install(faulty, monkeypatch)
    prepared = prepare(str(data), config, str(tmp_path / "runs"), "disk")
    session = Session(prepared)
    error: BaseException | None = None
    reason = "error"
    try:
        session.begin()
        reason = session.execute(session.plan())
    except BaseException as exc:
        error = exc
    finally:
        try:
            session.close(reason)
        except BaseException as exc:
            error = error or exc
    monkeypatch.undo()
    assert faulty.failed, f"{fault}: the fault never fired"
    assert isinstance(error, LedgerError), f"{fault}: the run ended with {error!r}, not a LedgerError"
    assert STRERROR[faulty.err] in str(error), str(error)
    assert no_reuse_after_failure(faulty.calls) == []
    run_dir = tmp_path / "runs" / "disk"
    assert check_nothing_unsynced_acknowledged(run_dir) == []
    before, _ = read_log(run_dir / "events.log")
    durable, offset = reply_keys(before), req_log.stat().st_size

    _, reason = run_prepared(prepare_resume(prepared.paths))  # the fault is gone
    assert reason == "completed"
    after = list(iter_events(str(run_dir / "events.log")))
    assert after[:len(before)] == before
    assert sorted({e.item_id for e in after if e.__class__.__name__ == "Parsed"}) == sorted(f"q{i}" for i in range(60))
    assert resent(req_log, offset, durable) == []
    assert check_projections(run_dir, tmp_path / "scratch", repair=False) == []


CLI_FAULTS = ["enospc_write", "eio_fdatasync"]


@pytest.fixture(scope="module")
def cli_faults(tmp_path_factory):
    """`ledger run` with a disk fault (a forked CLI child with the shim), then `ledger resume`."""
    out = {}
    for fault in CLI_FAULTS:
        base = tmp_path_factory.mktemp(fault)
        data, runs, calls = dataset(base, 40), base / "runs", base / "calls.jsonl"
        shim = dict(after=6, record=str(calls), **FAULTS[fault])
        run = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "disk", "--parser", REGEX_PARSER,
                      "--concurrency", "4", "--sim", json.dumps({"latency": 0.003}), cwd=base, shim=shim)
        unacked = check_nothing_unsynced_acknowledged(runs / "disk")
        resume = run_cli("resume", "disk", "--runs-dir", str(runs), cwd=base)
        out[fault] = (run, shim, calls, unacked, resume, runs / "disk")
    return out


@pytest.mark.parametrize("fault", CLI_FAULTS)
def test_disk_error_under_the_cli_stops_with_exit_1_then_resume_completes(cli_faults, fault):
    run, shim, calls, unacked, resume, run_dir = cli_faults[fault]
    assert run.returncode == 1, run
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and STRERROR[shim["err"]] in last, run.stderr[-2000:]
    assert no_reuse_after_failure([tuple(json.loads(line)) for line in calls.read_text().splitlines()]) == []
    assert unacked == []
    assert resume.returncode == 0, resume
    rows = [json.loads(line) for line in (run_dir / "responses.jsonl").read_bytes().splitlines()]
    assert {row["item_id"] for row in rows} == {f"q{i}" for i in range(40)} and all(row["correct"] for row in rows)


@pytest.mark.parametrize("fault", CLI_FAULTS)
def test_disk_error_under_the_cli_is_one_clear_line(cli_faults, fault):
    run = cli_faults[fault][0]
    assert "Traceback" not in run.stderr and "never retrieved" not in run.stderr, run.stderr[:3000]
    assert sum(line.startswith("error:") for line in run.stderr.splitlines()) == 1


def test_a_producer_hears_of_a_failed_group_only_after_its_bytes_are_cut(tmp_path, monkeypatch):
    """A writer whose fdatasync failed cuts the unsynced group off *before* failing its
    producers: a producer that saw LogWriteError never finds the failed bytes still there
    (and a reader started after the error never meets them)."""
    log = str(tmp_path / "events.log")
    writer = LogWriter.open(log)
    faulty = FaultyOs(op="fdatasync", err=errno.EIO, after=0)
    heard = threading.Event()
    seen_at_cut: list[bool] = []
    real_ftruncate = faulty.ftruncate

    def slow_ftruncate(fd: int, length: int) -> None:
        time.sleep(0.2)  # time enough for a producer woken too early to look
        seen_at_cut.append(heard.is_set())
        real_ftruncate(fd, length)

    faulty.ftruncate = slow_ftruncate  # type: ignore[method-assign]
    try:
        good = writer.append(Started(item_id="a"))
        size = Path(log).stat().st_size
        faulty._fds[writer._fd] = 1  # the writer's descriptor was opened before the shim
        install(faulty, monkeypatch)
        with pytest.raises(LogWriteError):
            writer.append(Started(item_id="b", request={"x": "y" * 5000}))
        heard.set()
        assert Path(log).stat().st_size == size, "the failed group was still in the log when its producer heard"
    finally:
        writer.close()
    assert seen_at_cut == [False]
    assert list(iter_events(log)) == [good]
