"""One writer per run: a second opener gets LogLockedError naming the holder's pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llm_ledger.ledger.errors import LogLockedError
from llm_ledger.ledger.events import Started
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter

HELPER = str(Path(__file__).with_name("helpers_writer.py"))


def start_holder(log: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, HELPER, "hold", log],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("ready "), f"holder did not start: {line!r} {proc.stderr.read()}"
    return proc, int(line.split()[1])


def command(proc: subprocess.Popen, text: str) -> str:
    proc.stdin.write(text + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def try_open_in_subprocess(log: str) -> str:
    done = subprocess.run([sys.executable, HELPER, "try-open", log], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    log = str(tmp_path / "events.log")
    first = LogWriter.open(log)
    try:
        first.append(Started(item_id="a"))
        with pytest.raises(LogLockedError) as caught:
            LogWriter.open(log)
        assert caught.value.pid == os.getpid()
        assert f"pid {os.getpid()}" in str(caught.value)
        assert first.append(Started(item_id="b")).seq == 2  # the refused opener changed nothing
    finally:
        first.close()
    with LogWriter.open(log) as second:
        assert second.append(Started(item_id="c")).seq == 3
    assert [e.item_id for e in iter_events(log)] == ["a", "b", "c"]


def test_a_writer_in_this_process_locks_out_other_processes(tmp_path):
    log = str(tmp_path / "events.log")
    with LogWriter.open(log):
        assert try_open_in_subprocess(log) == f"locked {os.getpid()}"
    assert try_open_in_subprocess(log) == "opened"


def test_a_writer_in_another_process_is_named_until_it_closes(tmp_path):
    log = str(tmp_path / "events.log")
    proc, pid = start_holder(log)
    try:
        assert pid == proc.pid
        assert command(proc, "append 2") == "acked 1 2"
        with pytest.raises(LogLockedError) as caught:
            LogWriter.open(log)
        assert caught.value.pid == proc.pid
        assert f"pid {proc.pid}" in str(caught.value)
        assert command(proc, "close") == "closed"
        with LogWriter.open(log) as writer:  # the holder still runs, but released the log
            assert writer.append(Started(item_id="mine")).seq == 3
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=120) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_kill_9_of_the_holder_frees_the_log(tmp_path):
    log = str(tmp_path / "events.log")
    proc, pid = start_holder(log)
    try:
        assert command(proc, "append 3") == "acked 1 2 3"
        with pytest.raises(LogLockedError) as caught:
            LogWriter.open(log)
        assert caught.value.pid == pid
    finally:
        os.kill(pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert proc.returncode == -signal.SIGKILL
    with LogWriter.open(log) as writer:
        assert writer.recovered.cut_bytes == 0
        assert writer.append(Started(item_id="next")).seq == 4
    assert [e.item_id for e in iter_events(log)] == ["q1", "q2", "q3", "next"]
