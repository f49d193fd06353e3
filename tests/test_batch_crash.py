"""kill -9 across a --batch run's lifecycle, and resume each time: the simulator's own books
show every chunk created at most once and every request billed at most once, and the final
responses equal those of a run without kills.

Real kills, cheaply: one simulator process for the module, and one "forker" process that
imports ledger once and forks a child per session; the child sets ``LEDGER_BATCH_CRASH=STEP:N``
and SIGKILLs itself at that moment (runners/batch_crash.py), or runs to the end.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from llm_ledger.runners.simulator import SimConfig

KILLS = 30  # sessions killed by SIGKILL, over as many seeds as it takes
STEPS = ("planned", "uploaded", "file_event", "created", "submitted", "polled", "downloaded", "results", "done")

FORKER = r'''
import json, os, sys
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.prepare import prepare, prepare_resume
from llm_ledger.runners.session import run_prepared
import llm_ledger.runners.batch, openai  # imported once, before any fork

for raw in sys.stdin:
    job = json.loads(raw)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            if job["crash"]:
                os.environ["LEDGER_BATCH_CRASH"] = job["crash"]
                os.environ["LEDGER_BATCH_CRASH_NOTE"] = job["note"]
            if job["resume"]:
                prepared = prepare_resume(RunPaths(os.path.join(job["runs"], job["run_id"])))
            else:
                prepared = prepare(job["dataset"], RunConfig(**job["config"]), job["runs"], job["run_id"])
            _, reason = run_prepared(prepared)
            code = 0 if reason == "completed" else 4
        except BaseException as exc:
            sys.stderr.write(f"child error: {type(exc).__name__}: {exc}\n")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                      "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
'''

SIM = r'''
import json, sys, time
from llm_ledger.runners.simulator import SimConfig, Simulator
sim = Simulator(SimConfig(**json.loads(sys.argv[1]))).start()
print(sim.base_url, flush=True)
sys.stdin.read()
'''


@pytest.fixture(scope="module")
def sim_url():
    config = {"batch_seconds": 0.01, "batch_window": 60}  # a batch runs in 10 ms: a poll or two
    SimConfig(**config)
    proc = subprocess.Popen([sys.executable, "-c", SIM, json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    yield url
    proc.stdin.close()
    proc.wait(10)


@pytest.fixture(scope="module")
def forker():
    proc = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def session(**job) -> dict:
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    yield session
    proc.stdin.close()
    proc.wait(10)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Question {i}? answer: {'ABCD'[i % 4]}", "expected": "ABCD"[i % 4]} for i in range(10)]
    rows += [{"id": f"m{i}", "turns": [f"hello {i}", f"and so? answer: {'AB'[i]}"], "expected": "AB"[i]} for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _config(url: str) -> dict:
    return {"model": "sim-1", "base_url": url, "base_urls": [url], "parser": "choice", "runner": "batch",
            "batch_max_requests": 4, "retries": 2, "cache": False}  # the simulator's books count batches, not cache hits


def _records(url: str) -> dict:
    with urllib.request.urlopen(url + "/_sim/batch_records") as reply:
        return json.loads(reply.read())


def _answers(run_dir) -> dict:
    rows: dict = {}
    with open(os.path.join(run_dir, "responses.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows[(row["item_id"], row["sample"])] = {k: row.get(k) for k in ("response", "parsed", "correct", "usage",
                                                                               "attempts", "error")}
    return rows


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Where the runs go: a directory in RAM when there is one (/dev/shm). A SIGKILL is not a
    power cut: what the killed process wrote is in the page cache either way, so the test
    asserts the same; only the ~40 sessions' fsyncs cost nothing there."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        path = tempfile.mkdtemp(prefix="ledger-batch-crash-", dir=shm)
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield str(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def reference(forker, sim_url, dataset, runs_dir):
    runs = os.path.join(runs_dir, "ref")
    os.makedirs(runs)
    result = forker(run_id="ref", resume=False, crash="", note="", runs=runs, dataset=dataset, config=_config(sim_url))
    assert result == {"signal": 0, "code": 0}
    return _answers(os.path.join(runs, "ref"))


def test_reference_run_answers_every_item_in_two_rounds(reference, sim_url):
    assert len(reference) == 12
    assert all(row["correct"] for row in reference.values())
    ours = [b for b in _records(sim_url)["batches"] if b["metadata"].get("ledger_run", "").rsplit(".", 1)[0] == "ref"]
    assert len(ours) == 4  # 12 first turns in chunks of 4, then the 2 second turns in one


def test_kill_9_at_every_step_never_rebuys_and_loses_nothing(forker, sim_url, dataset, reference, runs_dir):
    runs = os.path.join(runs_dir, "crash")
    os.makedirs(runs)
    kills = 0
    steps_hit: set[str] = set()
    seed = 0
    while kills < KILLS or steps_hit != set(STEPS):  # seeds until 30+ kills at every step (each seed: a run
        # killed again and again, then finished)
        rng = random.Random(seed)
        run_id = f"crash{seed}"
        print(f"seed {seed}")
        resume = False
        for n in range(8):  # a named step the first time it comes (each step in turn, first), or the N-th of any kind
            named = STEPS[(2 * seed + n) % len(STEPS)] if n < 2 else rng.choice(STEPS)
            crash = f"{named}:1" if n < 2 or rng.random() < 0.3 else f"*:{rng.randint(1, 6)}"
            note = os.path.join(runs, "died-at")
            result = forker(run_id=run_id, resume=resume, crash=crash, note=note, runs=runs, dataset=dataset,
                            config=_config(sim_url))
            resume = resume or os.path.exists(os.path.join(runs, run_id, "events.log"))
            if result["signal"] != signal.SIGKILL:
                assert result == {"signal": 0, "code": 0}, (seed, crash, result)
                break
            kills += 1
            with open(note) as f:
                steps_hit.add(f.read())
        else:
            result = forker(run_id=run_id, resume=True, crash="", note="", runs=runs, dataset=dataset, config=_config(sim_url))
            assert result == {"signal": 0, "code": 0}, (seed, result)
        assert _answers(os.path.join(runs, run_id)) == reference, seed
        _check_books(_records(sim_url), run_id)
        seed += 1
        assert seed < 12, f"only {kills} kills in {seed} seeds, at {sorted(steps_hit)}"


def _check_books(records: dict, run_id: str) -> None:
    ours = [b for b in records["batches"] if b["metadata"].get("ledger_run", "").rsplit(".", 1)[0] == run_id]
    chunks = [b["metadata"]["ledger_chunk"] for b in ours]
    assert len(chunks) == len(set(chunks)), f"a chunk was created twice: {sorted(chunks)}"
    hashes = [b["sha256"] for b in ours]
    assert len(hashes) == len(set(hashes)), "the same file was submitted twice"
    billed = [c for b in ours for c in b["billed"]]
    assert len(billed) == len(set(billed)) == 14, f"billed {len(billed)} times for {len(set(billed))} requests"
    used = {b["input_file_id"] for b in ours}
    unused = [f for f in records["files"] if f["filename"].startswith(f"ledger-{run_id}.") and f["id"] not in used]
    assert unused == [], "an uploaded file no batch uses was left behind"
