"""The viewer's review mode over HTTP (starlette's TestClient): `POST /api/review` appends the
same `reviewed` event as `ledger review`, and exists only with `--review`.

One real run "p" on the simulator (six items, the `choice` parser: the machine gets each one
right); "q" is a copy of it where two items were asked again (as a resume re-running them
would): q1 answered with another letter (the runs disagree) and q2 with a reply the parser
could not read (a parse failure). Those two rows are the "to review" queue.

The last test drives the page in a real browser: `ledger view --review` in a subprocess,
Debian's headless Chromium through Playwright (skipped, saying why, where either is
missing): a click on a row's ✗ appends a `reviewed` event (read back from the log), the row
leaves the queue, and the drawer's note form records a note the same way.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import run_cli
from llm_ledger.ledger.events import Parsed, Response, Reviewed, Started
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import RunLock
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.replay import replay
from llm_ledger.viewer.app import create_app
from test_view import view_server

LETTERS = "ABCDAB"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def reviews(runs: Path, run: str) -> list[Reviewed]:
    return [e for e in iter_events(str(runs / run / "events.log")) if isinstance(e, Reviewed)]


def reask(run: Path, item: str, text: str, parsed: Parsed) -> None:
    with LogWriter.open(str(run / "events.log")) as writer:
        writer.append_many([Started(item_id=item, attempt=2, request={"messages": [{"role": "user", "content": "again"}]},
                                    expected=LETTERS[int(item[1:])]),
                            Response(item_id=item, attempt=2, text=text), parsed])
    replay(RunPaths(str(run)), full=True)


def make_runs(root: Path) -> Path:
    """Runs p and q as the module doc says."""
    data, runs = root / "qa.jsonl", root / "runs"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}? answer: {x}", "expected": x}) + "\n"
                            for i, x in enumerate(LETTERS)))
    done = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "p", "--parser", "choice")
    assert done.returncode == 0, done.stderr
    shutil.copytree(runs / "p", runs / "q")
    reask(runs / "q", "q1", "The answer is C", Parsed(item_id="q1", parser="choice", value="C"))
    reask(runs / "q", "q2", "I would rather not say", Parsed(item_id="q2", parser="choice", ok=False, error="no choice A-D found"))
    return runs


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("review-view"))


@pytest.fixture
def runs(base, tmp_path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(base, copy)
    return copy


def items(client: TestClient, query: str = "run=p&run=q") -> dict:
    r = client.get("/api/items?" + query)
    assert r.status_code == 200, r.text
    return r.json()


def row(data: dict, item: str) -> dict:
    return next(r for r in data["rows"] if r["item_id"] == item)


def last_lines(run: Path, *names: str) -> list[dict]:
    """The last line of each named item in the run's responses.jsonl."""
    found = {r["item_id"]: r for r in map(json.loads, (run / "responses.jsonl").read_text().splitlines())}
    return [found[n] for n in names]


def post(client: TestClient, **body):
    return client.post("/api/review", json=body)


def test_without_review_mode_there_is_no_endpoint_that_writes(runs):
    client = TestClient(create_app(str(runs)))
    log = (runs / "q" / "events.log").read_bytes()
    assert post(client, run="q", item="q1", verdict="correct").status_code == 404
    assert client.put("/api/review").status_code == 404
    assert items(client)["review_mode"] is False
    assert (runs / "q" / "events.log").read_bytes() == log


def test_review_mode_appends_the_event_and_the_page_data_follow(runs):
    client = TestClient(create_app(str(runs), review=True))
    data = items(client)
    assert data["review_mode"] is True
    assert data["counts"]["toreview"] == 2 and data["counts"]["differ"] == 2
    assert [r["item_id"] for r in items(client, "run=p&run=q&show=toreview")["rows"]] == ["q1", "q2"]
    p, q = data["runs"]
    assert (p["accuracy"], q["accuracy"]) == (1.0, 4 / 6) and q["reviewed"]["accuracy"] == 4 / 6
    assert client.get("/api/review").status_code == 405

    # q2's reply could not be parsed; a person reads it and says it is wrong; q1's "C" is wrong too
    r = post(client, run="q", item="q2", verdict="incorrect", note="declines to answer")
    assert r.status_code == 200, r.text
    assert r.json()["reviewed"]["who"] == getpass.getuser()
    event = [e for e in iter_events(str(runs / "q" / "events.log")) if isinstance(e, Reviewed)][-1]
    assert (event.item_id, event.verdict, event.note) == ("q2", "incorrect", "declines to answer")
    assert event.reply_sha256 == hashlib.sha256(b"I would rather not say").hexdigest()
    # p's answer to q1 is right and so is the machine: a verdict that agrees changes no figure
    assert post(client, run="p", item="q1", verdict="correct").status_code == 200
    data = items(client)
    answers = row(data, "q2")["answers"]
    assert answers[1]["review"]["verdict"] == "incorrect" and answers[1]["correct_reviewed"] is False
    assert row(data, "q1")["answers"][0]["review"]["who"] == getpass.getuser()
    assert data["counts"]["toreview"] == 1  # q2 is done (only q's reply failed to parse); q1: q's answer is not judged yet
    assert post(client, run="q", item="q1", verdict="correct", note="C is fine here").status_code == 200
    data = items(client)
    assert data["counts"]["toreview"] == 0
    q = data["runs"][1]
    assert q["accuracy"] == 4 / 6 and q["reviewed"]["accuracy"] == 5 / 6 and q["reviewed"]["verdicts"] == 2
    assert [(r["correct"], r["correct_reviewed"]) for r in last_lines(runs / "q", "q1", "q2")] == [(False, True), (False, False)]


