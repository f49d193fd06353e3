"""The read side: `ledger replay` (--reparse, --rebuild), `status`, `ls`, `show`, summary.json.

Runs made once for the module against the embedded simulator (all in one runs dir):

- ``letters``: 10 items whose expected answer is a bare letter, parsed with ``text`` (so
  accuracy 0: "The answer is B" != "B"), with a simulator request log; re-parsed below;
- ``labels``: 10 items with a known confusion (8 right) parsed with ``choice``, priced with
  --price-in / --price-out: the summary figures are checked by hand;
- ``samples``: 6 items x 3 samples, 4 items right;
- ``faulty``: 10 items, 50% HTTP 500s, one retry, concurrency 1 (deterministic): some keys
  fail once and then succeed, some fail finally.

The read-only commands (status, ls, show, log, bad re-parses) run once, in parallel, in the
fixture; the tests check their output. The tests that write (re-parse, rebuild) run last in
their run's life.
"""

from __future__ import annotations

import json
import math
import re
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli

REGEX = "regex:answer is (.+)$"


# -- helpers ------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def line_count(path: Path) -> int:
    return len(Path(path).read_bytes().splitlines()) if Path(path).exists() else 0


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """responses.jsonl, summary.json and every conversation file, by relative name."""
    files = {name: (run_dir / name).read_bytes() for name in ("responses.jsonl", "summary.json")}
    for p in sorted((run_dir / "conversations").iterdir()):
        files[f"conversations/{p.name}"] = p.read_bytes()
    return files


LETTERS = [("A", "A"), ("B", "B"), ("C", "C"), ("D", "D"), ("A", "A"), ("B", "B"), ("C", "C"), ("D", "D"), ("A", "A"), ("B", "B")]
# (hint, expected): A x4 -> A,A,A,B; B x3 -> B,B,C; C x3 -> C,C,C  (8 of 10 right)
CONFUSION = [("A", "A"), ("A", "A"), ("A", "A"), ("B", "A"), ("B", "B"), ("B", "B"), ("C", "B"), ("C", "C"), ("C", "C"), ("C", "C")]
PRICE_IN, PRICE_OUT = 1000.0, 3000.0


def records(prefix: str, pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"Question {prefix}{i}? answer: {hint}", "expected": expected}
            for i, (hint, expected) in enumerate(pairs)]


