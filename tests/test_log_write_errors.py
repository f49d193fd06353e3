"""A failed write or fdatasync kills the writer: nothing unsynced survives, nothing is retried.

Failures are injected at the OS-call boundary (``fdatasync`` / ``write`` / ``ftruncate`` of an
``llm_ledger.ledger.fs`` backend, which every file-system call goes through), and only for
the log's own file.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading

import pytest

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import LogClosedError, LogError, LogWriteError
from llm_ledger.ledger.events import Response, Started
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter

REAL_FDATASYNC, REAL_WRITE = os.fdatasync, os.write


class Faults(fs.Backend):
    """Fails chosen OS calls on one file (matched by inode) and records every call on it."""

    def __init__(self, monkeypatch, log: str) -> None:
        st = os.stat(log)
        self.ident = (st.st_dev, st.st_ino)
        self.syncs: list[int] = []
        self.writes: list[int] = []
        self.fail_sync = self.fail_write = False
        self.short_write_first = False
        self.failed_writes = 0
        monkeypatch.setattr(fs, "_backend", self)  # fs.use(self), undone by monkeypatch

    def is_log(self, fd: int) -> bool:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == self.ident

    def fdatasync(self, fd: int) -> None:
        if self.is_log(fd):
            self.syncs.append(fd)
            if self.fail_sync:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        REAL_FDATASYNC(fd)

    def write(self, fd: int, data) -> int:
        if self.is_log(fd):
            self.writes.append(len(data))
            if self.fail_write:
                self.failed_writes += 1
                if self.short_write_first and self.failed_writes == 1:
                    return REAL_WRITE(fd, bytes(data[: len(data) // 2]))  # the disk fills up midway
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return REAL_WRITE(fd, data)


def check_dead(writer: LogWriter) -> None:
    with pytest.raises(LogClosedError):
        writer.append(Started(item_id="later"))
    with pytest.raises(LogClosedError):
        writer.append_many([Started(item_id="later"), Started(item_id="later2")])
    with pytest.raises(LogClosedError):
        writer.submit([Started(item_id="later")])
    with pytest.raises(LogClosedError):
        asyncio.run(writer.append_async(Started(item_id="later")))


def test_failed_fdatasync_is_fatal_and_never_retried(tmp_path, monkeypatch):
    log = str(tmp_path / "events.log")
    writer = LogWriter.open(log)
    faults = Faults(monkeypatch, log)
    try:
        good = writer.append_many([Started(item_id="a"), Response(item_id="a", text="ok")])
        durable_size = os.path.getsize(log)
        faults.fail_sync = True
        with pytest.raises(LogWriteError):
            writer.append_many([Started(item_id="b"), Response(item_id="b", text="lost")])
        assert len(faults.syncs) == 2  # one good group, one failed: the fd is never synced again
        check_dead(writer)
        results: list[BaseException | None] = []

        def late() -> None:
            try:
                writer.append(Started(item_id="late"))
                results.append(None)
            except LogError as exc:
                results.append(exc)

        threads = [threading.Thread(target=late) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [type(r) for r in results] == [LogClosedError] * 4
        assert len(faults.syncs) == 2
        assert faults.syncs[0] == faults.syncs[1]
        assert os.path.getsize(log) == durable_size  # the unsynced group was cut off
    finally:
        writer.close()
    assert len(faults.syncs) == 2  # closing a dead writer does not sync either
    monkeypatch.undo()

    assert list(iter_events(log)) == good
    with LogWriter.open(log) as reopened:  # recovered like after a crash
        assert reopened.recovered.cut_bytes == 0
        assert reopened.append(Started(item_id="c")).seq == 3
    assert [(e.seq, e.item_id) for e in iter_events(log)] == [(1, "a"), (2, "a"), (3, "c")]


@pytest.mark.parametrize("short_first", [False, True], ids=["enospc", "short-write-then-enospc"])
def test_failed_write_is_fatal_and_leaves_no_partial_frame(tmp_path, monkeypatch, short_first):
    log = str(tmp_path / "events.log")
    writer = LogWriter.open(log)
    faults = Faults(monkeypatch, log)
    try:
        good = writer.append(Started(item_id="a"))
        durable_size = os.path.getsize(log)
        faults.fail_write, faults.short_write_first = True, short_first
        with pytest.raises(LogWriteError, match="No space left"):
            writer.append(Response(item_id="a", text="x" * 10_000))
        assert len(faults.syncs) == 1  # nothing synced after the failed write
        check_dead(writer)
        assert faults.failed_writes == (2 if short_first else 1)  # nor written
        assert os.path.getsize(log) == durable_size
    finally:
        writer.close()
    monkeypatch.undo()
    assert list(iter_events(log)) == [good]
    with LogWriter.open(log) as reopened:
        assert reopened.recovered.cut_bytes == 0
        assert reopened.append(Started(item_id="b")).seq == 2


def test_partial_frame_left_by_a_dead_writer_is_recovered_on_reopen(tmp_path, monkeypatch):
    """If even cutting the failed group fails, reopening cuts it (and saves it) as after a crash."""
    log = str(tmp_path / "events.log")
    writer = LogWriter.open(log)
    faults = Faults(monkeypatch, log)
    real_ftruncate = os.ftruncate

    def ftruncate(fd: int, length: int) -> None:
        if faults.is_log(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_ftruncate(fd, length)

    monkeypatch.setattr(faults, "ftruncate", ftruncate)
    try:
        good = writer.append(Started(item_id="a"))
        durable_size = os.path.getsize(log)
        faults.fail_write, faults.short_write_first = True, True
        with pytest.raises(LogWriteError):
            writer.append(Response(item_id="a", text="y" * 10_000))
        torn = os.path.getsize(log) - durable_size
        assert torn > 0
    finally:
        writer.close()
    monkeypatch.undo()
    with open(log, "rb") as f:
        tail = f.read()[durable_size:]
    assert list(iter_events(log)) == [good]  # readers stop quietly at the torn tail
    with LogWriter.open(log) as reopened:
        assert (reopened.recovered.end, reopened.recovered.cut_bytes) == (durable_size, torn)
        assert reopened.append(Started(item_id="b")).seq == 2
    with open(log + ".broken", "rb") as f:
        assert f.read() == tail
    assert [e.item_id for e in iter_events(log)] == ["a", "b"]