def test_a_verdict_carries_to_the_other_run_with_the_same_reply(runs):
    client = TestClient(create_app(str(runs), review=True))
    assert post(client, run="p", item="q3", verdict="incorrect", note="the key is wrong").status_code == 200
    data = items(client)
    carried = row(data, "q3")["answers"][1]
    assert carried["review"]["carried"] is True and carried["review"]["run_id"] == "p"
    assert (carried["correct"], carried["correct_reviewed"]) == (True, False)
    assert data["runs"][1]["reviewed"]["carried"] == 1 and data["runs"][1]["reviewed"]["correct"] == 3
    # q's own files are a fold of its own log: no review there
    assert [(r["correct"], r["correct_reviewed"]) for r in last_lines(runs / "q", "q3")] == [(True, True)]
    assert (runs / "q" / "reviews.jsonl").read_bytes() == b""


def test_bad_reviews_are_refused_and_write_nothing(runs):
    client = TestClient(create_app(str(runs), review=True))
    log = runs / "q" / "events.log"
    before = log.read_bytes()
    assert post(client, run="q", item="nope", verdict="correct").json() == {"error": "run q has no item 'nope'"}
    assert post(client, run="q", item="q1", verdict="maybe").status_code == 400
    assert post(client, run="zz", item="q1", verdict="correct").status_code == 404
    assert client.post("/api/review", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/api/review", content=b"run=q&item=q1&verdict=correct",
                       headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 403
    assert client.post("/api/review", json={"run": "q", "item": "q1", "verdict": "correct"},
                       headers={"origin": "http://evil.example"}).status_code == 403
    lock = RunLock.acquire(str(log) + ".lock")  # as a live run holds it
    try:
        r = post(client, run="q", item="q1", verdict="correct")
    finally:
        lock.release()
    assert r.status_code == 409 and "is live" in r.json()["error"]
    assert log.read_bytes() == before


def test_review_buttons_append_verdicts_and_empty_the_queue(runs, tmp_path):
    """In Chromium: the "To review" queue, a row's ✗ button, the drawer's note form."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`, as .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: pip install playwright")
    expect = sync_api.expect
    problems: list[str] = []
    with view_server(runs, "--review") as (_, _url, base), sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.set_default_timeout(15_000)
            page.goto(base + "/?run=p&run=q&show=toreview")
            rows = page.locator("#items-table tbody tr")
            expect(rows).to_have_count(2)
            expect(page.locator("#chips button[data-show='toreview'] .count")).to_have_text("2")
            # q2: q's reply could not be parsed; mark it wrong from the table
            q2 = page.locator("#items-table tbody tr[data-item='q2'] td[data-run='q']")
            q2.locator("button[data-verdict='incorrect']").click()
            expect(rows).to_have_count(1)
            assert [(e.item_id, e.verdict) for e in reviews(runs, "q")] == [("q2", "incorrect")]
            # q1: the runs disagree; judge both answers, q's with a note from the detail drawer
            page.locator("#items-table tbody tr[data-item='q1'] td[data-run='p'] button[data-verdict='correct']").click()
            expect(page.locator("#items-table tbody tr[data-item='q1'] td[data-run='p'] .review-mark")).to_have_text("✓ reviewed")
            page.locator("#items-table tbody tr[data-item='q1'] .item-id").click()
            form = page.locator("#detail .review-form[data-run='q']")
            form.locator("input.review-note").fill("C is also accepted")
            form.locator("button[data-verdict='correct']").click()
            expect(rows).to_have_count(0)
            expect(page.locator("#detail section.story[data-run='q'] .review-said")).to_contain_text("C is also accepted")
            assert [(e.item_id, e.verdict, e.note) for e in reviews(runs, "q")][-1] == ("q1", "correct", "C is also accepted")
            expect(page.locator(".card .reviewed-acc").nth(1)).to_have_attribute("data-reviewed", str(5 / 6))
            page.screenshot(path=str(tmp_path / "review.png"))
        finally:
            browser.close()
    assert problems == []