def _piped(*args: str) -> subprocess.CompletedProcess:
    """The CLI with stdout a pipe and no COLUMNS/LINES in its environment (as in `ledger ls | cat`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "llm_ledger.cli", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("inspect")
    runs = base / "runs"
    req_log = base / "letters-requests.jsonl"
    sets = {
        "letters": write_jsonl(base / "letters.jsonl", records("t", LETTERS)),
        "labels": write_jsonl(base / "labels.jsonl", records("l", CONFUSION)),
        "samples": write_jsonl(base / "samples.jsonl", records("s", [("A", "A"), ("B", "B"), ("C", "D"), ("D", "D"), ("A", "B"), ("B", "B")])),
        "faulty": write_jsonl(base / "faulty.jsonl", records("f", [("ABC"[i % 3], "ABC"[i % 3]) for i in range(10)])),
    }
    args = {
        "letters": ["--parser", "text", "--sim", json.dumps({"request_log": str(req_log)})],
        "labels": ["--parser", "choice", "--price-in", str(PRICE_IN), "--price-out", str(PRICE_OUT)],
        "samples": ["--parser", REGEX, "--samples", "3"],
        "faulty": ["--parser", "choice", "--retries", "1", "--concurrency", "1", "--sim", json.dumps({"rate_500": 0.5, "seed": 3})],
    }

    def cli(*a, **kw):
        return run_cli(*a, "--runs-dir", str(runs), cwd=base, **kw)

    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(cli, "run", str(sets[name]), "--run-id", name, *args[name]) for name in sets}
        results = {name: f.result() for name, f in futures.items()}
    for name, r in results.items():
        assert r.returncode == (1 if name == "faulty" else 0), (name, r.stdout, r.stderr)
    # Read-only commands on the finished runs, all at once (they touch no projection file).
    calls = {
        "status labels json": ("status", "labels", "--json"),
        "status labels": ("status", "labels"),
        "status faulty json": ("status", "faulty", "--json"),
        "ls wide": ("ls",),
        "show l3 json": ("show", "labels", "l3", "--json"),
        "show l3": ("show", "labels", "l3"),
        "show s2 sample 2": ("show", "samples", "s2", "--sample", "2", "--json"),
        "show unknown item": ("show", "labels", "nope"),
        "show unknown sample": ("show", "labels", "l3", "--sample", "5"),
        "reparse bad regex": ("replay", "labels", "--reparse", "regex:("),
        "reparse bad spec": ("replay", "labels", "--reparse", "bogus"),
    }
    log_before = (runs / "labels" / "events.log").read_bytes()
    with ThreadPoolExecutor(4) as pool:
        logs = {name: pool.submit(cli, "log", name) for name in ("labels", "faulty", "samples", "letters")}
        futures = {key: pool.submit(cli, *a, env={"COLUMNS": "200"} if key == "ls wide" else None) for key, a in calls.items()}
        futures["ls piped"] = pool.submit(_piped, "ls", "--runs-dir", str(runs))
        logs = {name: [json.loads(line) for line in f.result().stdout.splitlines() if line.strip()] for name, f in logs.items()}
        results = {key: f.result() for key, f in futures.items()}
    return {"base": base, "runs": runs, "req_log": req_log, "cli": cli, "logs": logs, "results": results,
            "labels_log_unchanged": (runs / "labels" / "events.log").read_bytes() == log_before}


def summary_of(world, run: str) -> dict:
    return json.loads((world["runs"] / run / "summary.json").read_bytes())


def key_events(log: list[dict], item_id: str, sample: int = 0) -> list[dict]:
    return [e for e in log if e.get("item_id") == item_id and e.get("sample") == sample]


# -- replay --reparse ------------------------------------------------------------------------


def test_reparse_rescores_without_a_request_and_rebuilds_identically(world):
    cli, run_dir = world["cli"], world["runs"] / "letters"
    before_rows = read_jsonl(run_dir / "responses.jsonl")
    before_summary = summary_of(world, "letters")
    assert before_summary["accuracy"] == 0.0 and before_summary["scored"] == 10
    assert [r["correct"] for r in before_rows] == [False] * 10
    requests = line_count(world["req_log"])
    assert requests == 10
    log_before = world["logs"]["letters"]

    r = cli("replay", "letters", "--reparse", REGEX)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "re-parsed 10 replies" in r.stdout

    assert line_count(world["req_log"]) == requests  # not a single new request
    summary = summary_of(world, "letters")
    assert summary["accuracy"] == 1.0 and summary["correct"] == 10 and summary["scored"] == 10
    assert summary["status"] == "completed"
    assert summary["counts"] == {"planned": 10, "done": 10, "failed": 0, "pending": 0}
    rows = read_jsonl(run_dir / "responses.jsonl")
    assert len(rows) == 10
    assert [r["item_id"] for r in rows] == [r["item_id"] for r in before_rows]  # order kept
    for row, old in zip(rows, before_rows):
        assert row["correct"] is True and row["parsed"] == row["expected"]
        assert {k: v for k, v in row.items() if k not in ("parsed", "correct", "correct_reviewed")} == \
               {k: v for k, v in old.items() if k not in ("parsed", "correct", "correct_reviewed")}
        assert row["correct_reviewed"] is True  # no review: the machine's verdict

    log = [json.loads(line) for line in cli("log", "letters").stdout.splitlines()]
    assert log[:len(log_before)] == log_before  # nothing mutated
    new = log[len(log_before):]
    assert new[0]["type"] == "session_started" and new[0]["reason"] == "reparse"
    assert new[-1]["type"] == "session_ended" and new[-1]["reason"] == "completed"
    parsed = new[1:-1]
    assert [e["type"] for e in parsed] == ["parsed"] * 10
    assert sorted(e["item_id"] for e in parsed) == sorted(r["item_id"] for r in rows)
    expected = {r["item_id"]: r["expected"] for r in rows}
    assert all(e["parser"] == REGEX and e["ok"] is True and e["value"] == expected[e["item_id"]] for e in parsed)

    reparsed = snapshot(run_dir)
    r = cli("replay", "letters", "--rebuild")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert snapshot(run_dir) == reparsed
    r = cli("replay", "letters")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert snapshot(run_dir) == reparsed
    assert line_count(world["req_log"]) == requests

    # A second re-parse supersedes the first: back to `text`, back to accuracy 0.
    r = cli("replay", "letters", "--reparse", "text")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert summary_of(world, "letters")["accuracy"] == 0.0
    assert [r["parsed"] for r in read_jsonl(run_dir / "responses.jsonl")] == [r["parsed"] for r in before_rows]
    assert line_count(world["req_log"]) == requests


def test_reparse_with_a_bad_parser_exits_2_and_appends_nothing(world):
    for key in ("reparse bad regex", "reparse bad spec"):
        r = world["results"][key]
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1 and "Traceback" not in r.stderr
    assert world["labels_log_unchanged"]


# -- status ----------------------------------------------------------------------------------


def test_status_of_a_finished_run(world):
    results = world["results"]
    r = results["status labels json"]
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info == {"run_id": "labels", "status": "completed", "status_text": "completed", "planned": 10, "done": 10,
                    "failed": 0, "in_flight": 0, "pending": 0, "events": len(world["logs"]["labels"]),
                    "accuracy": summary_of(world, "labels")["accuracy"], "summary_current": True, "source": "index"}
    r = results["status labels"]
    assert r.returncode == 0, r.stderr
    text = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)}
    assert text["status"] == "completed"
    assert (text["planned"], text["done"], text["failed"], text["pending"]) == ("10", "10", "0", "0")

    info = json.loads(results["status faulty json"].stdout)
    summary = summary_of(world, "faulty")
    assert info["status"] == "completed_with_failures" and info["planned"] == 10  # not a plain "completed"
    assert info["status_text"] == f"completed, {info['failed']} failed"
    assert (info["done"], info["failed"], info["pending"]) == (summary["counts"]["done"], summary["counts"]["failed"], 0)
    assert info["failed"] > 0 and info["done"] + info["failed"] == 10


def test_status_during_a_run_from_another_process(world, tmp_path):
    n = 100
    dataset = write_jsonl(tmp_path / "live.jsonl", records("v", [("A", "A")] * n))
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "llm_ledger.cli", "run", str(dataset), "--run-id", "live", "--runs-dir", str(runs),
           "--concurrency", "4", "--parser", REGEX, "--sim", json.dumps({"latency": 0.1})]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = None
    polls = []
    try:
        while proc.poll() is None:
            r = run_cli("status", "live", "--json", "--runs-dir", str(runs), cwd=tmp_path)
            if r.returncode != 0:  # not created yet
                time.sleep(0.05)
                continue
            info = json.loads(r.stdout)
            polls.append(info)
            if info["status"] == "running" and info["done"] > 0:
                seen = info
                exported = run_cli("export", "live", "jsonl", "-o", str(tmp_path / "live.jsonl.out"), "--runs-dir", str(runs), cwd=tmp_path)
                break
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, proc.stderr.read()
    assert seen is not None, f"never saw the run in progress: {polls}"
    assert seen["planned"] == n and 0 < seen["done"] < n
    assert seen["done"] + seen["failed"] + seen["in_flight"] + seen["pending"] == n
    assert all(seen[k] >= 0 for k in ("planned", "done", "failed", "in_flight", "pending", "events"))
    # an export taken meanwhile (or just after) holds whole rows, one per key, all finished
    assert exported.returncode == 0, exported.stderr
    rows = read_jsonl(tmp_path / "live.jsonl.out")
    assert seen["done"] <= len(rows) <= n
    assert len({r["item_id"] for r in rows}) == len(rows) and all(r["correct"] is True for r in rows)
    final = json.loads(run_cli("status", "live", "--json", "--runs-dir", str(runs), cwd=tmp_path).stdout)
    assert final["status"] == "completed"
    assert (final["planned"], final["done"], final["failed"], final["in_flight"], final["pending"]) == (n, n, 0, 0, 0)


# -- ls --------------------------------------------------------------------------------------


def _ls_rows(stdout: str) -> dict[str, list[str]]:
    """Rows of `ledger ls`: tab-separated when piped (as here), columns two spaces apart on a terminal."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in (line.split("\t") if "\t" in line else re.split(r"\s{2,}", line))]
        cells = [c for c in cells if c]
        if cells and cells[0] in ("letters", "labels", "samples", "faulty"):
            rows[cells[0]] = cells
    return rows


