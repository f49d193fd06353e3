"""What the writer lets into the log, and how it says it cannot open one.

* An event whose fields do not match the schema's types (a number where a string belongs)
  encodes fine but cannot be decoded back: written, it would make its frame unreadable --
  CorruptLogError for every reader, resume and export, forever. The writer must refuse it
  (that submission alone) and keep the log readable.
* A log or lock that cannot be opened for writing is one LedgerError (exit 2), not a raw
  OSError traceback.
"""

from __future__ import annotations

import asyncio

import pytest

from llm_ledger.ledger.errors import LedgerError, LogError
from llm_ledger.ledger.events import Parsed, Response, Started
from llm_ledger.ledger.maintenance import verify_log
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter


@pytest.mark.parametrize("bad", [
    Response(item_id="b", text="ok", finish_reason=7),  # type: ignore[arg-type]
    Response(item_id="b", text=["not", "text"]),  # type: ignore[arg-type]
    Started(item_id="b", attempt="first"),  # type: ignore[arg-type]
    Parsed(item_id=12, value="A"),  # type: ignore[arg-type]
], ids=["finish_reason_int", "text_list", "attempt_str", "item_id_int"])
def test_an_event_that_would_not_decode_back_is_refused_alone(tmp_path, bad):
    log = str(tmp_path / "events.log")
    with LogWriter.open(log) as writer:
        writer.append(Started(item_id="a"))
        with pytest.raises(LogError, match="cannot be encoded"):
            writer.append_many([Started(item_id="b"), bad])
        with pytest.raises(LogError):
            asyncio.run(writer.append_async(bad))
        writer.linger = 0.05  # three submissions in one batch: only the bad one is dropped
        writer.submit([Started(item_id="c")])
        writer.submit([bad])
        last = writer.append(Started(item_id="d"))
    assert [(e.seq, e.item_id) for e in iter_events(log)] == [(1, "a"), (2, "c"), (3, "d")]
    assert last.seq == 3 and verify_log(log).ok


def test_a_log_that_cannot_be_opened_for_writing_is_a_ledger_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "events.log.lock").mkdir()  # the pid note cannot be written: it is only a note
    with LogWriter.open(str(tmp_path / "a" / "events.log")) as writer:  # (the lock is on the log itself)
        writer.append(Started(item_id="x"))

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "events.log").mkdir()  # the log itself cannot be opened
    with pytest.raises(LedgerError) as caught:
        LogWriter.open(str(tmp_path / "b" / "events.log"))
    assert caught.value.exit_code == 2 and "cannot open for writing" in str(caught.value)
    with LogWriter.open(str(tmp_path / "c.log")):  # and the lock was released on the way out
        pass
    (tmp_path / "b" / "events.log").rmdir()
    with LogWriter.open(str(tmp_path / "b" / "events.log")) as writer:
        writer.append(Started(item_id="x"))


@pytest.mark.parametrize("torn", ["half_frame", "frame_header", "zeros"])
def test_verify_calls_a_torn_tail_a_tail_not_corruption(tmp_path, torn):
    """After a kill -9 mid-write (or while a live writer is mid-frame) the log ends in a torn
    frame: opening cuts it, readers stop before it. `verify` must not report it as a corrupt
    frame (exit 1) -- the same bytes are not damage to the writer or the readers."""
    from chaos.procs import run_cli
    from llm_ledger.ledger.reader import iter_frames

    log = tmp_path / "runs" / "r" / "events.log"
    log.parent.mkdir(parents=True)
    with LogWriter.open(str(log)) as writer:
        for i in range(4):
            writer.append_many([Started(item_id=f"a{i}"), Response(item_id=f"a{i}", text="x" * 300)])
    last = list(iter_frames(str(log)))[-1]
    data = log.read_bytes()
    tail = {"half_frame": data[last.offset:(last.offset + last.end) // 2], "frame_header": data[last.offset:last.offset + 24],
            "zeros": bytes(700)}[torn]
    log.write_bytes(data + tail)
    report = verify_log(str(log))
    assert report.ok and report.problems == [] and report.tail_bytes == len(tail), report
    r = run_cli("verify", "r", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "ok", r
    log.write_bytes(data[:last.offset + 30] + bytes([data[last.offset + 30] ^ 1]) + data[last.offset + 31:] + data[last.offset:])
    assert [p.offset for p in verify_log(str(log)).problems] == [last.offset]  # damage before a valid frame: reported
