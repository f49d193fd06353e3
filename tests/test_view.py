"""`ledger view`: the JSON API in-process (starlette's TestClient), then a real server.

The runs are the ones `test_compare.shared_runs` builds with the real CLI and simulator:
a, b, c on the same 12 items with known answers, d on 6 of them plus 2 of its own. The
real-server test starts `ledger view` in a subprocess on a free port, talks HTTP to it
(httpx; http.client for raw request lines, since httpx would normalize `..` away), checks
that traversal attempts get 404, and watches a slow run go from running to completed.
`view_server` is shared with the browser test.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
from starlette.testclient import TestClient

from conftest import run_cli
from test_compare import EXPECTED, HINTS, N, shared_runs
from llm_ledger.ledger.reader import iter_events
from llm_ledger.viewer.app import create_app

TRAVERSALS = [
    "/static/../../../etc/passwd",
    "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/%2e%2e%2fapp.py",
    "/static/..%5c..%5capp.py",
    "/static/%2Fetc%2Fpasswd",
    "/static//etc/passwd",
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "//etc/passwd",
    "/etc/passwd",
    "/a/responses.jsonl",
    "/runs/a/events.log",
    "/static/py.typed",
    "/static/",
    "/api/items?run=..",
    "/api/items?run=../a",
    "/api/items?run=a/../b",
    "/api/items?run=%2e%2e",
    "/api/items?run=..%2F..%2Fetc",
    "/api/items?run=%2Fetc",
    "/api/items?run=/etc",
    "/api/items?run=/",
    "/api/items?run=.",
    "/api/items?run=a%00",
    "/api/item?run=..&item=i0",
    "/api/item?run=a&item=../../../../etc/passwd",
    "/api/item?run=a&item=%2Fetc%2Fpasswd",
    "/api/item?run=a&item=..%2F..%2Fsummary",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return shared_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def client(runs) -> TestClient:
    return TestClient(create_app(str(runs)))


def items(client: TestClient, query: str) -> dict:
    r = client.get("/api/items?" + query)
    assert r.status_code == 200, r.text
    return r.json()


# -- the API in-process ------------------------------------------------------------------


def test_run_list_has_status_model_counts_and_accuracy(client):
    data = client.get("/api/runs").json()
    rows = {r["run_id"]: r for r in data["runs"]}
    assert sorted(rows) == ["a", "b", "c", "d"]
    assert rows["b"]["status"] == "completed" and rows["b"]["model"] == "sim-1"
    assert (rows["b"]["done"], rows["b"]["failed"], rows["b"]["planned"]) == (N, 0, N)
    assert rows["b"]["accuracy"] == pytest.approx(4 / 12)


def test_items_side_by_side_with_disagreements_marked(client):
    data = items(client, "run=a&run=b")
    assert [r["run_id"] for r in data["runs"]] == ["a", "b"]
    assert data["runs"][1]["accuracy"] == pytest.approx(4 / 12) and data["runs"][1]["status"] == "completed"
    assert (data["items"], data["disagreements"], data["matching"], data["pages"]) == (N, 8, N, 1)
    assert [r["item_id"] for r in data["rows"]] == [f"i{i}" for i in range(N)]  # natural order: i2 before i10
    for i, row in enumerate(data["rows"]):
        assert row["expected"] == EXPECTED[i]
        assert [a["parsed"] for a in row["answers"]] == [HINTS["a"][i], HINTS["b"][i]]
        assert [a["response"] for a in row["answers"]] == [f"The answer is {HINTS['a'][i]}", f"The answer is {HINTS['b'][i]}"]
        assert row["answers"][1]["correct"] == (HINTS["b"][i] == EXPECTED[i])
        assert row["agree"] == (HINTS["a"][i] == HINTS["b"][i])


def test_filters_search_sorting_and_paging(client):
    diff = items(client, "run=a&run=b&diff=1")
    assert diff["matching"] == 8 and all(r["agree"] is False for r in diff["rows"])
    assert items(client, "run=a&run=c&wrong=1")["matching"] == 4
    assert [r["item_id"] for r in items(client, "run=a&run=b&q=I11")["rows"]] == ["i11"]
    hits = items(client, "run=a&run=b&q=answer is d")["rows"]  # either run's response, case-insensitive
    assert [r["item_id"] for r in hits] == [f"i{i}" for i in range(N) if "D" in (HINTS["a"][i], HINTS["b"][i])]
    assert items(client, "run=a&run=b&q=nothing-like-this")["rows"] == []
    assert items(client, "run=a&run=b&sort=item&desc=1")["rows"][0]["item_id"] == "i11"
    wrong_first = items(client, "run=a&run=b&sort=correct1")["rows"]
    assert [r["answers"][1]["correct"] for r in wrong_first] == [False] * 8 + [True] * 4
    by_answer = [r["answers"][1]["parsed"] for r in items(client, "run=a&run=b&sort=parsed1&desc=1")["rows"]]
    assert by_answer == sorted(by_answer, reverse=True)
    agree_first = items(client, "run=a&run=b&sort=agree")["rows"]
    assert [r["agree"] for r in agree_first] == [False] * 8 + [True] * 4
    page = items(client, "run=a&run=b&size=5&page=2")
    assert (page["pages"], page["page"], [r["item_id"] for r in page["rows"]]) == (3, 2, ["i10", "i11"])
    assert items(client, "run=a&run=b&size=5&page=99")["page"] == 2  # clamped to the last page
    assert client.get("/api/items?run=a&page=-1").status_code == 400


def test_runs_with_different_items_show_the_union(client):
    data = items(client, "run=a&run=d")
    assert data["items"] == N + 2 and data["disagreements"] == 0
    rows = {r["item_id"]: r for r in data["rows"]}
    assert rows["x0"]["answers"][0] is None and rows["x0"]["answers"][1]["parsed"] == "A" and rows["x0"]["agree"] is None
    assert rows["i9"]["answers"][1] is None
    assert [r["run_id"] for r in items(client, "run=c")["runs"]] == ["c"]


def test_detail_has_each_runs_conversation_and_every_attempt(client):
    r = client.get("/api/item?run=a&run=b&item=i3&sample=0")
    assert r.status_code == 200
    data = r.json()
    a, b = data["runs"]
    assert (a["run_id"], b["run_id"], a["found"], b["found"]) == ("a", "b", True, True)
    hint = HINTS["b"][3]
    assert hint != EXPECTED[3]
    assert b["conversation"]["messages"] == [{"role": "user", "content": f"Question i3? answer: {hint}"},
                                             {"role": "assistant", "content": f"The answer is {hint}"}]
    assert b["conversation"]["parsed"] == hint and b["conversation"]["correct"] is False
    assert [e["type"] for e in b["events"]] == ["started", "response", "parsed"]
    assert b["events"][0]["request"]["messages"][0]["content"] == f"Question i3? answer: {hint}"
    only_d = client.get("/api/item?run=a&run=d&item=x1").json()["runs"]
    assert [s["found"] for s in only_d] == [False, True]
    assert client.get("/api/item?run=a&item=i99").status_code == 404
    assert client.get("/api/item?run=a").status_code == 400


def test_page_and_static_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js">' in page.text
    assert '<script src="/static/charts.js">' in page.text
    for name, kind in (("app.js", "text/javascript"), ("charts.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get("/static/" + name)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 1000


def test_nothing_writes_and_no_path_escapes_the_runs_directory(client, runs):
    before = _snapshot(runs)
    for path in TRAVERSALS:
        assert client.get(path).status_code == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/api/runs", "/api/items?run=a", "/api/item?run=a&item=i0", "/api/charts?run=a", "/static/app.js"):
            assert client.request(method, path).status_code == 405, (method, path)
    items(client, "run=a&run=b&q=x&diff=1")
    assert client.get("/api/charts?run=a&run=b").status_code == 200
    assert _snapshot(runs) == before


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and mtime, but LMDB's reader table (index.lmdb/lock.mdb), which every
    reader of the index -- `ledger status` too -- registers in by design."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file() and p.name != "lock.mdb"}


def test_a_growing_run_is_refreshed_and_a_rebuilt_one_reread(runs, tmp_path):
    live = tmp_path / "runs"
    shutil.copytree(runs / "b", live / "b", ignore=shutil.ignore_patterns("index.lmdb"))
    responses = live / "b" / "responses.jsonl"
    lines = responses.read_bytes().splitlines(keepends=True)
    responses.write_bytes(b"".join(lines[:5]) + lines[5][:20])  # five lines and a partial one
    client = TestClient(create_app(str(live)))
    assert items(client, "run=b")["items"] == 5
    with open(responses, "ab") as f:
        f.write(lines[5][20:] + b"".join(lines[6:]))
    assert items(client, "run=b")["items"] == N
    responses.write_bytes(b"".join(lines[:2]))  # replaced by a shorter file (a rebuild)
    assert items(client, "run=b")["items"] == 2


def test_100000_item_runs_are_paged_on_the_server(tmp_path):
    encode = msgspec.json.Encoder().encode
    for name, wrong_every in (("big1", 0), ("big2", 10)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "events.log").write_bytes(b"")
        with open(tmp_path / name / "responses.jsonl", "wb") as f:
            for i in range(100_000):
                parsed = "B" if wrong_every and i % wrong_every == 0 else "A"
                f.write(encode({"item_id": f"q{i}", "sample": 0, "prompt": f"question {i}", "response": f"The answer is {parsed}.",
                                "parsed": parsed, "expected": "A", "correct": parsed == "A", "seq": i}) + b"\n")
    client = TestClient(create_app(str(tmp_path)))
    r = client.get("/api/items?run=big1&run=big2")
    data = r.json()
    assert (data["items"], data["disagreements"], data["pages"], len(data["rows"])) == (100_000, 10_000, 2000, 50)
    assert len(r.content) < 64_000  # one page, not the run
    last = items(client, "run=big1&run=big2&diff=1&page=199")
    assert (last["matching"], last["pages"], last["rows"][-1]["item_id"]) == (10_000, 200, "q99990")
    assert [r["item_id"] for r in items(client, "run=big1&run=big2&q=question 99999")["rows"]] == ["q99999"]


# -- a real server ---------------------------------------------------------------------


@contextlib.contextmanager
def view_server(runs: Path, *names: str):
    """`ledger view NAMES --port 0` in a subprocess; yields (process, printed URL, base URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "view", *names, "--runs-dir", str(runs), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(90, proc.kill)  # a hang guard, not a performance threshold
    guard.start()
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://\S+", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = match[0]
        parts = urlsplit(url)
        yield proc, url, f"{parts.scheme}://{parts.netloc}"
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def raw_get(base: str, path: str, host: str | None = None) -> int:
    """A GET whose request line is sent exactly as written (no client-side normalization)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or parts.netloc)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_real_server_serves_refuses_traversal_and_follows_a_live_run(runs, tmp_path):
    live_runs = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(runs / name, live_runs / name, ignore=shutil.ignore_patterns("index.lmdb"))
    dataset = tmp_path / "slow.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"s{i}", "prompt": f"answer: {EXPECTED[i]}", "expected": "A"}) + "\n"
                               for i in range(6)))
    slow = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "run", str(dataset), "--runs-dir", str(live_runs), "--run-id", "live",
                             "--parser", "choice", "--concurrency", "1", "--sim", json.dumps({"latency": 0.3})],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with view_server(live_runs, "a", "b") as (proc, url, base):
            assert url == base + "/?run=a&run=b" and base.startswith("http://127.0.0.1:")
            with httpx.Client(base_url=base, timeout=10) as http:
                page = http.get(url)
                assert page.status_code == 200 and "ledger view" in page.text
                data = http.get("/api/items", params=[("run", "a"), ("run", "b"), ("diff", "1")]).json()
                assert (data["items"], data["matching"]) == (N, 8)
                for path in TRAVERSALS:
                    assert raw_get(base, path) == 404, path
                assert http.post("/api/runs").status_code == 405
                assert raw_get(base, "/api/runs", host="evil.example") == 400  # DNS rebinding guard
                _watch_live_run(http, slow)
        assert proc.returncode == 0  # Ctrl-C stops it cleanly
    finally:
        if slow.poll() is None:
            slow.kill()
        slow.wait()
        slow.stderr.close()


def _watch_live_run(http: httpx.Client, slow: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60  # hang guard
    while True:
        info = http.get("/api/items", params={"run": "live"})
        if info.status_code == 200 and info.json()["runs"][0]["finished"] >= 1:
            break
        assert slow.poll() is None and time.monotonic() < deadline, "the slow run ended before it was seen running"
        time.sleep(0.1)
    seen = info.json()["runs"][0]
    assert seen["status"] == "running" and seen["finished"] < 6, seen
    assert slow.wait(60) == 0, slow.stderr.read()
    done = http.get("/api/items", params={"run": "live"}).json()["runs"][0]
    assert (done["status"], done["finished"], done["planned"]) == ("completed", 6, 6)
    assert {r["run_id"]: r["status"] for r in http.get("/api/runs").json()["runs"]}["live"] == "completed"


def test_view_refuses_unknown_runs_and_a_busy_port(runs):
    from typer.testing import CliRunner

    from llm_ledger.cli.app import _register, app

    _register()
    r = CliRunner().invoke(app, ["view", "nope", "--runs-dir", str(runs)])
    assert r.exit_code == 2 and "no run 'nope'" in r.stderr
    r = CliRunner().invoke(app, ["view", "--runs-dir", str(runs / "missing")])
    assert r.exit_code == 2 and "no runs directory" in r.stderr
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        r = CliRunner().invoke(app, ["view", "--runs-dir", str(runs), "--port", str(taken.getsockname()[1])])
    assert r.exit_code == 2 and "cannot listen on 127.0.0.1" in r.stderr


# -- issue 15: outcome categories, whole-token search, metadata, charts ----------------------


def test_outcome_categories_are_counted_and_filtered(client):
    ab = items(client, "run=a&run=b")
    assert ab["categories"] == ["only0", "only1", "allwrong", "differ", "wrong", "toreview"]
    # toreview (the review queue): answers differ or a reply failed to parse; none has a verdict here
    assert ab["counts"] == {"all": N, "only0": 8, "only1": 0, "allwrong": 0, "differ": 8, "wrong": 8, "toreview": 8}
    assert [r["item_id"] for r in items(client, "run=a&run=b&show=only0")["rows"]] == [f"i{i}" for i in range(2, 10)]
    bc = items(client, "run=b&run=c")  # b wrong on i2..i9, c on i0, i9..i11 (the same wrong letter at i9)
    assert bc["counts"] == {"all": N, "only0": 3, "only1": 7, "allwrong": 1, "differ": 10, "wrong": 11, "toreview": 10}
    for show, ids in (("only0", ["i0", "i10", "i11"]), ("only1", [f"i{i}" for i in range(2, 9)]), ("allwrong", ["i9"])):
        page = items(client, f"run=b&run=c&show={show}")
        assert (page["matching"], [r["item_id"] for r in page["rows"]]) == (len(ids), ids)
        assert all(show in r["categories"] for r in page["rows"])
    assert [r["item_id"] for r in items(client, "run=b&run=c&show=differ")["rows"]] == ["i0", *[f"i{i}" for i in range(2, 9)], "i10", "i11"]
    abc = items(client, "run=a&run=b&run=c")
    assert abc["categories"] == ["only0", "only1", "only2", "allwrong", "differ", "alldiffer", "wrong", "toreview"]
    assert (abc["counts"]["only0"], abc["counts"]["differ"], abc["counts"]["alldiffer"]) == (1, 11, 0)
    assert items(client, "run=a&run=b&diff=1")["counts"]["all"] == N  # counts ignore the category asked for
    assert items(client, "run=a&run=b&diff=1")["matching"] == 8  # the old link names still work
    assert client.get("/api/items?run=a&run=b&show=nonsense").status_code == 400


def test_search_matches_a_whole_token_when_asked(client):
    assert [r["item_id"] for r in items(client, "run=a&q=i1")["rows"]] == ["i1", "i10", "i11"]
    assert [r["item_id"] for r in items(client, "run=a&q=i1&word=1")["rows"]] == ["i1"]
    assert [r["item_id"] for r in items(client, "run=a&q=%22i1%22")["rows"]] == ["i1"]  # "i1" in quotes
    assert [r["item_id"] for r in items(client, "run=a&q=%22Question i1%22")["rows"]] == ["i1"]  # in the prompt
    counts = items(client, "run=a&run=b&q=i1&word=1")["counts"]
    assert (counts["all"], counts["differ"]) == (1, 0)  # counted within the search


def test_rows_carry_the_prompt_and_runs_come_newest_first(client, runs):
    row = items(client, "run=a&run=b")["rows"][3]
    assert row["prompt"] == f"Question i3? answer: {HINTS['a'][3]}"
    listed = [r["run_id"] for r in client.get("/api/runs").json()["runs"]]
    started = {name: next(iter_events(str(runs / name / "events.log"))).ts for name in listed}
    assert listed == sorted(started, key=started.get, reverse=True)


def test_metadata_from_the_dataset_and_from_the_rows(tmp_path):
    data, runs = tmp_path / "meta.jsonl", tmp_path / "runs"
    topics = ["geo", "art", "geo", "math", "geo", "art"]
    data.write_text("".join(json.dumps({"id": f"m{i}", "prompt": f"Q{i} answer: {'AB'[i % 2]}", "expected": "A", "topic": t,
                                        "meta": {"k": i}}) + "\n" for i, t in enumerate(topics)))
    done = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "m", "--parser", "choice", "--transport", "simulator")
    assert done.returncode == 0, done.stderr
    client = TestClient(create_app(str(runs)))
    page = items(client, "run=m")
    assert page["fields"] == ["meta", "topic"] and page["notes"] == []  # by name, as the export's columns
    assert page["values"]["topic"] == [["art", 2], ["geo", 3], ["math", 1]]
    assert page["rows"][0]["metadata"] == {"topic": "geo", "meta": '{"k":0}'}
    assert [r["item_id"] for r in items(client, "run=m&m.topic=geo")["rows"]] == ["m0", "m2", "m4"]
    assert [r["item_id"] for r in items(client, "run=m&q=math")["rows"]] == ["m3"]  # search sees metadata
    assert [r["item_id"] for r in items(client, "run=m&sort=m.topic")["rows"]][:2] == ["m1", "m5"]
    charts = client.get("/api/charts?run=m").json()
    assert (charts["group"], charts["groupable"]) == ("topic", ["topic"])
    groups = {g["value"]: (g["correct"], g["scored"]) for g in charts["runs"][0]["groups"]}
    assert groups == {"geo": (3, 3), "art": (0, 2), "math": (0, 1)}  # even ids answer A (right), odd ones B
    assert client.get("/api/charts?run=m&group=nope").status_code == 400

    data.write_text(data.read_text() + json.dumps({"id": "extra", "prompt": "x"}) + "\n")  # edited since the run
    edited = items(TestClient(create_app(str(runs))), "run=m")
    # the rows carry their metadata (from the log): a dataset edited since changes nothing
    assert edited["fields"] == ["meta", "topic"] and edited["notes"] == []

    rows = runs / "m" / "responses.jsonl"  # rows that carry their metadata (as exports will write them) come first
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    rows.write_text("".join(json.dumps({**r, "metadata": {"level": "hard"}}) + "\n" for r in lines))
    assert items(TestClient(create_app(str(runs))), "run=m")["rows"][0]["metadata"] == {"level": "hard"}


def test_charts_api_has_accuracy_with_ci_latency_and_the_timeline(client, runs):
    from llm_ledger.projections.summary import percentile, wilson

    data = client.get("/api/charts?run=a&run=b").json()
    assert data["group"] is None and data["groupable"] == []
    a, b = data["runs"]
    assert (a["accuracy"]["correct"], a["accuracy"]["scored"], a["accuracy"]["ci95"]) == (12, 12, wilson(12, 12))
    assert (b["accuracy"]["correct"], b["accuracy"]["ci95"]) == (4, wilson(4, 12))
    summary = json.loads((runs / "b" / "summary.json").read_text())
    assert b["latency"]["n"] == sum(b["latency"]["counts"]) == 12
    assert b["latency"]["p50"] / 1000 == pytest.approx(summary["latency_s"]["p50"], abs=1e-6)  # as summary.json says it
    latencies = sorted(e.latency * 1000 for e in iter_events(str(runs / "b" / "events.log")) if e.__class__.__name__ == "Response")
    assert b["latency"]["p90"] == percentile(latencies, 90)
    assert b["timeline"]["totals"] == {"requests": 12, "replies": 12, "rate_limited": 0, "errors": 0}
    assert sum(x["requests"] for x in b["timeline"]["bins"]) == 12 and len(b["timeline"]["bins"]) <= 60
    assert b["status"] == "completed" and b["error"] is None