def test_ls_lists_every_run_with_status_model_and_counts(world):
    r = world["results"]["ls wide"]
    assert r.returncode == 0, r.stderr
    rows = _ls_rows(r.stdout)
    assert set(rows) == {"letters", "labels", "samples", "faulty"}, r.stdout
    for name, cells in rows.items():
        summary = summary_of(world, name)
        failed = summary["counts"]["failed"]
        assert cells[1] == (f"completed, {failed} failed" if failed else "completed") and cells[2] == "sim-1", cells
        assert cells[3] == f"{name}.jsonl"
        assert cells[4:7] == [str(summary["counts"][k]) for k in ("done", "failed", "planned")], cells
    assert rows["labels"][7] == "80.0%"
    assert rows["samples"][4:7] == ["18", "0", "18"]


def test_ls_piped_at_the_default_width_keeps_whole_cells(world):
    r = world["results"]["ls piped"]
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout, r.stdout
    assert r.stdout.count("completed") == 4, r.stdout


# -- show ------------------------------------------------------------------------------------


def _without_raw(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "raw"}


def test_show_json_has_the_conversation_and_every_event_of_the_key(world):
    r = world["results"]["show l3 json"]
    assert r.returncode == 0, r.stderr
    story = json.loads(r.stdout)
    assert (story["item_id"], story["sample"]) == ("l3", 0)
    conv = story["conversation"]
    assert conv["messages"] == [{"role": "user", "content": "Question l3? answer: B"},
                                {"role": "assistant", "content": "The answer is B"}]
    assert (conv["parsed"], conv["expected"], conv["correct"]) == ("B", "A", False)
    assert [e["type"] for e in story["events"]] == ["started", "response", "parsed"]
    assert story["events"] == [_without_raw(e) for e in key_events(world["logs"]["labels"], "l3")]


