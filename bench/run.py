"""Throughput of `ledger run` against the simulator, compared in the same run, on the same
endpoint (the built-in simulator, starlette on uvicorn, in its own process, zero latency)
and the same items, with:

* ``sdk``: the bare SDK loop a quick script is: ``AsyncOpenAI().chat.completions.create``
  under a semaphore, results kept in memory (no retries, nothing written);
* ``aiohttp``: a plain aiohttp ``ClientSession.post`` + msgspec decode loop, the ceiling of
  a Python client on one core (nothing written, nothing checked).

``ledger`` is a whole run: every event durable (fdatasync'd group commits), the index and
every projection live, closed at the end (the figure includes writing the projections).
Targets (issue 14): ledger >= 2.5x sdk at every concurrency, and >= 0.5x aiohttp.

CPU milliseconds per item, by part: ``writer`` is that thread's own CPU time; ``projector``
is the rest of the process besides the event loop and the writer (the projector thread and
the threads creating its conversation files); ``transport`` is the CPU per item of the same transport (runners/http_transport.py)
sending the same requests in a bare loop, measured in the same run; ``rest`` is the event
loop thread's CPU in the run minus ``transport`` (the engine, events, retries and limits).
The figures are medians of ``--repeat`` rounds, the contenders interleaved in each round.

``--rss-items N`` also runs `ledger run` as a subprocess on an N-item dataset and reports
its peak RSS (target: under 300 MB for 200,000 items).

    python bench/run.py [--items 3000] [--concurrency 32 256] [--repeat 3] [--rss-items 200000] [--limits] [--dir DIR]

``--limits`` adds: against a simulator answering 20% of requests with 429, completed
requests per second of ``ledger`` vs a tenacity-only loop at the same concurrency (target
>= 1.0 with fewer requests wasted), and the request rate ``--rpm R`` produces, measured at
the simulator (target: within 5% of R; the busiest window never above the allowance).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import msgspec
import openai

from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.http_transport import HttpTransport
from llm_ledger.runners.openai_transport import make_client
from llm_ledger.runners.prepare import prepare
from llm_ledger.runners.session import run_prepared
from llm_ledger.runners.transport import TransportSpec
from simproc import free_port, start_simulator


def write_dataset(path: str, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "prompt": f"Question {i}: what is {i} + {i}?", "expected": str(2 * i)}) + "\n")


def prompts(n: int) -> list[str]:
    return [f"Question {i}: what is {i} + {i}?" for i in range(n)]


def body(prompt: str) -> dict:
    return {"model": "sim-1", "messages": [{"role": "user", "content": prompt}]}


async def gather_limited(n: int, concurrency: int, one) -> float:
    """Items per second of ``one(prompt)`` over ``n`` prompts, ``concurrency`` at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def limited(prompt: str) -> None:
        async with slots:
            await one(prompt)

    start = time.perf_counter()
    await asyncio.gather(*(limited(p) for p in prompts(n)))
    return n / (time.perf_counter() - start)


async def sdk_loop(base_url: str, n: int, concurrency: int) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=120.0)
    results: list = []

    async def one(prompt: str) -> None:
        reply = await client.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": prompt}])
        results.append(reply.choices[0].message.content)

    try:
        return await gather_limited(n, concurrency, one)
    finally:
        await client.close()


async def aiohttp_loop(base_url: str, n: int, concurrency: int) -> float:
    url = base_url + "/chat/completions"
    headers = {"Authorization": "Bearer EMPTY", "Content-Type": "application/json"}
    results: list = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(prompt: str) -> None:
            async with session.post(url, data=msgspec.json.encode(body(prompt)), headers=headers) as response:
                results.append(msgspec.json.decode(await response.read())["choices"][0]["message"]["content"])

        return await gather_limited(n, concurrency, one)


async def transport_loop(base_url: str, n: int, concurrency: int) -> float:
    """ledger's transport alone, in a bare loop: its CPU per item is the run's transport part."""
    transport = HttpTransport(TransportSpec(base_url, "EMPTY", (), 60.0, concurrency, {}))

    async def one(prompt: str) -> None:
        await transport.send(body(prompt), "k/0/0", 60.0)

    try:
        return await gather_limited(n, concurrency, one)
    finally:
        await transport.close()


def cpu_per_item(fn, n: int) -> tuple[float, float]:
    """(result, CPU ms per item of this process) of ``fn()``."""
    start = time.process_time()
    result = fn()
    return result, (time.process_time() - start) * 1000 / n


