"""What `ledger view` shows a person, in a real browser (Debian's Chromium via Playwright),
next to what `ledger compare` says of the same runs.

* Issue 11.9: the detail panel's latency is the sum of the item's replies (the simulator
  waits ~0.2 s per reply), not ``0.000 s``; tokens are shown too.
* Issue 11.13: runs that do not hold the same items get a banner with the sentence
  `ledger compare` prints ("the runs share N of M items"); with none shared, compare refuses
  (exit 2, the same sentence) and the page still opens, says so, and marks the other run's
  cells "not in this run" (not "not finished": that run has nothing left to do).

* Issue 11.8: the run list's badge of a run that finished with failures says so.

Runs: "p" on items q0..q9, "q" on q5..q14 (5 shared), "z" on z0..z4 (none shared), "fx"
with one item that fails; real `ledger run` subprocesses on the built-in simulator.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import run_cli
from test_view import view_server
from llm_ledger.viewer.app import create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
IDS = {"p": [f"q{i}" for i in range(10)], "q": [f"q{i}" for i in range(5, 15)], "z": [f"z{i}" for i in range(5)]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("view-page")
    runs = root / "runs"
    for name, ids in IDS.items():
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"id": i, "prompt": f"Question {i}? answer: A", "expected": "A"}) + "\n" for i in ids))
        done = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", name, "--parser", "choice",
                       "--concurrency", "10", "--sim", json.dumps({"latency": 0.2}))
        assert done.returncode == 0, done.stdout + done.stderr
    data = root / "fx.jsonl"  # one item too long for --max-context: it fails, unsent
    data.write_text("".join(json.dumps({"id": f"f{i}", "prompt": "x " * (400 if i == 1 else 1) + "answer: A", "expected": "A"}) + "\n"
                            for i in range(4)))
    done = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "fx", "--parser", "choice", "--max-context", "200")
    assert done.returncode == 1, done.stdout + done.stderr
    return runs


def _row_latency(runs: Path, run: str, item: str) -> float:
    for line in (runs / run / "responses.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["item_id"] == item:
            return row["latency"]
    raise AssertionError(item)


# -- the API and the CLI say the same -----------------------------------------------------


def test_api_detail_has_the_replies_latency_and_tokens(runs):
    data = TestClient(create_app(str(runs))).get("/api/item?run=p&item=q3").json()
    story = data["runs"][0]
    assert story["latency_s"] == pytest.approx(_row_latency(runs, "p", "q3")) and story["latency_s"] > 0.1
    assert story["usage"]["completion_tokens"] > 0


def test_compare_and_the_api_state_the_same_coverage(runs):
    client = TestClient(create_app(str(runs)))
    api = client.get("/api/items?run=p&run=q").json()
    assert api["coverage"]["message"] == "the runs share 5 of 15 items; not in every run: p 5, q 5"
    assert (api["items"], api["disagreements"]) == (15, 0)
    cmp = run_cli("compare", "p", "q", "--json", "--runs-dir", str(runs))
    assert cmp.returncode == 0, cmp.stderr
    assert json.loads(cmp.stdout)["coverage"] == api["coverage"]
    none = client.get("/api/items?run=p&run=z").json()
    assert none["coverage"]["message"] == "the runs share 0 of 15 items; not in every run: p 10, z 5"
    refused = run_cli("compare", "p", "z", "--runs-dir", str(runs))
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("runs p, z: the runs share 0 of 15 items; not in every run: p 10, z 5: nothing to compare")
    assert refused.stderr.count("\n") == 1


# -- what the page shows ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _page(browser, problems: list[str]):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.set_default_timeout(15_000)
    return page


def test_detail_panel_shows_the_real_latency(runs, browser, tmp_path):
    problems: list[str] = []
    with view_server(runs, "p") as (_, url, _base):
        page = _page(browser, problems)
        page.goto(url)
        page.locator("#items-table tbody tr[data-item='q3']").click()
        facts = page.locator("#detail .story .facts")
        facts.wait_for()
        text = facts.inner_text()
        latency = _row_latency(runs, "p", "q3")
        assert f"{latency:.3f} s" in text and "0.000 s" not in text, text
        assert " in / " in text and " out" in text  # tokens
        page.screenshot(path=str(tmp_path / "detail.png"))
    assert problems == []


def test_runs_on_different_items_get_the_compare_sentence_in_a_banner(runs, browser, tmp_path):
    problems: list[str] = []
    with view_server(runs, "p", "q") as (_, url, base):
        page = _page(browser, problems)
        page.goto(url)
        banner = page.locator("#coverage")
        banner.wait_for()
        assert banner.inner_text() == ("The runs share 5 of 15 items; not in every run: p 5, q 5: "
                                       "disagreements and agreement count only the 5 shared.")
        assert "of 5 shared items" in page.locator(".card-diff").inner_text()
        row = page.locator("#items-table tbody tr[data-item='q12']")
        assert "not in this run" in row.inner_text() and "not finished" not in row.inner_text()
        page.screenshot(path=str(tmp_path / "partial.png"), full_page=True)

        page.goto(base + "/?run=p&run=z")
        banner.wait_for()
        assert banner.inner_text() == ("The runs share 0 of 15 items; not in every run: p 10, z 5: "
                                       "nothing to compare (ledger compare refuses these runs).")
        assert page.locator(".card-diff .big").inner_text() == "–"
        assert page.locator("#items-table tbody tr").count() == 15
        assert page.get_by_text("not in this run").count() == 15

        page.goto(base + "/?run=p")  # one run: nothing to share, no banner
        page.locator("#items-table tbody tr").first.wait_for()
        assert page.locator("#coverage").is_hidden()
    assert problems == []


def test_run_list_badge_of_a_run_with_failures(runs, browser):
    problems: list[str] = []
    with view_server(runs) as (_, url, _base):
        page = _page(browser, problems)
        page.goto(url)
        def badge_of(run: str):
            link = page.locator("a.run-link", has_text=re.compile(f"^{run}$"))
            return page.locator("#runs-table tbody tr").filter(has=link).locator(".badge")

        badge = badge_of("fx")
        badge.wait_for()
        assert badge.inner_text() == "completed, 1 failed"
        assert badge.get_attribute("class") == "badge status-completed_with_failures"  # not the green "completed"
        assert badge_of("p").inner_text() == "completed"
    assert problems == []


def test_a_damaged_log_is_said_in_the_detail_panel_not_a_500(tmp_path):
    """The item API of a run whose log is damaged in the middle answers 200 with the error."""
    import shutil

    from llm_ledger.ledger.reader import iter_frames

    runs = tmp_path / "runs"
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"id": "q{i}", "prompt": "answer: A"}}\n' for i in range(6)))
    assert run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "d").returncode == 0
    log = runs / "d" / "events.log"
    frames = list(iter_frames(str(log)))
    raw = bytearray(log.read_bytes())
    raw[frames[len(frames) // 2].offset + 20] ^= 0xFF
    log.write_bytes(bytes(raw))
    shutil.rmtree(runs / "d" / "conversations")  # the story is read from the log
    response = TestClient(create_app(str(runs))).get("/api/item?run=d&item=q5")
    assert response.status_code == 200
    assert "corrupt" in response.json()["runs"][0]["error"]