def test_show_text_prints_messages_and_attempts(world):
    r = world["results"]["show l3"]
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "user: Question l3? answer: B" in out
    assert "assistant: The answer is B" in out
    assert "answer: B   expected: A   wrong" in out
    reply = next(e for e in key_events(world["logs"]["labels"], "l3") if e["type"] == "response")
    usage = reply["usage"]
    assert f"reply: ok, {round(reply['latency'] * 1000)} ms, {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens" in out


def test_show_an_item_with_failures_lists_every_attempt(world):
    log = world["logs"]["faulty"]
    by_key = {}
    for e in log:
        if "item_id" in e:
            by_key.setdefault(e["item_id"], []).append(e)
    retried = [k for k, es in by_key.items() if [e["type"] for e in es] == ["started", "failed", "started", "response", "parsed"]]
    given_up = [k for k, es in by_key.items() if [e["type"] for e in es] == ["started", "failed", "started", "failed"]]
    assert retried and given_up, {k: [e["type"] for e in es] for k, es in by_key.items()}
    cli = world["cli"]
    with ThreadPoolExecutor(3) as pool:
        shown = [pool.submit(cli, "show", "faulty", item, "--json") for item in (retried[0], given_up[0])]
        text = pool.submit(cli, "show", "faulty", given_up[0])
        shown, text = [f.result() for f in shown], text.result()
    for item, r in zip((retried[0], given_up[0]), shown):
        assert r.returncode == 0, r.stderr
        story = json.loads(r.stdout)
        assert story["events"] == [_without_raw(e) for e in by_key[item]]
        assert [e["attempt"] for e in story["events"] if e["type"] == "started"] == [1, 2]
        failed = [e for e in story["events"] if e["type"] == "failed"]
        assert all(e["status"] == 500 for e in failed)
        assert [e["final"] for e in failed] == ([False] if item == retried[0] else [False, True])
    assert text.returncode == 0, text.stderr
    assert "attempt 1: failed, HTTP 500 " in text.stdout and text.stdout.rstrip().endswith("(gave up)"), text.stdout


