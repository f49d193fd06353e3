"""`run_status` counts the same from each of its sources, on random event streams.

The status function reads the index when it is current, the index plus the events after its
offset when the log grew past it, and a replay of the log otherwise. The last two fold
events with ``ledger.index.next_state``, the index's own lifecycle:
each seed writes a real log of events in any order per item (a start after a parse, a
failure after a success, a reply after a final failure...), builds the index with the
storage code, and checks that all three sources give its counts. Seeds are printed on
failure.
"""

from __future__ import annotations

import random
import shutil

import pytest

from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.runs import run_status

FIELDS = ("planned", "done", "failed", "in_flight", "pending", "events", "status")


def _event(rng: random.Random, item: int):
    key = {"item_id": f"q{item}", "sample": rng.randrange(2)}
    match rng.randrange(5):
        case 0:
            return Started(**key)
        case 1:
            return Response(**key, text="r")
        case 2:
            return Parsed(**key, value="v")
        case 3:
            return Failed(**key, message="m", final=True)
        case _:
            return Failed(**key, message="m", retryable=True)


def _groups(seed: int) -> list[list]:
    rng = random.Random(seed)
    groups = [[RunStarted(run_id="r", items=12, config={"samples": 2})], [SessionStarted(pid=1)]]
    for _ in range(rng.randrange(20, 120)):
        groups.append([_event(rng, rng.randrange(12)) for _ in range(rng.randint(1, 3))])
        if rng.random() < 0.05:
            groups.append([SessionEnded(reason=rng.choice(["completed", "interrupted"]))])
            groups.append([SessionStarted(pid=2)])
    if rng.random() < 0.7:
        groups.append([SessionEnded(reason=rng.choice(["completed", "interrupted", "error"]))])
    return groups


def _said(paths: RunPaths) -> dict:
    info = run_status(paths)
    return {k: getattr(info, k) for k in FIELDS} | {"source": info.source}


@pytest.mark.parametrize("seed", range(25))
def test_index_index_plus_tail_and_replay_agree(tmp_path, seed):
    paths = RunPaths(str(tmp_path / "r"))
    (tmp_path / "r").mkdir()
    groups = _groups(seed)
    cut = len(groups) // 2
    with LogWriter.open(paths.log) as writer:
        for group in groups[:cut]:
            writer.append_many(group)
    RunIndex.open_for_log(paths.index, paths.log).close()
    shutil.copytree(paths.index, tmp_path / "half-index")  # the index of the first half only
    with LogWriter.open(paths.log) as writer:
        for group in groups[cut:]:
            writer.append_many(group)
    RunIndex.open_for_log(paths.index, paths.log).close()

    from_index = _said(paths)
    assert from_index.pop("source") == "index", f"seed {seed}"
    shutil.rmtree(paths.index)
    shutil.copytree(tmp_path / "half-index", paths.index)
    tail = _said(paths)
    assert tail.pop("source") == "index+log", f"seed {seed}"
    shutil.rmtree(paths.index)
    replay = _said(paths)
    assert replay.pop("source") == "log", f"seed {seed}"
    assert tail == replay == from_index, f"seed {seed}"
