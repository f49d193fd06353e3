"""The LMDB index: derived from the log, caught up on open, rebuilt when it cannot be trusted.

py-lmdb refuses to open one environment twice in a process: every index is closed before
it is reopened.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import msgspec
import pytest

from llm_ledger.ledger import index as ledger_index
from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started, encode_many
from llm_ledger.ledger.framing import FRAME_OVERHEAD
from llm_ledger.ledger.errors import IndexStateError
from llm_ledger.ledger.index import DONE, FAILED, IN_FLIGHT, RunIndex
from llm_ledger.ledger.maintenance import repair_log
from llm_ledger.ledger.reader import iter_events, iter_frames, log_end
from llm_ledger.ledger.writer import LogWriter

FATES = ("done", "failed", "in_flight", "retrying", "done_after_retry")


def item_groups(item_id: str, fate: str, sample: int = 0) -> list[list]:
    """The commit groups a runner would write for one item with this fate."""
    key = {"item_id": item_id, "sample": sample}
    start = [Started(**key, request={"prompt": f"prompt {item_id} ü"})]
    done = [Response(**key, text=f"answer {item_id}"), Parsed(**key, value=item_id)]
    if fate == "done":
        return [start, done]
    if fate == "failed":
        return [start, [Failed(**key, message="401", status=401, final=True)]]
    if fate == "in_flight":
        return [start]
    if fate == "retrying":
        return [start, [Failed(**key, message="429", status=429, retryable=True)]]
    return [start, [Failed(**key, message="500", status=500, retryable=True)], [Started(**key, attempt=2)], done]


def workload(n: int, seed: int, samples: int = 1) -> list[list]:
    """A run's groups: run_started, session_started, then items interleaved at random."""
    rng = random.Random(seed)
    per_item = [item_groups(f"q{i}", rng.choice(FATES), s) for i in range(n) for s in range(samples)]
    groups = [[RunStarted(run_id="r", items=n, config={"samples": samples})], [SessionStarted(pid=1)]]
    while per_item:
        pick = rng.randrange(len(per_item))
        groups.append(per_item[pick].pop(0))
        if not per_item[pick]:
            per_item.pop(pick)
    return groups


def expected(events) -> dict:
    """What the index must say after these events: an independent fold of the contract."""
    state: dict[tuple[str, int], str] = {}
    attempts: dict[tuple[str, int], int] = {}
    planned, status = 0, ""
    for e in events:
        if isinstance(e, RunStarted):
            planned, status = e.items * e.config.get("samples", 1), "running"
        elif isinstance(e, SessionStarted):
            status = "running"
        elif isinstance(e, SessionEnded):
            status = e.reason
        elif isinstance(e, Started):
            state[e.item_id, e.sample] = "in_flight"
            attempts[e.item_id, e.sample] = attempts.get((e.item_id, e.sample), 0) + 1
        elif isinstance(e, (Response, Parsed, Failed)) and (e.item_id, e.sample) not in state and not (isinstance(e, Failed) and e.final):
            continue  # a reply or parse whose request was lost (a repaired log): never started
        elif isinstance(e, Parsed):
            state[e.item_id, e.sample] = "done"
        elif isinstance(e, Failed) and state.get((e.item_id, e.sample)) != "done":
            state[e.item_id, e.sample] = "failed" if e.final else "in_flight"
    counts = {name: sum(1 for s in state.values() if s == name) for name in ("in_flight", "done", "failed")}
    counts["pending"] = max(0, planned - sum(counts.values()))
    last_seq = events[-1].seq if events else 0
    return {"counts": {**counts, "planned": planned, "applied_seq": last_seq, "status": status}, "state": state, "attempts": attempts}


STATE_CODES = {"in_flight": IN_FLIGHT, "done": DONE, "failed": FAILED}


def check_index(index: RunIndex, log: str, seed: int | str = "") -> None:
    """Counts, every item's state and offset, the unfinished set and the applied end."""
    events = list(iter_events(log))
    want = expected(events)
    assert index.counts() == want["counts"], f"seed {seed}"
    assert index.applied() == (log_end(log), want["counts"]["applied_seq"]), f"seed {seed}"
    latest = {}
    for frame in iter_frames(log):
        for e in frame.events:
            if hasattr(e, "item_id"):
                latest[e.item_id, e.sample] = (frame.offset, e.seq)
    for (item_id, sample), name in want["state"].items():
        got = index.get(item_id, sample)
        assert got is not None, f"seed {seed}: {item_id} missing"
        assert (got.state, got.attempts) == (STATE_CODES[name], want["attempts"].get((item_id, sample), 0)), f"seed {seed}: {item_id}"
        assert (got.offset, got.seq) == latest[item_id, sample], f"seed {seed}: {item_id}"
    unfinished = {(i, s) for (i, s), name in want["state"].items() if name in ("in_flight", "failed")}
    assert unfinished_in(index, want["state"]) == unfinished, f"seed {seed}"


