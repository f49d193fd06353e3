"""Experiments through the CLI: `ledger run eval.toml` against two simulators answering
differently (two providers), three arms (two models, one template variant), run together.

Checked from independent records: each arm's ``responses.jsonl`` (accuracy, Wilson interval,
McNemar p, tokens, cost, parse rate recomputed here) against the table `run` prints and
`compare --experiment --json`; the simulators' own counters (requests, most in flight at
once) against the provider's shared limit and against kill -9 + `ledger resume EXPERIMENT`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.events import Response
from llm_ledger.ledger.reader import iter_events
from llm_ledger.runners.simulator import SimConfig, Simulator
from test_run_e2e import read_jsonl, requests_of, write_jsonl

ITEMS = 40
PRICE_IN, PRICE_OUT = 0.5, 2.0  # USD per million tokens, for every arm
ENV = {"COLUMNS": "200"}


def records(n: int) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"Pick item {i}. answer: {'ABCD'[i % 4]}", "expected": "ABCD"[i % 4]}
            for i in range(n)]


def experiment_toml(name: str, sims: dict[str, Simulator], arms: str, top: str = "") -> str:
    return f"""
name = "{name}"
dataset = "ds.jsonl"
parser = 'regex:answer is (\\S+)'
price_in = {PRICE_IN}
price_out = {PRICE_OUT}
cache = false  # the tests count requests at the simulators: no experiment is served by another's log
{top}
[providers.a]
base_url = "{sims['a'].base_url}"
api_key_env = "EXPERIMENT_TEST_KEY"
concurrency = 3

[providers.b]
base_url = "{sims['b'].base_url}"
concurrency = 8
{arms}"""


THREE_ARMS = """
[[arms]]
name = "llama"
provider = "a"
model = "llama"

[[arms]]
name = "llama-cot"
provider = "a"
model = "llama"
template = "Think step by step. {prompt}"

[[arms]]
name = "qwen"
provider = "b"
model = "qwen"
"""
ARMS_ON = {"a": ["llama", "llama-cot"], "b": ["qwen"]}


def start_lab(root: Path) -> dict[str, Simulator]:
    """Two simulators (in this process: their counters are read directly) answering differently."""
    write_jsonl(root / "ds.jsonl", records(ITEMS))
    sims = {
        "a": Simulator(SimConfig(model="llama", accuracy=0.9, latency=0.02, seed=1, request_log=str(root / "a.jsonl"))),
        "b": Simulator(SimConfig(model="qwen", accuracy=0.55, latency=0.01, seed=2, request_log=str(root / "b.jsonl"))),
    }
    for sim in sims.values():
        sim.start()
    return sims


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    sims = start_lab(root)
    yield root, sims
    for sim in sims.values():
        sim.stop()


@pytest.fixture(scope="module")
def clean(lab):
    """The 3-arm experiment run once to the end."""
    root, sims = lab
    (root / "clean.toml").write_text(experiment_toml("clean", sims, THREE_ARMS))
    result = run_cli("run", "clean.toml", cwd=root, env=ENV)
    return root, result


def _wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.96
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _mcnemar(b: int, c: int) -> float:
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def _independent(root: Path, experiment: str) -> dict[str, dict]:
    """Each arm's figures from its responses.jsonl alone."""
    out = {}
    for arm in ("llama", "llama-cot", "qwen"):
        rows = read_jsonl(root / "runs" / f"{experiment}.{arm}" / "responses.jsonl")
        correct = {r["item_id"]: r["correct"] for r in rows}
        prompt = sum(r["usage"]["prompt_tokens"] for r in rows)
        completion = sum(r["usage"]["completion_tokens"] for r in rows)
        out[arm] = {"n": len(rows), "right": sum(correct.values()), "correct": correct, "prompt": prompt,
                    "completion": completion, "cost": (prompt * PRICE_IN + completion * PRICE_OUT) / 1e6,
                    "parsed": sum(r["parsed"] is not None for r in rows) / len(rows)}
    return out


