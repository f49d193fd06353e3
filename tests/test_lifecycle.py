"""One lifecycle: the index, the rows fold and the conversation fold agree on every sequence.

``ledger.lifecycle`` decides when an (item, sample) is in flight, done or failed. Each reader
keeps its own record of it: the index stores a state per item (LMDB, built from a real log
by the storage code), the folds keep open and failed items and write a line or a file when
one finishes. Hypothesis draws event sequences in any order per item (a reply without its
request, a parse after a final failure, a start after a parse, ...) in random commit groups;
after each event the folds' states and after the whole log the index's must equal the
lifecycle's own fold of the same events, every finish must show up once, as the same kind,
in ``responses.jsonl`` lines and conversation files alike, and the Batch API export must list
as failed exactly the items failed and not done since.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import msgspec

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, SessionStarted, Started
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lifecycle import DONE, FAILED, IN_FLIGHT, PENDING, STEP, Kind, State, transition
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections import conversations, fold
from llm_ledger.projections.writers import _batch_lines

KEYS = [("a", 0), ("a", 1), ("b", 0)]


def _event(key: tuple[str, int], kind: Kind):
    item = {"item_id": key[0], "sample": key[1]}
    match kind:
        case Kind.STARTED:
            return Started(**item, request={"model": "m", "messages": [{"role": "user", "content": "q"}]}, expected="v")
        case Kind.REPLIED:
            return Response(**item, text="v")
        case Kind.PARSED:
            return Parsed(**item, value="v")
        case Kind.RETRYABLE:
            return Failed(**item, error_type="http_error", message="busy", status=503, retryable=True)
    return Failed(**item, error_type="http_error", message="gone", status=404, final=True)


events = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(list(Kind)), st.integers(1, 3)), max_size=30)


def test_a_done_item_meets_every_event_as_an_unseen_one():
    """The folds forget done items (their memory is what is unfinished): the lifecycle must
    let them, a done item and a pending one moving alike wherever either moves."""
    for kind in Kind:
        done, pending = STEP[DONE][kind], STEP[PENDING][kind]
        assert done == pending or (done, pending) == (DONE, PENDING), kind


def test_an_item_in_flight_stays_in_flight_on_a_request_or_reply_and_a_parse_makes_it_done():
    """The folds' hot path takes these answers as given (projections/fold.py): if the
    lifecycle ever changes them, the folds must ask the table there too."""
    assert STEP[IN_FLIGHT][Kind.STARTED] == STEP[IN_FLIGHT][Kind.REPLIED] == IN_FLIGHT
    assert STEP[IN_FLIGHT][Kind.PARSED] == DONE


def test_transition_reads_the_table_and_ignores_run_events():
    assert transition(FAILED, _event(KEYS[0], Kind.STARTED)) == IN_FLIGHT
    assert transition(DONE, _event(KEYS[0], Kind.PARSED)) == DONE
    assert transition(IN_FLIGHT, SessionStarted(pid=1)) == IN_FLIGHT


def _fold_states(state: fold.RunState, last: dict) -> dict:
    return {key: IN_FLIGHT if key in state.open else FAILED if key in state.failed else last.get(key, PENDING)
            for key in KEYS}


def _conversation_states(state: conversations.ConversationState, last: dict) -> dict:
    return {key: IN_FLIGHT if key in state.open else FAILED if key in state.failed else last.get(key, PENDING)
            for key in KEYS}


@settings(max_examples=150, deadline=None)
@given(events)
def test_the_index_and_both_folds_follow_the_lifecycle(steps):
    expected = dict.fromkeys(KEYS, PENDING)
    rows, convs = fold.RunState(), conversations.ConversationState()
    rows_last: dict = {}
    conv_last: dict = {}
    failed_lines: set = set()  # what the Batch API export must list as failed: failed, not done since
    groups: list[list] = [[RunStarted(run_id="r", items=2, config={"samples": 2})], [SessionStarted(pid=1)]]
    seq = 2
    for key, kind, group in steps:
        seq += 1
        event = msgspec.structs.replace(_event(key, kind), seq=seq)
        before = expected[key]
        expected[key] = transition(before, event)
        line = fold.apply(rows, event)
        written = conversations.apply(convs, event)
        finished = expected[key] != before and expected[key] in (DONE, FAILED)
        assert (line is not None) == finished == (written is not None), (key, kind, before, expected[key])
        if finished:
            rows_last[key] = conv_last[key] = expected[key]
            (failed_lines.add if expected[key] == FAILED else failed_lines.discard)(f"{key[0]}#s{key[1]}")
        assert _fold_states(rows, rows_last) == expected
        assert _conversation_states(convs, conv_last) == expected
        if group == 1 or len(groups[-1]) >= 3:
            groups.append([])
        groups[-1].append(_event(key, kind))
    with tempfile.TemporaryDirectory() as tmp:
        log = str(Path(tmp, "events.log"))
        with LogWriter.open(log) as writer:
            for group in groups:
                if group:
                    writer.append_many(group)
        index = RunIndex.open_for_log(str(Path(tmp, "index.lmdb")), log)
        batch = io.BytesIO()
        _batch_lines(RunPaths(tmp), batch, "")
        try:
            said = {key: State(found.state) if (found := index.get(*key)) is not None else PENDING for key in KEYS}
            counts = index.counts()
        finally:
            index.close()
    assert said == expected
    lines = [json.loads(line) for line in batch.getvalue().splitlines()]
    assert {line["custom_id"] for line in lines if line["error"]} == failed_lines
    for state in (IN_FLIGHT, DONE, FAILED):
        assert counts[("pending", "in_flight", "done", "failed")[state]] == sum(s == state for s in expected.values())
