"""The viewer's review mode in a real browser: `ledger view --review` in a subprocess, Debian's
headless Chromium driven by Playwright (skipped, saying why, where either is missing).

The runs are test_review_view's (p, and q: two items asked again, one answered otherwise, one
unparseable). The page shows the "To review" queue; a click on a row's ✗ for run q appends a
`reviewed` event (read back from the log), the row gets its verdict mark and leaves the
queue; the note form in the detail drawer records a note the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_ledger.ledger.events import Reviewed
from llm_ledger.ledger.reader import iter_events
from test_review_view import make_runs
from test_view import view_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`, as .ci/run does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: pip install playwright")
expect = sync_api.expect


def reviews(runs: Path, run: str) -> list[Reviewed]:
    return [e for e in iter_events(str(runs / run / "events.log")) if isinstance(e, Reviewed)]


def test_review_buttons_append_verdicts_and_empty_the_queue(tmp_path):
    runs = make_runs(tmp_path)
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