def test_three_arms_run_together_and_the_table_is_true(clean):
    root, result = clean
    assert result.returncode == 0, result.stderr
    figures = _independent(root, "clean")
    assert {arm: f["n"] for arm, f in figures.items()} == {"llama": ITEMS, "llama-cot": ITEMS, "qwen": ITEMS}
    assert figures["llama"]["right"] != figures["qwen"]["right"]  # the two models answer differently
    # one run per arm, named <experiment>.<arm>, recording the experiment in run_started
    for arm in figures:
        started = next(iter_events(str(root / "runs" / f"clean.{arm}" / "events.log")))
        assert started.config["experiment"]["name"] == "clean" and started.config["experiment"]["arm"] == arm
    best = max(figures, key=lambda a: figures[a]["right"])
    table = json.loads(run_cli("compare", "--experiment", "clean", "--json", cwd=root).stdout)
    assert table["best"] == best
    for row in table["rows"]:
        f = figures[row["arm"]]
        assert row["accuracy"] == pytest.approx(f["right"] / f["n"], abs=1e-6)
        assert row["ci95"] == pytest.approx(_wilson(f["right"], f["n"]), abs=1e-6)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (f["prompt"], f["completion"])
        assert row["cost_usd"] == pytest.approx(f["cost"], abs=1e-6)
        assert row["parse_rate"] == pytest.approx(f["parsed"])
        if row["arm"] == best:
            assert row["p_vs_best"] is None
        else:
            ours, theirs = figures[best]["correct"], f["correct"]
            b = sum(ours[k] and not theirs[k] for k in ours)
            c = sum(theirs[k] and not ours[k] for k in ours)
            assert row["p_vs_best"] == pytest.approx(_mcnemar(b, c), rel=1e-9)
        # ... and the run's own summary says the same
        summary = json.loads((root / "runs" / row["run_id"] / "summary.json").read_text())
        assert (row["accuracy"], row["cost_usd"]) == (summary["accuracy"], summary["cost_usd"])
    # the table printed at the end of the run shows those figures, one row per arm
    for row in table["rows"]:
        line = next(line for line in result.stdout.splitlines() if line.split() and line.split()[0] == row["arm"])
        acc = f"{row['accuracy']:.1%}"
        assert acc in line and f"{row['done']}/{ITEMS}" in line, line
        assert ("best" in line) == (row["arm"] == best), line


def test_arms_of_a_provider_share_its_concurrency(clean):
    """Provider a allows 3 requests at once; each of its two arms may send 3: together never
    more than 3 at the simulator, and the two arms did run at the same time."""
    root, result = clean
    assert result.returncode == 0, result.stderr
    logs = {arm: list(iter_events(str(root / "runs" / f"clean.{arm}" / "events.log"))) for arm in ARMS_ON["a"]}
    spans = {arm: (min(e.ts for e in ev if isinstance(e, Response)), max(e.ts for e in ev if isinstance(e, Response)))
             for arm, ev in logs.items()}
    (a0, a1), (b0, b1) = spans.values()
    assert a0 < b1 and b0 < a1, spans  # overlapping: run together, not one after the other


def test_ls_compare_and_view_know_the_experiment(clean):
    root, _ = clean
    ls = run_cli("ls", "--experiment", "clean", cwd=root)
    assert ls.returncode == 0, ls.stderr
    assert sorted(line.split("\t")[0] for line in ls.stdout.splitlines()[1:]) == \
        ["clean.llama", "clean.llama-cot", "clean.qwen"]
    status = run_cli("status", "clean", "--json", cwd=root)
    assert status.returncode == 0, status.stderr
    assert {(a["arm"], a["run_id"], a["status"], a["done"]) for a in json.loads(status.stdout)} == \
        {(arm, f"clean.{arm}", "completed", ITEMS) for arm in ("llama", "llama-cot", "qwen")}
    nope = run_cli("view", "--experiment", "nope", cwd=root)
    assert nope.returncode == 2 and nope.stderr.startswith("error: no experiment 'nope' under runs"), nope.stderr
    assert "known: " in nope.stderr and "clean" in nope.stderr
    from llm_ledger.projections.runs import list_runs
    from llm_ledger.viewer.app import RunsDir, expand_experiments

    runs = str(root / "runs")
    assert {r.run_id: r.experiment for r in list_runs(runs) if r.run_id.startswith("clean.")} == \
        {"clean.llama": "clean", "clean.llama-cot": "clean", "clean.qwen": "clean"}
    assert sorted(expand_experiments(runs, ["clean"], RunsDir(runs).names())) == \
        ["clean.llama", "clean.llama-cot", "clean.qwen"]


