"""100,000 requests through the simulator's Batch API (`ledger run --batch`): how many batches
were created, how many requests were billed, and the wall time of the ledger's own work --
the split (building the requests, cutting the files, the ``started`` + ``batch_planned``
events made durable), the upload, and the ingestion of the results (download, decode, the
``response`` + ``parsed`` events made durable) -- per 10,000 requests. Printed as JSON.


The simulator runs in its own process (a ``Simulator``, batches done at their first poll), so its work is not
counted; the session runs in this process, as `ledger run` would. Phases of two chunks can
overlap (their tasks share the event loop), so ``seconds`` sums each phase's spans; the
session's whole wall time is given too, and its CPU time (all threads of this process: the
figure to trust on a loaded machine, where waiting for the disk and the CPU inflates the rest). Usage::

    python bench/batch.py [--requests 100000] [--chunk 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

SIM = r"""
import sys
from llm_ledger.runners.simulator import SimConfig, Simulator
sim = Simulator(SimConfig(batch_window=3600)).start()
print(sim.base_url, flush=True)
sys.stdin.read()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=50_000, help="requests per batch file (OpenAI's limit: 50,000)")
    args = parser.parse_args()

    from llm_ledger.runners.config import RunConfig
    from llm_ledger.runners.prepare import prepare
    from llm_ledger.runners.session import run_prepared

    sim = subprocess.Popen([sys.executable, "-c", SIM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = sim.stdout.readline().strip()  # type: ignore[union-attr]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dataset = os.path.join(tmp, "d.jsonl")
            with open(dataset, "w") as f:
                for i in range(args.requests):
                    f.write(json.dumps({"id": f"q{i}", "prompt": f"Question {i}: which letter? answer: {'ABCD'[i % 4]}",
                                        "expected": "ABCD"[i % 4]}) + "\n")
            config = RunConfig(model="sim-1", base_url=url, base_urls=[url], runner="batch", parser="choice",
                               batch_max_requests=args.chunk)
            prepared = prepare(dataset, config, os.path.join(tmp, "runs"), "bench")
            began, cpu = time.perf_counter(), time.process_time()
            session, reason = run_prepared(prepared)
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
            with urllib.request.urlopen(url + "/_sim/batch_records") as reply:
                books = [b for b in json.loads(reply.read())["batches"] if b["metadata"].get("ledger_run", "").rsplit(".", 1)[0] == "bench"]
            with open(prepared.paths.summary) as f:
                summary = json.load(f)
    finally:
        sim.stdin.close()  # type: ignore[union-attr]
        sim.wait(30)
    timings = session.runner.timings  # type: ignore[union-attr]
    per = 10_000 / args.requests
    billed = [c for b in books for c in b["billed"]]
    print(json.dumps({
        "requests": args.requests, "reason": reason, "done": summary["counts"]["done"],
        "batches_created": len(books), "requests_billed": len(billed), "billed_twice": len(billed) - len(set(billed)),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "seconds_per_10k": {k: round(v * per, 3) for k, v in timings.items()} | {"total": round(sum(timings.values()) * per, 3)},
        "session_wall_seconds": round(wall, 2),
        "session_cpu_seconds_per_10k": round(cpu * per, 3),  # every thread of this process: steadier on a busy machine
    }, indent=2))


if __name__ == "__main__":
    main()
