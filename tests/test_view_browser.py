"""`ledger view` in a real browser: Debian's headless Chromium driven by Playwright.

Playwright's own browser download is not used: the test launches /usr/bin/chromium
(`.ci/run` installs it with apt). It opens the page that `ledger view a b` prints, checks the
side-by-side table, toggles the disagreement filter and counts the rows, opens one item's
detail, and saves a screenshot. Skipped, saying why, only where Chromium or the playwright
package is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_compare import EXPECTED, HINTS, N, shared_runs
from test_view import view_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`, as .ci/run does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: pip install playwright")

DIFFS = sum(HINTS["a"][i] != HINTS["b"][i] for i in range(N))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return shared_runs(tmp_path_factory)


def test_the_page_shows_runs_side_by_side_filters_and_details(runs, tmp_path):
    with view_server(runs, "a", "b") as (_, url, base), sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.set_default_timeout(15_000)

            page.goto(url)
            rows = page.locator("#items-table tbody tr")
            rows.first.wait_for()
            assert page.locator("#items-table th.run-col").all_inner_texts() == ["a", "b"]
            assert rows.count() == N
            first = rows.nth(0).locator(".answer").all_inner_texts()
            assert first == [HINTS["a"][0], HINTS["b"][0]]
            fifth = rows.nth(5).locator(".answer").all_inner_texts()
            assert fifth == [HINTS["a"][5], HINTS["b"][5]] and fifth[0] != fifth[1]
            assert "The answer is" in rows.nth(5).inner_text()
            assert page.locator("#items-table tbody tr.disagree").count() == DIFFS
            assert page.locator("#counts").inner_text() == f"{N} items"

            page.check("#only-diff")
            sync_api.expect(rows).to_have_count(DIFFS)  # (the page's CSP forbids wait_for_function's eval)
            assert page.locator("#items-table tbody tr.disagree").count() == DIFFS
            assert page.locator("#counts").inner_text() == f"{DIFFS} of {N} items match"
            assert "diff=1" in page.url
            page.screenshot(path=str(tmp_path / "table.png"), full_page=True)

            target = page.locator("#items-table tbody tr[data-item='i5']")
            target.click()
            detail = page.locator("#detail")
            detail.locator(".story").nth(1).wait_for()
            assert detail.locator(".story h3").all_inner_texts() == ["a", "b"]
            story_b = detail.locator(".story").nth(1)
            assert f"Question i5? answer: {HINTS['b'][5]}" in story_b.inner_text()
            assert story_b.locator(".ev-type").all_text_contents() == ["started", "response", "parsed"]
            assert EXPECTED[5] in story_b.locator(".facts").inner_text()
            shot = tmp_path / "view.png"
            page.screenshot(path=str(shot))
            assert shot.exists() and shot.stat().st_size > 10_000

            page.keyboard.press("Escape")
            detail.wait_for(state="hidden")
            page.uncheck("#only-diff")
            sync_api.expect(rows).to_have_count(N)

            page.goto(base + "/")
            page.locator("#runs-table tbody tr").first.wait_for()
            assert page.locator("#runs-table tbody tr").count() == 4
            page.screenshot(path=str(tmp_path / "runs.png"))
            assert problems == []
        finally:
            browser.close()