def test_show_a_sample(world):
    r = world["results"]["show s2 sample 2"]
    assert r.returncode == 0, r.stderr
    story = json.loads(r.stdout)
    assert story["sample"] == 2 and story["conversation"]["sample"] == 2
    assert story["events"] == [_without_raw(e) for e in key_events(world["logs"]["samples"], "s2", 2)]
    assert all(e["sample"] == 2 and e["item_id"] == "s2" for e in story["events"])


@pytest.mark.parametrize(("key", "named"), [("show unknown item", "nope"), ("show unknown sample", "l3")])
def test_show_an_unknown_item_exits_2(world, key, named):
    r = world["results"][key]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert named in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


# -- summary.json ----------------------------------------------------------------------------


def test_summary_accuracy_and_its_wilson_interval(world):
    s = summary_of(world, "labels")
    assert (s["scored"], s["correct"], s["accuracy"]) == (10, 8, 0.8)
    z, n, p = 1.96, 10, 0.8
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = s["accuracy_ci95"]
    assert lo == pytest.approx(centre - half, abs=1e-6) and hi == pytest.approx(centre + half, abs=1e-6)
    assert (lo, hi) == pytest.approx((0.490157, 0.943319), abs=1e-6)
    assert s["status"] == "completed" and s["counts"] == {"planned": 10, "done": 10, "failed": 0, "pending": 0}
    assert s["parse_success_rate"] == 1.0 and s["attempts"] == 10 and s["retries"] == 0


def test_summary_per_label_precision_recall_f1(world):
    labels = summary_of(world, "labels")["labels"]
    # confusion: A -> A,A,A,B   B -> B,B,C   C -> C,C,C
    want = {
        "A": (1.0, 3 / 4, 4),
        "B": (2 / 3, 2 / 3, 3),
        "C": (3 / 4, 1.0, 3),
    }
    assert set(labels["per_class"]) == set(want)
    f1s = []
    for label, (precision, recall, support) in want.items():
        got = labels["per_class"][label]
        f1 = 2 * precision * recall / (precision + recall)
        f1s.append(f1)
        assert got["support"] == support
        assert got["precision"] == pytest.approx(precision, abs=1e-6)
        assert got["recall"] == pytest.approx(recall, abs=1e-6)
        assert got["f1"] == pytest.approx(f1, abs=1e-6)
    assert labels["macro_f1"] == pytest.approx(sum(f1s) / 3, abs=2e-6)


