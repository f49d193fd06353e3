"""Append throughput of the ledger against naive durable baselines, in one run.

    python bench/append.py [--events N] [--producers P] [--sweep]

Prints one JSON object. Every rate is events per second, the median of ``--repeat`` runs
(3 by default, as this machine is noisy). All files live in one temporary directory on the
same filesystem as the repository and are removed at exit.

Measured:

* ``events_per_s``: ``LogWriter.append_async`` from P asyncio tasks in one event loop,
  N events in all, to a fresh log each time (durable: acknowledged after fdatasync).
  ``events_per_s_threads`` is the same with P threads calling ``LogWriter.append``.
* ``fdatasync_each_per_s``: per event, msgpack encode + ``os.write`` + ``os.fdatasync``.
* ``sqlite_wal_full_per_s``: SQLite, WAL, synchronous=FULL, one INSERT per commit, the
  same msgpack bytes as a blob.
* ``jsonl_flush_per_s``: ``json.dumps`` + write + flush per event (not durable).
* ``replay_events_per_s``: ``ledger.reader.iter_events`` over the log written above;
  ``msgspec_decode_per_s``: ``ledger.events.decode_many`` on the same frame payloads, already
  in memory (the ceiling: no I/O, no CRC, no seq checks).

Events are pre-built ``Started`` events with a ~200-byte request body; building them is not
timed, neither is opening or closing the writer. Slow baselines use at most
``--baseline-events`` events (rates are per second; the counts used are in the output).
``--sweep`` measures ``events_per_s`` for 1, 4, 16, 64 and 256 producers instead (at most
5000 events per producer, so that the one-producer point is not a minute of fdatasyncs).

Group commit is bounded by concurrency: producers that each wait for their own append
have at most P events in flight, so a group never exceeds P events and events_per_s can
never exceed P times the fdatasync rate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import msgspec

from llm_ledger.ledger.events import Started, decode_many, encode
from llm_ledger.ledger.framing import FRAME_HEAD_SIZE, TRAILER_SIZE
from llm_ledger.ledger.reader import iter_events, iter_frames
from llm_ledger.ledger.writer import LogWriter

SWEEP_PRODUCERS = [1, 4, 16, 64, 256]
SWEEP_EVENTS_PER_PRODUCER = 5_000  # sweep caps N at this many events per producer
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- events ------------------------------------------------------------------------------


def make_events(n: int) -> list[Started]:
    """Realistic ``Started`` events: a chat request of about 200 bytes as JSON."""
    events = []
    for i in range(n):
        request = {
            "model": "gpt-4o-mini-2024-07-18",
            "messages": [
                {"role": "user", "content": f"Question {i:07d}: which option is correct? A, B, C or D"},
            ],
            "temperature": 0.0,
            "max_tokens": 16,
            "seed": 1234,
        }
        events.append(
            Started(
                item_id=f"item-{i:07d}",
                sample=0,
                attempt=1,
                request=request,
                endpoint="https://api.example.com/v1/chat/completions",
            )
        )
    return events


def split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_rate(runs: list[tuple[int, float]]) -> float:
    return statistics.median(n / dt for n, dt in runs)


# -- the ledger --------------------------------------------------------------------------


class Workdir:
    """A fresh subdirectory per measurement inside one temporary root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._n = 0

    def fresh(self) -> str:
        self._n += 1
        path = os.path.join(self.root, f"r{self._n:03d}")
        os.mkdir(path)
        return path

    def drop(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)


def _chunks(events: list[Started], producers: int) -> list[list[Started]]:
    """The events dealt out to P producers in contiguous runs."""
    chunks, start = [], 0
    for size in split(len(events), producers):
        chunks.append(events[start : start + size])
        start += size
    return chunks


def ledger_async(path: str, events: list[Started], producers: int) -> tuple[float, int]:
    """Seconds for P tasks to append all ``events``; and the number of commit groups."""
    writer = LogWriter.open(path)
    try:
        chunks = _chunks(events, producers)

        async def producer(mine: list[Started]) -> None:
            append = writer.append_async
            for event in mine:
                await append(event)

        async def main() -> float:
            gc.collect()
            t0 = time.perf_counter()
            await asyncio.gather(*(producer(c) for c in chunks))
            return time.perf_counter() - t0

        dt = asyncio.run(main())
        assert writer.last_seq == len(events), (writer.last_seq, len(events))
        return dt, writer.groups
    finally:
        writer.close()