def ledger_run(base_url: str, dataset: str, n: int, concurrency: int, runs_dir: str, **options) -> dict:
    """One whole run; its rate and the CPU ms per item of the event loop, writer, projector."""
    config = RunConfig(model="sim-1", base_url=base_url, concurrency=concurrency, parser="text", **options)
    prepared = prepare(dataset, config, runs_dir, None)
    cpu, process, start = time.thread_time(), time.process_time(), time.perf_counter()
    session, reason = run_prepared(prepared)  # includes closing: every event durable, projections written
    elapsed, loop_cpu, all_cpu = time.perf_counter() - start, time.thread_time() - cpu, time.process_time() - process
    assert reason == "completed", reason
    # the projector's part is all the rest of the process: its thread and the threads that
    # create its conversation files
    return {"rate": n / elapsed, "loop": loop_cpu * 1000 / n, "writer": session.writer.cpu_seconds * 1000 / n,
            "projector": (all_cpu - loop_cpu - session.writer.cpu_seconds) * 1000 / n}


def ledger_rate(base_url: str, dataset: str, n: int, concurrency: int, runs_dir: str, **options) -> float:
    return ledger_run(base_url, dataset, n, concurrency, runs_dir, **options)["rate"]


async def tenacity_only(base_url: str, n: int, concurrency: int) -> tuple[float, int]:
    """A careful script: semaphore + tenacity exponential backoff with jitter on 429/5xx,
    Retry-After ignored (most scripts do). Returns (completed per s, requests sent)."""
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

    client = make_client(base_url, "EMPTY", 60, concurrency)
    slots = asyncio.Semaphore(concurrency)
    sent = 0

    async def one(prompt: str) -> None:
        nonlocal sent
        async with slots:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(12), reraise=True,
                                               wait=wait_random_exponential(multiplier=0.05, max=5),
                                               retry=retry_if_exception_type((openai.RateLimitError, openai.InternalServerError))):
                with attempt:
                    sent += 1
                    await client.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": prompt}])

    start = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts(n)))
    elapsed = time.perf_counter() - start
    await client.close()
    return n / elapsed, sent


def sent_requests(request_log: str) -> int:
    with open(request_log) as f:
        return sum(1 for _ in f)


def rate_limited(tmp: str, items: int, concurrency: int, capacity: float) -> dict:
    """Against a simulator with a real capacity (a token bucket: over it, 429 with an honest
    Retry-After), set so that the tenacity loop gets about 20% 429s."""
    port = free_port()
    log = os.path.join(tmp, "requests-429.jsonl")
    sim = start_simulator(port, "--capacity", str(capacity), "--request-log", log)
    base_url = f"http://127.0.0.1:{port}/v1"
    dataset = os.path.join(tmp, "data429.jsonl")
    write_dataset(dataset, items)
    try:
        loop_rate, loop_sent = asyncio.run(tenacity_only(base_url, items, concurrency))
        before = sent_requests(log)
        ledger = ledger_rate(base_url, dataset, items, concurrency, os.path.join(tmp, "runs429"), retries=12)
        ledger_sent = sent_requests(log) - before
    finally:
        sim.terminate()
        sim.wait()
    with open(log) as f:
        outcomes = [json.loads(line)["outcome"] for line in f]
    loop_429 = sum(o != "ok" for o in outcomes[:loop_sent]) / max(1, loop_sent)
    ledger_429 = sum(o != "ok" for o in outcomes[loop_sent:]) / max(1, ledger_sent)
    return {"capacity_rps": capacity, "tenacity_loop_429_share": round(loop_429, 3), "ledger_429_share": round(ledger_429, 3),
            "items": items, "concurrency": concurrency, "ledger_per_s": round(ledger, 1), "tenacity_loop_per_s": round(loop_rate, 1),
            "ledger_vs_tenacity_loop": round(ledger / loop_rate, 3), "ledger_requests": ledger_sent,
            "tenacity_loop_requests": loop_sent, "target_ge_1_0_and_fewer_wasted": ledger >= loop_rate and ledger_sent <= loop_sent}


def rpm_limited(tmp: str, rpm: int, items: int) -> dict:
    """The request rate `--rpm R` actually produces, measured at the simulator."""
    port = free_port()
    log = os.path.join(tmp, "requests-rpm.jsonl")
    sim = start_simulator(port, "--request-log", log)
    dataset = os.path.join(tmp, "data-rpm.jsonl")
    write_dataset(dataset, items)
    try:
        ledger_rate(f"http://127.0.0.1:{port}/v1", dataset, items, 16, os.path.join(tmp, "runs-rpm"), rpm=rpm)
    finally:
        sim.terminate()
        sim.wait()
    with open(log) as f:
        times = sorted(json.loads(line)["t"] for line in f)
    span = times[-1] - times[0]
    measured = (len(times) - 1) / span * 60 if span > 0 else 0.0
    window = 60.0 * 10 / rpm  # the time R/6 requests may take: the busiest such window
    busiest = max(sum(1 for u in times[i:] if u - t < window) for i, t in enumerate(times))
    return {"rpm": rpm, "requests": len(times), "measured_rpm": round(measured, 1),
            "within_5pct": abs(measured - rpm) <= 0.05 * rpm, "busiest_window_requests": busiest,
            "window_allowance": 10, "never_above": busiest <= 10 + 1}