def unfinished_in(index: RunIndex, keys) -> set:
    """The (item, sample) keys among ``keys`` that the index holds in flight or failed."""
    return {key for key in keys if (got := index.get(*key)) is not None and got.state in (IN_FLIGHT, FAILED)}


def write(log: str, groups: list[list], index_path: str | None = None) -> RunIndex | None:
    """Append ``groups`` (one frame each); with ``index_path``, through a live index, which
    is returned open once the writer has closed (so every listener call has finished)."""
    writer = LogWriter.open(log)
    index = None
    try:
        if index_path is not None:
            index = RunIndex.open_for_log(index_path, log)
            writer.add_listener(index.apply)
        for group in groups:
            writer.append_many(group)
    finally:
        writer.close()
    assert writer.listener_errors == []
    return index


@pytest.fixture
def run(tmp_path):
    os.makedirs(tmp_path / "run")
    return str(tmp_path / "run" / "events.log"), str(tmp_path / "run" / "index.lmdb")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_live_index_matches_the_log(run, seed):
    log, path = run
    index = write(log, workload(30, seed, samples=2), path)
    try:
        check_index(index, log, seed)
    finally:
        index.close()


def test_lagging_index_catches_up_on_open(run):
    log, path = run
    groups = workload(40, seed=7)
    index = write(log, groups[:30], path)
    try:
        behind = index.applied()
    finally:
        index.close()
    write(log, groups[30:])  # no index listening: it lags
    with LogWriter.open(log) as writer:
        writer.append(SessionEnded(reason="interrupted"))
    assert behind[0] < log_end(log)
    index = RunIndex.open_for_log(path, log)
    try:
        check_index(index, log)
        assert index.counts()["status"] == "interrupted"
    finally:
        index.close()


def test_index_of_a_log_written_without_one_is_built_on_open(run):
    log, path = run
    write(log, workload(25, seed=8))
    index = RunIndex.open_for_log(path, log)
    try:
        check_index(index, log)
    finally:
        index.close()


def test_deleted_index_is_rebuilt_identically(run):
    log, path = run
    index = write(log, workload(40, seed=9), path)
    try:
        items = {(e.item_id, e.sample): index.get(e.item_id, e.sample) for e in iter_events(log) if hasattr(e, "item_id")}
        live = (index.counts(), index.applied(), unfinished_in(index, items))
    finally:
        index.close()
    shutil.rmtree(path)
    index = RunIndex.open_for_log(path, log)
    try:
        assert (index.counts(), index.applied(), unfinished_in(index, items)) == live
        assert {key: index.get(*key) for key in items} == items
        check_index(index, log)
    finally:
        index.close()


def test_index_ahead_of_a_repaired_log_is_rebuilt(run):
    log, path = run
    groups = workload(20, seed=10)
    write(log, groups, path).close()
    frames = list(iter_frames(log))
    with open(log, "r+b") as f:  # damage a frame in the middle, then salvage what precedes it
        f.seek(frames[15].offset + 30)
        byte = f.read(1)
        f.seek(frames[15].offset + 30)
        f.write(bytes([byte[0] ^ 0xFF]))
    fixed = repair_log(log)  # the frames after the damage are kept, renumbered: offsets and seqs move
    assert fixed.salvaged_events == sum(len(f.events) for f in frames[16:])
    with pytest.raises(IndexStateError):  # a reader that names the log is told the index is not this log's
        RunIndex.open_readonly(path, log)
    index = RunIndex.open_for_log(path, log)
    try:
        check_index(index, log)
    finally:
        index.close()


def frame_size(event, seq: int) -> int:
    return FRAME_OVERHEAD + len(encode_many([msgspec.structs.replace(event, seq=seq, ts=1.5)]))