def ledger_threads(path: str, events: list[Started], producers: int) -> tuple[float, int]:
    writer = LogWriter.open(path)
    try:
        chunks = _chunks(events, producers)
        go = threading.Barrier(producers + 1)

        def producer(mine: list[Started]) -> None:
            append = writer.append
            go.wait()
            for event in mine:
                append(event)

        threads = [threading.Thread(target=producer, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        gc.collect()
        go.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        assert writer.last_seq == len(events), (writer.last_seq, len(events))
        return dt, writer.groups
    finally:
        writer.close()


def measure_ledger(work: Workdir, events, producers: int, repeat: int, kind: str, keep: bool = False):
    """Median rate, median mean group size, and (if ``keep``) the last log's path."""
    run = ledger_async if kind == "async" else ledger_threads
    rates, group_sizes, kept = [], [], None
    for r in range(repeat):
        d = work.fresh()
        log = os.path.join(d, "events.log")
        dt, groups = run(log, events, producers)
        rates.append(len(events) / dt)
        group_sizes.append(len(events) / max(groups, 1))
        if keep and r == repeat - 1:
            kept = log
        else:
            work.drop(d)
    return statistics.median(rates), statistics.median(group_sizes), kept


# -- baselines ---------------------------------------------------------------------------


def fdatasync_each(path: str, events: list[Started]) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        t0 = time.perf_counter()
        for seq, event in enumerate(events, 1):
            os.write(fd, encode(msgspec.structs.replace(event, seq=seq, ts=time.time())))
            os.fdatasync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def sqlite_wal_full(path: str, events: list[Started]) -> float:
    db = sqlite3.connect(path, isolation_level=None)  # autocommit: one INSERT, one commit
    try:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        insert = "INSERT INTO events (seq, data) VALUES (?, ?)"
        t0 = time.perf_counter()
        for seq, event in enumerate(events, 1):
            db.execute(insert, (seq, encode(msgspec.structs.replace(event, seq=seq, ts=time.time()))))
        dt = time.perf_counter() - t0
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == len(events)
        return dt
    finally:
        db.close()


def jsonl_flush(path: str, events: list[Started]) -> float:
    dicts = [msgspec.to_builtins(e) for e in events]  # plain data, as a naive app would hold
    with open(path, "w", encoding="utf-8") as f:
        t0 = time.perf_counter()
        for seq, d in enumerate(dicts, 1):
            d["seq"], d["ts"] = seq, time.time()
            f.write(json.dumps(d) + "\n")
            f.flush()
        return time.perf_counter() - t0


def measure_baseline(work: Workdir, fn, name: str, events: list[Started], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        d = work.fresh()
        gc.collect()
        runs.append((len(events), fn(os.path.join(d, name), events)))
        work.drop(d)
    return median_rate(runs)


# -- reading back ------------------------------------------------------------------------


def frame_payloads(log: str) -> list[bytes]:
    """The payload of every frame of ``log``, as the writer grouped them."""
    with open(log, "rb") as f:
        data = f.read()
    return [data[fr.offset + FRAME_HEAD_SIZE : fr.end - TRAILER_SIZE] for fr in iter_frames(log)]


def measure_replay(log: str, n: int, repeat: int) -> tuple[float, float, int]:
    payloads = frame_payloads(log)
    assert sum(len(decode_many(p)) for p in payloads) == n

    def replay() -> int:
        count = 0
        for _ in iter_events(log):
            count += 1
        return count

    def decode_all() -> int:
        count = 0
        for p in payloads:
            count += len(decode_many(p))
        return count

    replay()  # same page-cache state for both: warm
    replays, decodes = [], []
    for _ in range(repeat):
        dt, count = timed(replay)
        assert count == n, count
        replays.append((n, dt))
        dt, count = timed(decode_all)
        assert count == n, count
        decodes.append((n, dt))
    return median_rate(replays), median_rate(decodes), len(payloads)


# -- main --------------------------------------------------------------------------------


def r(x: float, digits: int = 1) -> float:
    return round(x, digits)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=50_000, help="events appended per ledger run")
    p.add_argument("--producers", type=int, default=16, help="concurrent producers")
    p.add_argument("--baseline-events", type=int, default=3_000, help="cap for the per-event-sync baselines")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement (median reported)")
    p.add_argument("--sweep", action="store_true", help=f"events_per_s for producers in {SWEEP_PRODUCERS}")
    p.add_argument("--dir", default=None, help="where to create the temporary directory")
    args = p.parse_args(argv)
    if args.events < 1 or args.producers < 1 or args.repeat < 1 or args.baseline_events < 1:
        p.error("--events, --producers, --repeat and --baseline-events must be positive")

    parent = args.dir or os.path.dirname(REPO)  # same filesystem as the repository
    root = tempfile.mkdtemp(prefix="ledger-bench-", dir=parent)
    work = Workdir(root)
    t_start = time.perf_counter()
    try:
        events = make_events(args.events)
        base_n = min(args.events, args.baseline_events)
        base_events = events[:base_n]
        out: dict[str, object] = {
            "events": args.events,
            "producers": args.producers,
            "repeat": args.repeat,
            "python": sys.version.split()[0],
            "msgspec": msgspec.__version__,
            "event_bytes": len(encode(events[0])),
            "request_json_bytes": len(json.dumps(events[0].request)),
        }
        fsync_rate = measure_baseline(work, fdatasync_each, "naive.msgpack", base_events, args.repeat)

        if args.sweep:
            # few producers means about one fdatasync per event: fewer events keep it short
            sweep, groups, counts = {}, {}, {}
            for producers in SWEEP_PRODUCERS:
                n = min(args.events, SWEEP_EVENTS_PER_PRODUCER * producers)
                rate, group, _ = measure_ledger(work, events[:n], producers, args.repeat, "async")
                key = str(producers)
                sweep[key], groups[key], counts[key] = r(rate), r(group, 2), n
            out.update(
                sweep_events_per_s=sweep,
                sweep_mean_group_size=groups,
                sweep_events=counts,
                fdatasync_each_per_s=r(fsync_rate),
                fdatasync_each_events=base_n,
                sweep_vs_fdatasync_each={k: r(v / fsync_rate, 2) for k, v in sweep.items()},
            )
        else:
            rate, group, log = measure_ledger(work, events, args.producers, args.repeat, "async", keep=True)
            rate_t, group_t, _ = measure_ledger(work, events, args.producers, args.repeat, "threads")
            sqlite_rate = measure_baseline(work, sqlite_wal_full, "naive.sqlite", base_events, args.repeat)
            jsonl_n = min(args.events, 10 * args.baseline_events)
            jsonl_rate = measure_baseline(work, jsonl_flush, "naive.jsonl", events[:jsonl_n], args.repeat)
            assert log is not None
            replay_rate, decode_rate, frames = measure_replay(log, args.events, args.repeat)
            out.update(
                events_per_s=r(rate),
                events_per_s_threads=r(rate_t),
                mean_group_size=r(group, 2),
                mean_group_size_threads=r(group_t, 2),
                fdatasync_each_per_s=r(fsync_rate),
                fdatasync_each_events=base_n,
                sqlite_wal_full_per_s=r(sqlite_rate),
                sqlite_wal_full_events=base_n,
                sqlite_version=sqlite3.sqlite_version,
                jsonl_flush_per_s=r(jsonl_rate),
                jsonl_flush_events=jsonl_n,
                replay_events_per_s=r(replay_rate),
                msgspec_decode_per_s=r(decode_rate),
                replay_frames=frames,
                vs_fdatasync_each=r(rate / fsync_rate, 2),
                vs_sqlite_wal_full=r(rate / sqlite_rate, 2),
                threads_vs_fdatasync_each=r(rate_t / fsync_rate, 2),
                replay_vs_decode=r(replay_rate / decode_rate, 3),
                targets_met={
                    "events_per_s_ge_10x_fdatasync_each": rate >= 10 * fsync_rate,
                    "events_per_s_ge_10x_sqlite_wal_full": rate >= 10 * sqlite_rate,
                    "replay_ge_0_5x_decode": replay_rate >= 0.5 * decode_rate,
                },
            )
        out["wall_s"] = r(time.perf_counter() - t_start, 2)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
