"""An event the log cannot hold (nested too deep for the encoder) fails its own submission
with LogError; the writer lives on and the events around it are durable, gapless."""

from __future__ import annotations

import pytest

from llm_ledger.ledger.errors import LogError
from llm_ledger.ledger.events import Parsed, RunStarted
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_too_deep_event_fails_alone_and_the_writer_goes_on(tmp_path):
    log = str(tmp_path / "events.log")
    with LogWriter.open(log) as writer:
        writer.append(RunStarted(run_id="r", items=1))
        with pytest.raises(LogError, match="cannot be encoded"):
            writer.append(Parsed(item_id="q", sample=0, parser="json", ok=True, value=_deep(100_000)))
        writer.append(Parsed(item_id="q", sample=0, parser="json", ok=True, value=[1]))
    events = list(iter_events(log))
    assert [type(e).__name__ for e in events] == ["RunStarted", "Parsed"]
    assert [e.seq for e in events] == [1, 2] and events[1].value == [1]


def test_a_refused_submission_is_kept_for_the_runner_to_report(tmp_path):
    """Nobody waits on ``submit``: a refused one must not vanish without a word."""
    log = str(tmp_path / "events.log")
    with LogWriter.open(log) as writer:
        writer.append(RunStarted(run_id="r", items=1))
        writer.submit([Parsed(item_id="q", sample=0, parser="json", ok=True, value=_deep(100_000))])
        writer.append(Parsed(item_id="q", sample=0, parser="json", ok=True, value=[1]))
    assert len(writer.refused) == 1 and "Parsed event cannot be encoded" in str(writer.refused[0])
    assert [e.seq for e in iter_events(log)] == [1, 2]
