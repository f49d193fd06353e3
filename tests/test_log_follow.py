"""Following a live log: every durable event once, in order, including the ones written just
before the writer stopped.

The ``until`` callback is where a follower asks "has the writer stopped?"; these tests drive
the writer from inside it, so every interleaving they check is deterministic.
"""

from __future__ import annotations

from llm_ledger.ledger.events import Started
from llm_ledger.ledger.lock import is_locked
from llm_ledger.ledger.reader import follow_events, iter_events
from llm_ledger.ledger.writer import LogWriter


def test_follow_yields_events_appended_between_polls(tmp_path):
    log = str(tmp_path / "events.log")
    writer = LogWriter.open(log)
    writer.append(Started(item_id="first"))
    polls = []

    def until() -> bool:
        polls.append(len(polls))
        if len(polls) <= 4:
            writer.append_many([Started(item_id=f"poll{len(polls)}-{k}") for k in range(len(polls))])
        elif len(polls) == 5:
            writer.close()
        return not is_locked(log + ".lock")

    got = list(follow_events(log, poll=0.001, until=until))
    assert got == list(iter_events(log))
    assert [e.item_id for e in got] == ["first", "poll1-0", "poll2-0", "poll2-1", "poll3-0", "poll3-1", "poll3-2", "poll4-0", "poll4-1", "poll4-2", "poll4-3"]


def test_follow_does_not_lose_the_last_events_of_a_writer_that_just_closed(tmp_path):
    """The writer appends and closes after the follower's last read but before it checks
    whether the writer is gone: those events must still be yielded."""
    log = str(tmp_path / "events.log")
    writer = LogWriter.open(log)
    writer.append(Started(item_id="a"))

    def until() -> bool:
        if is_locked(log + ".lock"):
            writer.append(Started(item_id="b"))
            writer.close()
        return not is_locked(log + ".lock")

    got = list(follow_events(log, poll=0.001, until=until))
    assert [e.item_id for e in got] == ["a", "b"]


def test_follow_from_an_offset_and_of_a_stopped_log(tmp_path):
    log = str(tmp_path / "events.log")
    with LogWriter.open(log) as writer:
        writer.append(Started(item_id="a"))
        middle = writer.end
        writer.append_many([Started(item_id="b"), Started(item_id="c")])
    assert [e.item_id for e in follow_events(log, until=lambda: not is_locked(log + ".lock"))] == ["a", "b", "c"]
    assert [e.item_id for e in follow_events(log, middle, until=lambda: True)] == ["b", "c"]
