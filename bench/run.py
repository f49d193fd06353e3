"""Throughput of `ledger run` against the simulator, compared in the same run with:

* ``bare``: AsyncOpenAI + a semaphore, results kept in memory (what a quick script does);
* ``naive``: the same loop writing progressively: json.dumps + write + flush of each result
  to a JSONL file and one JSON file per conversation (not durable, no resume).

The simulator runs in a separate process (`ledger simulate`), zero latency, so the figures
measure client-side overhead; each contender is measured ``--repeat`` times (median).
``--rss-items N`` also runs `ledger run` as a subprocess on an N-item dataset and reports
its peak RSS (target: under 300 MB for 200,000 items).

    python bench/run.py [--items 3000] [--concurrency 32 256] [--rss-items 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import openai

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runners.client import make_client  # noqa: E402
from runners.config import RunConfig  # noqa: E402
from runners.session import Session, prepare  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "cli", "simulate", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("simulator did not start")


def write_dataset(path: str, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "prompt": f"Question {i}: what is {i} + {i}?", "expected": str(2 * i)}) + "\n")


def prompts(n: int) -> list[str]:
    return [f"Question {i}: what is {i} + {i}?" for i in range(n)]


async def bare(base_url: str, n: int, concurrency: int, sink: str | None = None) -> float:
    client = make_client(base_url, "EMPTY", 60, concurrency)
    slots = asyncio.Semaphore(concurrency)
    results: list = []
    out = open(os.path.join(sink, "responses.jsonl"), "w") if sink else None

    async def one(i: int, prompt: str) -> None:
        async with slots:
            reply = await client.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": prompt}])
            text = reply.choices[0].message.content
            if out is None:
                results.append(text)
                return
            row = {"id": i, "prompt": prompt, "response": text, "usage": reply.usage.model_dump()}
            out.write(json.dumps(row) + "\n")
            out.flush()
            with open(os.path.join(sink, f"q{i}.json"), "w") as f:
                json.dump({**row, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]}, f)

    start = time.perf_counter()
    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts(n))))
    elapsed = time.perf_counter() - start
    await client.close()
    if out:
        out.close()
    return n / elapsed


def ledger_rate(base_url: str, dataset: str, n: int, concurrency: int, runs_dir: str) -> float:
    config = RunConfig(model="sim-1", base_url=base_url, concurrency=concurrency, parser="text")
    prepared = prepare(dataset, config, runs_dir, None)
    session = Session(prepared)
    session.begin()
    works = session.plan()
    start = time.perf_counter()
    reason = session.execute(works)
    session.close(reason)  # every event durable and projections written: part of the cost
    return n / (time.perf_counter() - start)


def peak_rss_mb(base_url: str, n: int, tmp: str) -> dict:
    dataset = os.path.join(tmp, "rss.jsonl")
    write_dataset(dataset, n)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli", "run", dataset, "--base-url", base_url, "--model", "sim-1",
                           "--concurrency", "64", "--runs-dir", os.path.join(tmp, "rss-runs")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rss_items": n, "rss_exit": proc.returncode, "peak_rss_mb": round(rss_kb / 1024, 1),
            "rss_run_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss-items", type=int, default=0)
    args = ap.parse_args()
    port = free_port()
    sim = start_simulator(port)
    base_url = f"http://127.0.0.1:{port}/v1"
    result: dict = {"items": args.items, "repeat": args.repeat, "python": sys.version.split()[0], "openai": openai.__version__}
    try:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(__file__))) as tmp:
            dataset = os.path.join(tmp, "data.jsonl")
            write_dataset(dataset, args.items)
            for c in args.concurrency:
                figures: dict[str, list[float]] = {"ledger": [], "bare": [], "naive": []}
                for r in range(args.repeat):
                    figures["bare"].append(asyncio.run(bare(base_url, args.items, c)))
                    sink = tempfile.mkdtemp(dir=tmp)
                    figures["naive"].append(asyncio.run(bare(base_url, args.items, c, sink)))
                    figures["ledger"].append(ledger_rate(base_url, dataset, args.items, c, os.path.join(tmp, f"runs{c}-{r}")))
                med = {k: round(statistics.median(v), 1) for k, v in figures.items()}
                result[f"c{c}"] = {
                    "ledger_per_s": med["ledger"], "bare_per_s": med["bare"], "naive_per_s": med["naive"],
                    "ledger_vs_bare": round(med["ledger"] / med["bare"], 3),
                    "ledger_vs_naive": round(med["ledger"] / med["naive"], 3),
                    "target_ledger_ge_0_85_bare": med["ledger"] >= 0.85 * med["bare"],
                }
            if args.rss_items:
                result.update(peak_rss_mb(base_url, args.rss_items, tmp))
                result["target_rss_lt_300mb"] = result["peak_rss_mb"] < 300
    finally:
        sim.terminate()
        sim.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
