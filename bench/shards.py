"""Throughput of 1, 2 and 4 local shards, and the cost of `ledger merge` per million events.

The endpoint must not be the bottleneck, so each shard answers itself: ``--transport
simulator`` (the built-in simulator in the shard's own process, no socket), zero latency.
What is measured is then ledger's own cost per item: each shard a process with its own
event loop, writer thread (one fdatasync per commit group), index and projector.

* ``items_per_s``: items over the whole command (start-up of the processes, the run, the
  merge, the summary), as a user waits for it; ``sending_per_s``: the merged summary's
  throughput (items over the sessions' sending time), the steady rate;
* ``speedup``: each against 1 shard, in the same run (ratios only: absolute figures depend
  on the machine). This machine has 2 cores, shared: beyond 2 shards the processes only
  take turns, so 4 shards cannot beat 2 here; on a many-core machine each shard adds about
  one core's worth of events per second until the disk's fsyncs or the endpoint saturate.
* ``merge``: `ledger merge` of the largest run, in this process: the k-way merge by
  timestamp plus writing the merged log (``kway_write_s``), and everything (checks, log,
  index, every projection folded again: ``total_s``), each also per million events.

    python bench/shards.py [--items 4000] [--shards 1 2 4] [--concurrency 64] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from llm_ledger.ledger.layout import RunPaths
from llm_ledger.projections.merge import check_shards, merge, merged_events, top_started
from llm_ledger.projections.merge_log import write_log


def _dataset(path: str, items: int) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(items):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"What is item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n")
    return path


def _run(dataset: str, runs: str, shards: int, concurrency: int) -> dict:
    run_id = f"s{shards}"
    cmd = [sys.executable, "-m", "llm_ledger.cli", "run", dataset, "--run-id", run_id, "--runs-dir", runs,
           "--transport", "simulator", "--concurrency", str(concurrency)]
    if shards > 1:
        cmd += ["--shards", str(shards)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"shards={shards}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    with open(os.path.join(runs, run_id, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    items = summary["counts"]["done"]
    return {"shards": shards, "items": items, "wall_s": round(wall, 3), "items_per_s": round(items / wall, 1),
            "sending_per_s": summary["throughput_per_s"]}


def _merge_cost(runs: str, shards: int) -> dict:
    paths = RunPaths(os.path.join(runs, f"s{shards}"))
    top = top_started(paths)
    start = time.perf_counter()
    events = write_log(os.path.join(runs, "kway.log"), merged_events(top, check_shards(paths, top)))
    kway = time.perf_counter() - start
    start = time.perf_counter()
    merge(paths)
    total = time.perf_counter() - start
    per_million = 1e6 / events
    return {"shards": shards, "events": events, "kway_write_s": round(kway, 3), "total_s": round(total, 3),
            "kway_write_s_per_million_events": round(kway * per_million, 2),
            "total_s_per_million_events": round(total * per_million, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where the runs go (default: a temp dir, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        dataset = _dataset(os.path.join(tmp, "qa.jsonl"), args.items)
        runs = os.path.join(tmp, "runs")
        results = [_run(dataset, runs, n, args.concurrency) for n in args.shards]
        base = results[0]
        for r in results:
            r["speedup_items_per_s"] = round(r["items_per_s"] / base["items_per_s"], 2)
            r["speedup_sending_per_s"] = round(r["sending_per_s"] / base["sending_per_s"], 2) if base["sending_per_s"] else None
        largest = max(n for n in args.shards)
        report = {"cpus": os.cpu_count(), "items": args.items, "concurrency": args.concurrency, "runs": results,
                  "merge": _merge_cost(runs, largest) if largest > 1 else None}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
