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

from ledger.errors import LedgerError, LogAccessError, LogError
from ledger.events import Parsed, Response, Started
from ledger.maintenance import verify_log
from ledger.reader import iter_events
from ledger.writer import LogWriter


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
    (tmp_path / "a" / "events.log.lock").mkdir()  # the lock cannot be opened
    with pytest.raises(LogAccessError) as caught:
        LogWriter.open(str(tmp_path / "a" / "events.log"))
    assert caught.value.exit_code == 2 and "cannot open for writing" in str(caught.value)

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "events.log").mkdir()  # the log itself cannot be opened
    with pytest.raises(LedgerError) as caught:
        LogWriter.open(str(tmp_path / "b" / "events.log"))
    assert caught.value.exit_code == 2
    with LogWriter.open(str(tmp_path / "c.log")):  # and the lock was released on the way out
        pass
    (tmp_path / "b" / "events.log").rmdir()
    with LogWriter.open(str(tmp_path / "b" / "events.log")) as writer:
        writer.append(Started(item_id="x"))