def peak_rss_mb(base_url: str, n: int, tmp: str) -> dict:
    dataset = os.path.join(tmp, "rss.jsonl")
    write_dataset(dataset, n)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llm_ledger.cli", "run", dataset, "--base-url", base_url, "--model", "sim-1",
                           "--concurrency", "64", "--runs-dir", os.path.join(tmp, "rss-runs")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rss_items": n, "rss_exit": proc.returncode, "peak_rss_mb": round(rss_kb / 1024, 1),
            "rss_run_s": round(time.perf_counter() - start, 1)}


def throughput(base_url: str, dataset: str, n: int, c: int, repeat: int, tmp: str) -> dict:
    """The contenders interleaved ``repeat`` times; medians."""
    got: dict[str, list[float]] = {}
    for r in range(repeat):
        rates = {"sdk": asyncio.run(sdk_loop(base_url, n, c)), "aiohttp": asyncio.run(aiohttp_loop(base_url, n, c))}
        rates["transport_loop"], transport_cpu = cpu_per_item(lambda: asyncio.run(transport_loop(base_url, n, c)), n)
        run = ledger_run(base_url, dataset, n, c, os.path.join(tmp, f"runs{c}-{r}"))
        parts = {"cpu_ms_transport": transport_cpu, "cpu_ms_rest": run["loop"] - transport_cpu,
                 "cpu_ms_writer": run["writer"], "cpu_ms_projector": run["projector"]}
        for name, value in {**rates, "ledger": run["rate"], **parts}.items():
            got.setdefault(name, []).append(value)
    med = {k: statistics.median(v) for k, v in got.items()}
    return {
        "ledger_per_s": round(med["ledger"], 1), "sdk_per_s": round(med["sdk"], 1), "aiohttp_per_s": round(med["aiohttp"], 1),
        "ledger_vs_sdk": round(med["ledger"] / med["sdk"], 2), "ledger_vs_aiohttp": round(med["ledger"] / med["aiohttp"], 2),
        "target_ge_2_5x_sdk": med["ledger"] >= 2.5 * med["sdk"], "target_ge_0_5x_aiohttp": med["ledger"] >= 0.5 * med["aiohttp"],
        **{k: round(med[k], 3) for k in ("cpu_ms_transport", "cpu_ms_rest", "cpu_ms_writer", "cpu_ms_projector")},
        "rounds": {k: [round(x, 1) for x in v] for k, v in got.items() if not k.startswith("cpu")},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss-items", type=int, default=0)
    ap.add_argument("--limits", action="store_true", help="also: 20%% 429s vs a tenacity loop, and --rpm accuracy")
    ap.add_argument("--rpm", type=int, default=1200)
    ap.add_argument("--capacity", type=float, default=150.0, help="simulator capacity (req/s) for the 429 comparison")
    ap.add_argument("--dir", default=None, help="where the runs go (default: the system's "
                    "temporary directory; file creation costs differ a lot between file systems)")
    args = ap.parse_args()
    port = free_port()
    sim = start_simulator(port)
    base_url = f"http://127.0.0.1:{port}/v1"
    result: dict = {"items": args.items, "repeat": args.repeat, "python": sys.version.split()[0], "openai": openai.__version__,
                    "dir": args.dir or tempfile.gettempdir()}
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            dataset = os.path.join(tmp, "data.jsonl")
            write_dataset(dataset, args.items)
            for c in args.concurrency:
                result[f"c{c}"] = throughput(base_url, dataset, args.items, c, args.repeat, tmp)
            if args.limits:
                result["rate_limited"] = rate_limited(tmp, min(args.items, 1000), 32, args.capacity)
                result["rpm_limit"] = rpm_limited(tmp, args.rpm, max(60, args.rpm // 4))
            if args.rss_items:
                result.update(peak_rss_mb(base_url, args.rss_items, tmp))
                result["target_rss_lt_300mb"] = result["peak_rss_mb"] < 300
    finally:
        sim.terminate()
        sim.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
