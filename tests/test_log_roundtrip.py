"""Events survive write -> close -> reopen -> read unchanged, with a gapless seq from 1."""

from __future__ import annotations

import asyncio
import os
import tempfile

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_ledger.ledger.errors import LogError
from llm_ledger.ledger.events import (
    Failed,
    Parsed,
    Paused,
    Response,
    Resumed,
    RunStarted,
    SessionEnded,
    SessionStarted,
    Started,
    Usage,
)
from llm_ledger.ledger.framing import FRAME_OVERHEAD, MAX_FRAME
from llm_ledger.ledger.reader import iter_events, iter_frames
from llm_ledger.ledger.writer import LogWriter

# -- strategies ------------------------------------------------------------------------

short = st.text(max_size=20)
# Mostly small strings, sometimes long runs of one (possibly multi-byte) character.
texts = st.one_of(
    st.text(max_size=60),
    st.builds(lambda c, n: c * n, st.characters(exclude_categories=["Cs"]), st.integers(0, 60_000)),
)
ints = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(allow_nan=False)
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
item = {"item_id": st.text(max_size=30), "sample": st.integers(0, 2**31), "turn": st.integers(0, 50)}

events = st.one_of(
    st.builds(RunStarted, run_id=short, config=json_objects, dataset=texts, dataset_sha256=short, items=st.integers(0, 10**9), version=short),
    st.builds(SessionStarted, pid=st.integers(1, 2**22), host=short, version=short, reason=short),
    st.builds(Started, **item, attempt=st.integers(1, 10), request=json_objects, endpoint=short),
    st.builds(
        Response,
        **item,
        attempt=st.integers(1, 10),
        text=texts,
        finish_reason=st.none() | short,
        usage=st.none() | st.builds(Usage, prompt_tokens=st.integers(0, 10**6), completion_tokens=st.integers(0, 10**6), total_tokens=st.integers(0, 10**6)),
        latency=floats,
        raw=st.none() | json_objects,
        endpoint=short,
        final=st.booleans(),
    ),
    st.builds(Parsed, **item, parser=short, parser_version=short, ok=st.booleans(), value=json_values, error=st.none() | texts),
    st.builds(
        Failed,
        **item,
        attempt=st.integers(1, 10),
        error_type=short,
        message=texts,
        status=st.none() | st.integers(100, 599),
        retryable=st.booleans(),
        final=st.booleans(),
        endpoint=short,
    ),
    st.builds(SessionEnded, reason=st.sampled_from(["completed", "interrupted", "error"])),
    st.builds(Paused, endpoint=short, reason=texts),
    st.builds(Resumed, endpoint=short),
)
# One write: ("one", event) through append, or ("many", [events]) through append_many.
writes = st.one_of(
    st.tuples(st.just("one"), events),
    st.tuples(st.just("many"), st.lists(events, min_size=0, max_size=6)),
)


def unstamped(event):
    return msgspec.structs.replace(event, seq=0, ts=0.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=st.lists(writes, min_size=1, max_size=12))
def test_random_event_streams_round_trip(tmp_path, ops):
    log = os.path.join(tempfile.mkdtemp(dir=tmp_path), "events.log")
    written, acked = [], []
    with LogWriter.open(log) as writer:
        for kind, payload in ops:
            if kind == "one":
                written.append(payload)
                acked.append(writer.append(payload))
            else:
                written.extend(payload)
                acked.extend(writer.append_many(payload))

    assert [unstamped(e) for e in acked] == written  # the writer changes seq and ts only
    assert [e.seq for e in acked] == list(range(1, len(written) + 1))

    reopened = LogWriter.open(log)
    try:
        assert reopened.recovered.cut_bytes == 0
        assert reopened.last_seq == len(written)
    finally:
        reopened.close()
    assert list(iter_events(log)) == acked


def test_append_many_of_nothing_returns_nothing_and_the_writer_lives_on(tmp_path):
    log = str(tmp_path / "events.log")
    with LogWriter.open(log) as writer:
        assert writer.append_many([]) == []
        assert asyncio.run(writer.append_many_async([])) == []
        assert writer.append(Resumed(endpoint="e")).seq == 1
        assert writer.append_many([]) == []
        assert writer.append(Resumed(endpoint="f")).seq == 2
    assert [(e.seq, e.endpoint) for e in iter_events(log)] == [(1, "e"), (2, "f")]


def test_groups_above_the_frame_limit_are_split_without_breaking_submissions(tmp_path):
    log = str(tmp_path / "events.log")
    big = "€" * (MAX_FRAME // 4)  # 3 bytes a character: 3/4 of a frame per event
    with LogWriter.open(log) as writer:
        for i in range(4):
            writer.submit([Response(item_id=f"b{i}", text=big)])
        writer.submit([Response(item_id="pair", text=big), Response(item_id="pair", sample=1, text="x")])
        huge = writer.append(Response(item_id="huge", text="x" * (MAX_FRAME + 10)))
        last = writer.append(Resumed())
    assert (huge.seq, last.seq) == (7, 8)
    events = list(iter_events(log))
    assert [e.seq for e in events] == list(range(1, 9))
    assert [getattr(e, "item_id", None) for e in events] == ["b0", "b1", "b2", "b3", "pair", "pair", "huge", None]
    assert events[0].text == big and events[6].text == "x" * (MAX_FRAME + 10)
    frames = list(iter_frames(log))
    for frame in frames:
        payload = frame.end - frame.offset - FRAME_OVERHEAD
        assert len(frame.events) == 1 or payload <= MAX_FRAME, (frame.offset, len(frame.events), payload)
    pair_frames = [f for f in frames if any(getattr(e, "item_id", "") == "pair" for e in f.events)]
    assert len(pair_frames) == 1  # append_many is one frame even when the group is split


def test_an_unencodable_submission_fails_alone_and_leaves_no_gap(tmp_path):
    log = str(tmp_path / "events.log")
    with LogWriter.open(log) as writer:
        writer.append(Started(item_id="a"))
        with pytest.raises(LogError, match="cannot be encoded"):
            writer.append_many([Started(item_id="b"), Parsed(item_id="b", value=object())])
        assert writer.append(Started(item_id="c")).seq == 2
    assert [(e.seq, e.item_id) for e in iter_events(log)] == [(1, "a"), (2, "c")]
