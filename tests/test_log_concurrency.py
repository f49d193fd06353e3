"""Many producers, one writer: every acknowledged event exactly once, in seq order, group-committed."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from llm_ledger.ledger.events import Response, Started
from llm_ledger.ledger.reader import iter_events, iter_frames
from llm_ledger.ledger.writer import LogWriter

THREADS, TASKS, PER_PRODUCER = 8, 8, 40


def thread_producer(writer: LogWriter, t: int, start: threading.Barrier, out: list) -> None:
    start.wait()
    for i in range(PER_PRODUCER):
        if i % 3 == 2:
            out.extend(writer.append_many([Started(item_id=f"t{t}-{i}", sample=k) for k in range(3)]))
        else:
            out.append(writer.append(Response(item_id=f"t{t}-{i}", text="ж" * i)))


async def task_producer(writer: LogWriter, k: int, out: list) -> None:
    for i in range(PER_PRODUCER):
        if i % 4 == 3:
            out.extend(await writer.append_many_async([Started(item_id=f"a{k}-{i}", sample=s) for s in range(2)]))
        else:
            out.append(await writer.append_async(Response(item_id=f"a{k}-{i}", text="λ" * i)))


async def run_tasks(writer: LogWriter, start: threading.Barrier, outs: list[list]) -> None:
    await asyncio.to_thread(start.wait)
    await asyncio.gather(*(task_producer(writer, k, outs[k]) for k in range(TASKS)))


def test_threads_and_tasks_append_concurrently(tmp_path):
    log = str(tmp_path / "events.log")
    writer = LogWriter.open(log)
    start = threading.Barrier(THREADS + 1)
    thread_outs: list[list] = [[] for _ in range(THREADS)]
    task_outs: list[list] = [[] for _ in range(TASKS)]
    threads = [threading.Thread(target=thread_producer, args=(writer, t, start, thread_outs[t])) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    asyncio.run(run_tasks(writer, start, task_outs))
    for thread in threads:
        thread.join()
    groups = writer.groups
    writer.close()

    acked = [e for out in thread_outs + task_outs for e in out]
    expected_count = THREADS * (PER_PRODUCER + 2 * (PER_PRODUCER // 3)) + TASKS * (PER_PRODUCER + (PER_PRODUCER // 4))
    assert len(acked) == expected_count
    events = list(iter_events(log))
    assert [e.seq for e in events] == list(range(1, len(acked) + 1))  # gapless, ordered
    assert sorted(acked, key=lambda e: e.seq) == events  # each acknowledged event, as acknowledged
    keys = Counter((e.item_id, e.sample) for e in events)
    assert max(keys.values()) == 1  # exactly once
    for out in thread_outs + task_outs:  # one producer's events keep its order
        assert [e.seq for e in out] == sorted(e.seq for e in out)
    for out in thread_outs:  # an append_many is contiguous
        for e in out:
            if isinstance(e, Started) and e.sample == 0:
                assert [x.seq for x in out if x.item_id == e.item_id] == [e.seq, e.seq + 1, e.seq + 2]

    frames = list(iter_frames(log))
    assert len(frames) == groups
    assert groups < len(events), "no group commit happened"
    assert max(len(f.events) for f in frames) > 3  # some frame held several producers' events
    for frame in frames:  # one commit group = one timestamp
        assert len({e.ts for e in frame.events}) == 1