def test_summary_latency_tokens_cost_and_wall_time(world):
    s = summary_of(world, "labels")
    log = world["logs"]["labels"]
    latencies = sorted(e["latency"] for e in log if e["type"] == "response")
    assert len(latencies) == 10
    for q in (50, 90, 99):
        nearest = latencies[max(1, math.ceil(q / 100 * len(latencies))) - 1]
        assert s["latency_s"][f"p{q}"] == pytest.approx(round(nearest, 6), abs=1e-9)
    assert 0 < s["latency_s"]["p50"] <= s["latency_s"]["p90"] <= s["latency_s"]["p99"]

    rows = read_jsonl(world["runs"] / "labels" / "responses.jsonl")
    prompt = sum(r["usage"]["prompt_tokens"] for r in rows)
    completion = sum(r["usage"]["completion_tokens"] for r in rows)
    assert prompt > 0 and completion > 0
    assert s["tokens"] == {"prompt": prompt, "completion": completion, "total": prompt + completion}
    assert s["cost_usd"] == pytest.approx((prompt * PRICE_IN + completion * PRICE_OUT) / 1e6, abs=1e-6)
    assert s["cost_usd"] > 0

    wall = log[-1]["ts"] - next(e["ts"] for e in log if e["type"] == "session_started")  # the session's sending time
    assert s["wall_time_s"] == pytest.approx(round(wall, 3), abs=1e-9)
    assert s["throughput_per_s"] == pytest.approx(round(10 / wall, 3), abs=1e-9)
    assert s["samples"] is None


def test_summary_per_sample_breakdown(world):
    s = summary_of(world, "samples")
    assert s["counts"] == {"planned": 18, "done": 18, "failed": 0, "pending": 0}
    assert (s["scored"], s["correct"]) == (18, 12)
    # the simulator answers a prompt the same way every time: samples agree, pass@3 = mean
    assert s["samples"] == {"k": 3, "mean_accuracy": pytest.approx(4 / 6, abs=1e-6),
                            "pass@3": pytest.approx(4 / 6, abs=1e-6), "agreement": 1.0, "items": 6, "pass_items": 6}
    rows = read_jsonl(world["runs"] / "samples" / "responses.jsonl")
    assert sorted((r["item_id"], r["sample"]) for r in rows) == sorted((f"s{i}", k) for i in range(6) for k in range(3))


def test_summary_labels_count_finally_failed_items_as_misses(world):
    s = summary_of(world, "faulty")
    assert s["counts"]["failed"] > 0 and s["scored"] == 10
    per_class = s["labels"]["per_class"]
    assert sum(v["support"] for v in per_class.values()) == s["scored"]
    micro_recall = sum(v["recall"] * v["support"] for v in per_class.values()) / s["scored"]
    assert micro_recall == pytest.approx(s["accuracy"], abs=1e-6)


# -- replay --rebuild (last: it rewrites the labels run's files, identically) -------------------


def test_rebuild_after_deleting_the_projections_gives_the_same_bytes(world):
    cli, run_dir = world["cli"], world["runs"] / "labels"
    before = snapshot(run_dir)
    assert len([k for k in before if k.startswith("conversations/")]) == 10
    (run_dir / "responses.jsonl").unlink()
    (run_dir / "summary.json").unlink()
    shutil.rmtree(run_dir / "conversations")
    r = cli("replay", "labels", "--rebuild")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert snapshot(run_dir) == before

    # A responses.jsonl cut mid-line and a lost summary.json: a plain replay repairs both.
    data = (run_dir / "responses.jsonl").read_bytes()
    (run_dir / "responses.jsonl").write_bytes(data[: len(data) - 40])
    (run_dir / "summary.json").unlink()
    r = cli("replay", "labels")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert snapshot(run_dir) == before


def test_compare_says_how_many_shared_items_a_run_failed(world):
    """Failures count as wrong in compare's accuracy and McNemar test: how many there are is
    said beside them, so a gap made of errors is not read as a gap between models."""
    cli = world["cli"]
    base = world["base"]
    clean = cli("run", str(base / "faulty.jsonl"), "--run-id", "faulty-clean", "--parser", "choice")
    assert clean.returncode == 0, clean.stderr
    failed = summary_of(world, "faulty")["counts"]["failed"]
    r = cli("compare", "faulty", "faulty-clean", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert failed > 0 and f"failed, no answer (counted as wrong above; `ledger resume RUN` retries them): faulty {failed} of 10" \
        in r.stdout, r.stdout