def _table(root: Path, experiment: str) -> dict:
    from llm_ledger.projections.experiments import arm_table, experiment_arms

    return arm_table(experiment_arms(str(root / "runs"), experiment))


def _settled(sims: dict[str, Simulator]) -> dict[str, int]:
    """The simulators' request counts once nothing more arrives (a killed client's last bytes)."""
    last = None
    while True:
        now = {name: (sim.state.requests, sim.state.in_flight) for name, sim in sims.items()}
        if now == last and all(f == 0 for _, f in now.values()):
            return {name: n for name, (n, _) in now.items()}
        last = now
        time.sleep(0.05)


def test_kill9_mid_experiment_then_resume_sends_only_what_was_not_durable(lab, clean):
    root, sims = lab
    (root / "killed.toml").write_text(experiment_toml("killed", sims, THREE_ARMS))
    before = _settled(sims)
    offsets = {name: (root / f"{name}.jsonl").stat().st_size for name in sims}
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "run", "killed.toml"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sims["a"].state.requests - before["a"] < 30 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    at_kill = _settled(sims)
    durable = {arm: {e.item_id for e in iter_events(str(root / "runs" / f"killed.{arm}" / "events.log"))
                     if isinstance(e, Response)} for arms in ARMS_ON.values() for arm in arms}
    assert len(durable["llama"]) + len(durable["llama-cot"]) < 2 * ITEMS  # killed mid-way
    kill_offsets = {name: (root / f"{name}.jsonl").stat().st_size for name in sims}
    assert sum(len(requests_of(root / f"{n}.jsonl", offsets[n])) for n in sims) == sum(at_kill[n] - before[n] for n in sims)

    resumed = run_cli("resume", "killed", cwd=root, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    # each key is asked again once per arm of that simulator that had no durable reply for it
    for name, arms in ARMS_ON.items():
        later = Counter(r["key"].split("/")[0] for r in requests_of(root / f"{name}.jsonl", kill_offsets[name]))
        expected = Counter({f"q{i}": sum(f"q{i}" not in durable[arm] for arm in arms) for i in range(ITEMS)})
        assert later == +expected, name
    # the same final figures as the experiment that was never interrupted
    killed, never = _table(root, "killed"), _table(root, "clean")
    keep = ("arm", "accuracy", "ci95", "prompt_tokens", "completion_tokens", "cost_usd", "parse_rate", "p_vs_best")
    assert [{k: r[k] for k in keep} for r in killed["rows"]] == [{k: r[k] for k in keep} for r in never["rows"]]
    # the provider's limit held through all of it: never more than 3 requests at once at simulator a
    assert sims["a"].state.max_in_flight <= 3


def test_a_narrow_table_says_what_it_left_out_and_cached_arms_say_so(lab, clean):
    """The same experiment again under another name: every arm is served from the cache, and
    the table says so; at 80 columns it says which columns it left out."""
    root, sims = lab
    (root / "again.toml").write_text(experiment_toml("again", sims, THREE_ARMS).replace("cache = false", "cache = true"))
    r = run_cli("run", "again.toml", cwd=root, env={**ENV, "COLUMNS": "80"})
    assert r.returncode == 0, r.stdout + r.stderr
    text = " ".join(r.stdout.split())
    copied = ", ".join(f"{arm} {ITEMS} of {ITEMS}" for arm in ("llama", "llama-cot", "qwen"))
    assert f"copied from earlier runs (the cache; not paid, not in cost, tokens or p50): {copied}" in text, r.stdout
    assert "left out to fit 80 columns: model (a wider terminal shows them)" in text, r.stdout
    table = _table(root, "again")
    assert [row["cached"] for row in table["rows"]] == [ITEMS] * 3
