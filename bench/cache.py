"""The cross-run cache's costs, measured in one run (issue 17), printed as JSON.

* ``lookup_miss_us``: CPU per request of looking a request up and not finding it -- the
  canonical JSON, the SHA-256 and one LMDB read in a store of ``--items`` entries: what every
  request that is then sent pays on top of the transport;
* ``lookup_hit_us``: CPU per request of a hit -- the same, plus reading the reply's frame from
  its run's log and decoding the reply (it replaces the transport altogether): hits in the
  order they were logged (a rerun), and ``..._scattered_us`` each from another frame;
* ``transport_us``: CPU per request of the HTTP transport (runners/http_transport.py)
  sending the same kind of request to the built-in simulator (its own process) in a bare
  loop at ``--concurrency``, measured in the same run;
* ``miss_vs_transport``: the ratio of the first to the third (target: below 0.05);
* ``rebuild_responses_per_s`` (wall) and ``..._per_cpu_s``: the store rebuilt from nothing (deleted) out of a run whose
  log holds ``--items`` responses (a request, a reply and a parse each, a 429 retry every
  20th), i.e. the cost of a missing or damaged store.

    python bench/cache.py [--items 1000000] [--requests 3000] [--concurrency 32] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time

from llm_ledger.ledger.cache_store import CacheStore, store_path
from llm_ledger.runners.cache import KEYER, Cache
from llm_ledger.runners.http_transport import HttpTransport
from llm_ledger.runners.transport import TransportSpec
from simproc import free_port, start_simulator


def body(i: int) -> dict:
    return {"model": "sim-1", "messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}? answer: {2 * i}"}],
            "temperature": 0.0}


def build(run_dir: str, items: int) -> None:
    """A finished run's log with ``items`` responses, in commit groups of 256 events (~64 items:
    what a run at concurrency 32-64 writes; a hit decodes the group its reply is in)."""
    from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started, Usage
    from llm_ledger.ledger.writer import LogWriter

    os.makedirs(run_dir, exist_ok=True)
    writer = LogWriter.open(os.path.join(run_dir, "events.log"))
    writer.append(RunStarted(run_id="bench", config={"model": "sim-1", "samples": 1, "base_url": "", "simulator": {}},
                             dataset="synthetic", items=items))
    writer.append(SessionStarted(pid=os.getpid()))
    batch: list = []
    usage = Usage(prompt_tokens=17, completion_tokens=5, total_tokens=22)
    for i in range(items):
        key = {"item_id": str(i), "sample": 0, "turn": 0}
        request = body(i)
        batch.append(Started(**key, attempt=1, request=request, expected=str(2 * i)))
        if i % 20 == 0:
            batch.append(Failed(**key, attempt=1, error_type="rate_limit", message="rate limited", status=429, retryable=True))
            batch.append(Started(**key, attempt=2, request=request, expected=str(2 * i)))
        text = f"The answer is {2 * i}"
        raw = {"id": f"c{i}", "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                           "finish_reason": "stop"}], "usage": {"prompt_tokens": 17, "completion_tokens": 5}}
        batch.append(Response(**key, text=text, finish_reason="stop", usage=usage, latency=0.1, raw=raw))
        batch.append(Parsed(**key, parser="regex:answer is (.+)$", value=str(2 * i)))
        if len(batch) >= 256:
            writer.append_many(batch)
            batch = []
    if batch:
        writer.append_many(batch)
    writer.append(SessionEnded(reason="completed"))
    writer.close()


def cpu_us(fn, n: int) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e6 / n


async def transport_loop(base_url: str, n: int, concurrency: int) -> None:
    transport = HttpTransport(TransportSpec(base_url, "EMPTY", (), 60.0, concurrency, {}))
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            await transport.send(body(i), f"{i}/0/0", 60.0)

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await transport.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000, help="responses in the logged run (store entries)")
    ap.add_argument("--requests", type=int, default=3000, help="requests timed per figure")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-cache-", dir=args.dir)
    port = free_port()
    sim = start_simulator(port)
    try:
        runs = os.path.join(tmp, "runs")
        start = time.perf_counter()
        build(os.path.join(runs, "bench"), args.items)
        built = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        store = CacheStore.open(runs, KEYER)  # no store yet: rebuilt from the log
        rebuild, rebuild_cpu = time.perf_counter() - start, time.process_time() - cpu
        entries = store.count()
        cache = Cache(store, KEYER.identity({"base_url": "", "simulator": {}}), store.walk_for("probe"))
        n = min(args.requests, args.items)
        scattered = [body(i) for i in range(0, args.items, max(1, args.items // n))][:n]  # each in another frame
        in_order = [body(args.items // 2 + i) for i in range(n)]  # a rerun: hits in the order they were logged
        bodies_miss = [body(args.items + i) for i in range(n)]
        miss = cpu_us(lambda: [cache.lookup(b, 0) for b in bodies_miss], n)
        hits: list = []
        hit = cpu_us(lambda: hits.extend(cache.lookup(b, 0) for b in in_order), n)
        hit_scattered = cpu_us(lambda: hits.extend(cache.lookup(b, 0) for b in scattered), n)
        assert all(h is not None for h in hits) and cache.misses == n, (cache.hits, cache.misses)
        transport = cpu_us(lambda: asyncio.run(transport_loop(f"http://127.0.0.1:{port}/v1", n, args.concurrency)), n)
        store.close()
        print(json.dumps({
            "items": args.items, "requests": n, "concurrency": args.concurrency, "store_entries": entries,
            "store_bytes": os.path.getsize(store_path(runs)),
            "lookup_miss_us": round(miss, 2), "lookup_hit_us": round(hit, 2), "lookup_hit_scattered_us": round(hit_scattered, 2),
            "transport_us": round(transport, 2),
            "miss_vs_transport": round(miss / transport, 4), "hit_vs_transport": round(hit / transport, 4),
            "target_miss_lt_5pct": miss / transport < 0.05,
            "rebuild_s": round(rebuild, 2), "rebuild_responses_per_s": round(args.items / rebuild),
            "rebuild_cpu_s": round(rebuild_cpu, 2), "rebuild_responses_per_cpu_s": round(args.items / rebuild_cpu),
            "log_bytes": os.path.getsize(os.path.join(runs, "bench", "events.log")), "log_build_s": round(built, 1),
        }, indent=2))
    finally:
        sim.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