def test_stale_index_whose_offset_falls_inside_a_later_frame_is_rebuilt(run):
    """The log was repaired shorter and then grew again, so the index's applied offset now
    lands inside a new frame, on bytes that look like a short frame trailer."""
    log, path = run
    groups = workload(12, seed=11)
    index = write(log, groups, path)
    try:
        stale_offset = index.applied()[0]
    finally:
        index.close()
    frames = list(iter_frames(log))
    with open(log, "r+b") as f:
        for frame in frames[3:]:  # bad frame magics, so that repair has nothing to keep after frames[2]
            f.seek(frame.offset)
            f.write(b"XXXX")
    assert repair_log(log).kept_bytes == frames[3].offset
    last_seq = frames[2].first_seq + len(frames[2].events) - 1
    # A padding frame that ends 16 bytes before the stale offset, so that the frame after
    # it has its first_seq (a small number) where the stale offset expects a trailer.
    room = stale_offset - 16 - frames[3].offset
    pad = next(
        e for n in range(room) if frame_size(e := Started(item_id="pad", request={"p": "x" * n}), last_seq + 1) == room
    )
    with LogWriter.open(log) as writer:
        assert writer.append(pad).seq == last_seq + 1
        assert writer.end == stale_offset - 16
        writer.append_many([Started(item_id="z"), Response(item_id="z", text="z" * 100)])
    assert log_end(log) > stale_offset
    index = RunIndex.open_for_log(path, log)
    try:
        check_index(index, log)
    finally:
        index.close()


READER = """
import json, sys, time
from llm_ledger.ledger.index import RunIndex
index = RunIndex.open_readonly(sys.argv[1])
target, seen = int(sys.argv[2]), None
print("ready", flush=True)
while True:
    counts = index.counts()
    if counts != seen:
        print(json.dumps(counts), flush=True)
        seen = counts
    if counts["applied_seq"] >= target:
        break
    time.sleep(0.001)
index.close()
"""


def test_readonly_reader_in_another_process_sees_consistent_states(run):
    log, path = run
    seed = 12
    groups = workload(200, seed)
    total = sum(len(g) for g in groups)
    with LogWriter.open(log) as writer:
        index = RunIndex.open_for_log(path, log)
        writer.add_listener(index.apply)
        writer.append_many(groups[0])
        reader = subprocess.Popen([sys.executable, "-c", READER, path, str(total)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert reader.stdout.readline() == "ready\n"  # it reads while the writer writes
        for group in groups[1:]:
            writer.append_many(group)
    index.close()
    assert writer.listener_errors == []
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    snapshots = [json.loads(line) for line in out.splitlines()]
    events = list(iter_events(log))
    assert snapshots[-1]["applied_seq"] == total
    for snap in snapshots:  # every state a reader saw is the state of a prefix of the log
        assert snap == expected(events[: snap["applied_seq"]])["counts"], f"seed {seed}"


def test_map_grows_when_full(run, monkeypatch):
    log, path = run
    monkeypatch.setattr(ledger_index, "_INITIAL_MAP", 64 << 10)
    groups = [[RunStarted(run_id="r", items=3000)]]
    groups += [[Started(item_id=f"item-{i:05d}-" + "k" * 40, request={"i": i}) for i in range(j, j + 100)] for j in range(0, 3000, 100)]
    index = write(log, groups, path)
    try:
        check_index(index, log)
    finally:
        index.close()
    assert os.path.getsize(os.path.join(path, "data.mdb")) > 64 << 10
    monkeypatch.undo()
    reader = RunIndex.open_readonly(path)
    try:
        assert reader.counts()["in_flight"] == 3000
    finally:
        reader.close()
    index = RunIndex.open_for_log(path, log)
    try:
        check_index(index, log)
    finally:
        index.close()


def test_an_index_of_the_previous_format_still_vouches_for_the_log_it_applied(run):
    """An upgrade changes the index format (its item states are rebuilt), but how far it had
    applied the log means the same: the writer's guard against cutting durable frames as a
    torn tail (``durable_end``) must not drop to 0 on the first open after an upgrade."""
    log, path = run
    index = write(log, workload(5, seed=1), path)
    applied = index.applied()[0]
    assert applied > 0
    with index._env.begin(write=True) as txn:  # what a run indexed by the previous version holds
        txn.put(b"format", b"2", db=index._meta)
    index.close()
    with pytest.raises(IndexStateError):
        RunIndex.open_readonly(path, log)  # its item states are not trusted ...
    assert RunIndex.durable_end(path) == applied  # ... its applied offset is
