"""Throughput of an experiment against the throughput of one run, on the same endpoint.

An experiment of ``--arms`` arms x ``--items`` items (one provider: the simulator in its own
process, ``--concurrency`` requests at once shared by the arms) against a single run of
arms x items items at the same concurrency: items finished per second, wall time from
opening the runs to closing them (every event durable, every projection written). Target
(issue 20): experiment / single >= 0.9 (the arms share the machine without waste). Medians
of ``--repeat`` rounds, the two interleaved in each round; one JSON object on stdout.

    python bench/experiment.py [--arms 4] [--items 2000] [--concurrency 32] [--repeat 3] [--latency 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from simproc import free_port, start_simulator  # noqa: E402

from llm_ledger.runners.config import RunConfig  # noqa: E402
from llm_ledger.runners.experiment import prepare_experiment, run_arms  # noqa: E402
from llm_ledger.runners.experiment_config import load_experiment  # noqa: E402
from llm_ledger.runners.prepare import prepare  # noqa: E402
from llm_ledger.runners.session import run_prepared  # noqa: E402


def write_dataset(path: str, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"Question {i}. answer: {'ABCD'[i % 4]}",
                                "expected": "ABCD"[i % 4]}) + "\n")


def single(url: str, dataset: str, runs: str, run_id: str, concurrency: int) -> float:
    config = RunConfig(model="sim-1", base_url=url, base_urls=[url], concurrency=concurrency,
                       parser=r"regex:answer is (\S+)")
    prepared = prepare(dataset, config, runs, run_id, typed=None)
    start = time.perf_counter()
    _, reason = run_prepared(prepared)
    assert reason == "completed", reason
    return time.perf_counter() - start


def experiment(url: str, toml: str, runs: str) -> float:
    arms = prepare_experiment(load_experiment(toml), runs)
    start = time.perf_counter()
    results = run_arms(arms)
    assert all(r.reason == "completed" and r.error is None for r in results), results
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arms", type=int, default=4)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ledger-bench-exp-")
    port = free_port()
    sim = start_simulator(port, "--latency", str(args.latency))
    url = f"http://127.0.0.1:{port}/v1"
    try:
        total = args.arms * args.items
        write_dataset(os.path.join(tmp, "all.jsonl"), total)
        write_dataset(os.path.join(tmp, "part.jsonl"), args.items)
        single_s, exp_s = [], []
        for r in range(args.repeat):
            toml = os.path.join(tmp, f"exp{r}.toml")
            arms = "".join(f'\n[[arms]]\nname = "arm{a}"\nmodel = "sim-1"\n' for a in range(args.arms))
            with open(toml, "w") as f:
                f.write(f'name = "exp{r}"\ndataset = "part.jsonl"\nparser = \'regex:answer is (\\S+)\'\n'
                        f'[providers.sim]\nbase_url = "{url}"\nconcurrency = {args.concurrency}\n{arms}')
            single_s.append(single(url, os.path.join(tmp, "all.jsonl"), os.path.join(tmp, "runs"), f"single{r}",
                                   args.concurrency))
            exp_s.append(experiment(url, toml, os.path.join(tmp, "runs")))
        s, e = statistics.median(single_s), statistics.median(exp_s)
        print(json.dumps({
            "arms": args.arms, "items_per_arm": args.items, "concurrency": args.concurrency, "latency_s": args.latency,
            "single_items_per_s": round(total / s, 1), "experiment_items_per_s": round(total / e, 1),
            "ratio": round(s / e, 3), "target": 0.9, "single_wall_s": [round(x, 3) for x in single_s],
            "experiment_wall_s": [round(x, 3) for x in exp_s],
        }))
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
