"""`ledger view` in a real browser: Debian's headless Chromium driven by Playwright.

Playwright's own browser download is not used: the module launches /usr/bin/chromium once
(`.ci/run` installs it with apt) and every test opens pages in it. Skipped, saying why, only
where Chromium or the playwright package is missing.

The runs are real `ledger run`s on the built-in simulator, made to differ with
``--sim-accuracy``: "a" (accuracy 0.8, seed 1, 20% 429s) and "b" (accuracy 0.6, seed 6) on
22 items with a ``topic`` and a ``level`` (ids w0..w19, w170, w171), and "fx", whose one
over-long item fails (the three at once; the list's order is checked against their logs). Which answers are right is known in advance from the simulator's reply
function (``reply_text``), so the page's counts, filtered rows and chart bars are checked
against numbers computed here, not read back from the page. The runs of `test_compare`
("a".."d" there) check the old side-by-side assertions.

Each test saves screenshots under its pytest tmp dir (list.png, filter-*.png, detail.png,
charts.png, ...), for a person to look at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.events import Failed, ResponseView, Started
from llm_ledger.ledger.reader import iter_events
from llm_ledger.projections.compare import key_order
from llm_ledger.runners.simulator import reply_text
from test_compare import EXPECTED, HINTS, N, shared_runs
from test_view import view_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`, as .ci/run does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: pip install playwright")
expect = sync_api.expect  # (the page's CSP forbids wait_for_function's eval: expect() polls instead)

DIFFS = sum(HINTS["a"][i] != HINTS["b"][i] for i in range(N))
TOPICS = ["geography", "history", "science"]
IDS = [f"w{i}" for i in range(20)] + ["w170", "w171"]
RUNS = {"a": (0.8, {"seed": 1, "latency": 0.02, "latency_jitter": 0.02, "rate_429": 0.2, "retry_after": 0.01}),
        "b": (0.6, {"seed": 6, "latency": 0.04, "latency_jitter": 0.03})}


def _record(i: int, item: str) -> dict:
    return {"id": item, "prompt": f"Question {item} about {TOPICS[i % 3]}? answer: {'ABCD'[i % 4]}",
            "expected": "ABCD"[i % 4], "topic": TOPICS[i % 3], "level": ["easy", "hard"][i % 2]}


def _right(run: str) -> dict[str, bool]:
    """Which items the simulator answers right in a run (its reply function, not the run)."""
    accuracy, sim = RUNS[run]
    return {r["id"]: reply_text(r["prompt"], sim["seed"], accuracy) == f"The answer is {r['expected']}"
            for r in (_record(i, x) for i, x in enumerate(IDS))}


RIGHT = {run: _right(run) for run in RUNS}
ONLY_A = [x for x in IDS if RIGHT["a"][x] and not RIGHT["b"][x]]
ONLY_B = [x for x in IDS if RIGHT["b"][x] and not RIGHT["a"][x]]
BOTH_WRONG = [x for x in IDS if not RIGHT["a"][x] and not RIGHT["b"][x]]
TOPIC = {x: TOPICS[i % 3] for i, x in enumerate(IDS)}


def _answer(run: str, item: str) -> str:
    """The letter the simulator gives (the choice parser reads it back)."""
    record = _record(IDS.index(item), item)
    return reply_text(record["prompt"], RUNS[run][1]["seed"], RUNS[run][0]).rsplit(" ", 1)[1]


DIFFER = [x for x in IDS if _answer("a", x) != _answer("b", x)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("view-browser")
    data, runs, fx = root / "qa.jsonl", root / "runs", root / "fx.jsonl"
    data.write_text("".join(json.dumps(_record(i, x)) + "\n" for i, x in enumerate(IDS)))
    # fx: one item too long for --max-context fails, unsent
    fx.write_text("".join(json.dumps({"id": f"f{i}", "prompt": "x " * (400 if i == 1 else 1) + "answer: A", "expected": "A"}) + "\n"
                          for i in range(4)))
    commands = {name: ["run", str(data), "--runs-dir", str(runs), "--run-id", name, "--parser", "choice", "--concurrency", "8",
                       "--sim-accuracy", str(accuracy), "--sim", json.dumps(sim)] for name, (accuracy, sim) in RUNS.items()}
    commands["fx"] = ["run", str(fx), "--runs-dir", str(runs), "--run-id", "fx", "--parser", "choice", "--max-context", "200",
                      "--transport", "simulator"]
    with ThreadPoolExecutor(3) as pool:
        done = dict(zip(commands, pool.map(lambda args: run_cli(*args), commands.values())))
    assert [done[n].returncode for n in ("a", "b", "fx")] == [0, 0, 1], {n: d.stderr for n, d in done.items()}
    return runs


@pytest.fixture(scope="module")
def server(runs):
    with view_server(runs) as (_, _url, base):
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; any console error or uncaught exception fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.set_default_timeout(15_000)
    yield page
    context.close()
    assert problems == []


def row_ids(page) -> list[str]:
    return page.locator("#items-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.item)")


def natural(ids: list[str]) -> list[str]:
    return sorted(ids, key=lambda x: key_order((x, 0)))


def chip(page, name: str):
    return page.locator(f"#chips button[data-show='{name}']")


def wait_rows(page, ids: list[str]) -> None:
    rows = page.locator("#items-table tbody tr")
    expect(rows).to_have_count(len(ids))
    if ids:
        expect(rows.first).to_have_attribute("data-item", ids[0])
        expect(rows.last).to_have_attribute("data-item", ids[-1])
    assert row_ids(page) == ids


# -- the run list ----------------------------------------------------------------------------


def test_run_list_is_newest_first_and_a_run_with_failures_is_not_green(server, runs, page, tmp_path):
    page.goto(server + "/")
    rows = page.locator("#runs-table tbody tr")
    expect(rows).to_have_count(3)
    started = {run: next(iter_events(str(runs / run / "events.log"))).ts for run in ("a", "b", "fx")}
    newest_first = sorted(started, key=started.get, reverse=True)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.run)") == newest_first
    badge = {run: page.locator(f"#runs-table tbody tr[data-run='{run}'] .badge") for run in started}
    assert [badge[r].inner_text() for r in ("fx", "a", "b")] == ["completed, 1 failed", "completed", "completed"]
    assert badge["fx"].get_attribute("class") == "badge status-completed_with_failures"
    green = badge["a"].evaluate("b => getComputedStyle(b).color")
    assert badge["fx"].evaluate("b => getComputedStyle(b).color") != green  # not the green of "completed"
    assert page.locator("#runs-table tbody tr[data-run='fx'] .progress .fill.failed").count() == 1
    page.screenshot(path=str(tmp_path / "list.png"))


# -- side by side ---------------------------------------------------------------------------


def test_side_by_side_counts_each_outcome_and_filters_by_it(server, page, tmp_path):
    page.goto(server + "/?run=a&run=b")
    wait_rows(page, IDS[:20] + ["w170", "w171"])
    assert page.locator("#items-table thead th.run-col").all_inner_texts() == ["a", "b"]
    heads = page.locator("#items-table thead tr").first.locator("th").all_inner_texts()
    assert heads[:5] == ["Item ▲", "Prompt", "level", "topic", "Expected"]  # metadata by name, as exports
    counts = {b.get_attribute("data-show"): int(b.locator(".count").inner_text()) for b in page.locator("#chips button").all()}
    assert counts == {"": 22, "only0": len(ONLY_A), "only1": len(ONLY_B), "allwrong": len(BOTH_WRONG),
                      "differ": len(DIFFER), "wrong": len([x for x in IDS if not (RIGHT["a"][x] and RIGHT["b"][x])]),
                      "toreview": len(DIFFER)}  # the review queue: no reply failed to parse, none reviewed
    assert [chip(page, n).inner_text().rsplit(" ", 1)[0] for n in ("only0", "only1", "allwrong", "differ")] == \
        ["Only a right", "Only b right", "Both wrong", "All differ"]
    page.screenshot(path=str(tmp_path / "side-by-side.png"))
    for name, ids in (("only0", ONLY_A), ("only1", ONLY_B), ("allwrong", BOTH_WRONG), ("differ", DIFFER)):
        chip(page, name).click()
        wait_rows(page, natural(ids))
        assert f"show={name}" in page.url and chip(page, name).get_attribute("aria-pressed") == "true"
        assert page.locator("#counts").inner_text() == f"{len(ids)} of 22 items match"
        page.screenshot(path=str(tmp_path / f"filter-{name}.png"), full_page=True)
    chip(page, "differ").click()  # pressed again: all rows
    wait_rows(page, IDS)
    assert "show=" not in page.url


def test_metadata_filter_search_and_a_shared_link(server, page, tmp_path):
    page.goto(server + "/?run=a&run=b")
    wait_rows(page, IDS)
    page.select_option("select[data-field='topic']", "history")
    history = [x for x in IDS if TOPIC[x] == "history"]
    wait_rows(page, history)
    assert "m.topic=history" in page.url
    assert page.locator("#items-table tbody td.meta-col").all_inner_texts()[1::2] == ["history"] * len(history)
    assert int(chip(page, "only0").locator(".count").inner_text()) == len([x for x in ONLY_A if x in history])
    page.screenshot(path=str(tmp_path / "filter-topic.png"), full_page=True)

    page.goto(server + "/?run=a&run=b")
    wait_rows(page, IDS)
    page.fill("#search", "w17")
    wait_rows(page, ["w17", "w170", "w171"])  # a substring by default
    page.check("#whole-word")
    wait_rows(page, ["w17"])  # a whole token: w17, not w170
    assert "q=w17" in page.url and "word=1" in page.url
    page.screenshot(path=str(tmp_path / "search-whole-word.png"))
    page.uncheck("#whole-word")
    page.fill("#search", '"w17"')  # quotes ask for a whole token too
    wait_rows(page, ["w17"])

    # every filter is in the URL: the same view opens from a link
    shared = server + "/?run=a&run=b&show=only0&m.topic=science"
    page.goto(shared)
    science = natural([x for x in ONLY_A if TOPIC[x] == "science"])
    wait_rows(page, science)
    assert chip(page, "only0").get_attribute("aria-pressed") == "true"
    assert page.locator("select[data-field='topic']").input_value() == "science"


def test_prompt_column_sticky_header_and_keyboard(server, page, tmp_path):
    page.set_viewport_size({"width": 1400, "height": 600})
    page.goto(server + "/?run=a&run=b")
    wait_rows(page, IDS)
    prompt = page.locator("#items-table tbody tr[data-item='w5'] .prompt")
    full = _record(5, "w5")["prompt"]
    assert prompt.get_attribute("title") == full  # the whole prompt on hover
    page.locator("#items-table tbody tr[data-item='w5'] button.expand").click()
    assert "expanded" in prompt.get_attribute("class") and prompt.inner_text() == full
    assert page.locator("#detail").is_hidden()  # expanding is not opening

    wrap = page.locator(".table-wrap.sticky")
    wrap.evaluate("w => { w.scrollTop = w.scrollHeight; }")
    page.wait_for_timeout(50)
    head = page.locator("#items-table thead th").first.bounding_box()
    box = wrap.bounding_box()
    assert abs(head["y"] - box["y"]) < 2, (head, box)  # the header stays at the top of the scrolled table
    assert page.locator("#items-table tbody tr[data-item='w171']").is_visible()
    page.screenshot(path=str(tmp_path / "sticky-header.png"))
    wrap.evaluate("w => { w.scrollTop = 0; }")

    for _ in range(3):
        page.keyboard.press("j")
    expect(page.locator("#items-table tbody tr.cursor")).to_have_attribute("data-item", "w2")
    page.keyboard.press("k")
    expect(page.locator("#items-table tbody tr.cursor")).to_have_attribute("data-item", "w1")
    page.keyboard.press("Enter")
    detail = page.locator("#detail")
    expect(detail.locator(".story h3")).to_have_count(2)
    expect(page.locator("#detail-title")).to_contain_text("w1")
    assert "item=w1" in page.url
    page.keyboard.press("j")  # the open drawer follows the cursor
    expect(page.locator("#detail-title")).to_contain_text("w2")
    page.keyboard.press("Escape")
    detail.wait_for(state="hidden")
    assert "item=" not in page.url
    expect(page.locator("#items-table tbody tr.cursor")).to_have_attribute("data-item", "w2")


def test_detail_view(server, page, tmp_path):
    item = ONLY_A[0]
    page.goto(server + f"/?run=a&run=b&show=only0&item={item}")
    detail = page.locator("#detail")
    expect(detail.locator(".story h3")).to_have_count(2)
    title = page.locator("#detail-title").inner_text()
    assert item in title and f"topic: {TOPIC[item]}" in title
    stories = detail.locator(".story")
    expected = _record(IDS.index(item), item)["expected"]
    assert stories.nth(0).locator(".facts .answer").inner_text() == expected
    assert stories.nth(1).locator(".facts .answer").inner_text() == _answer("b", item) != expected
    assert stories.nth(1).locator(".mark.bad").count() == 1
    page.screenshot(path=str(tmp_path / "detail.png"))


# -- charts -------------------------------------------------------------------------------


def _log_counts(runs: Path, run: str) -> dict[str, int]:
    events = list(iter_events(str(runs / run / "events.log")))
    return {"requests": sum(isinstance(e, Started) for e in events), "replies": sum(isinstance(e, ResponseView) for e in events),
            "rate_limited": sum(isinstance(e, Failed) and e.status == 429 for e in events),
            "errors": sum(isinstance(e, Failed) and e.status != 429 for e in events)}


def _sum(locator, attribute: str) -> int:
    return sum(int(v) for v in locator.evaluate_all(f"nodes => nodes.map(n => n.getAttribute('{attribute}'))"))


def test_charts_accuracy_with_ci_per_topic_latency_and_requests_over_time(server, runs, page, tmp_path):
    page.goto(server + "/?run=a&run=b&tab=charts&group=topic")
    overall = page.locator("[data-chart='accuracy'] rect.bar")
    expect(overall).to_have_count(2)  # one bar per run
    values = [float(v) for v in overall.evaluate_all("bars => bars.map(b => b.dataset.value)")]
    assert values == pytest.approx([sum(RIGHT[r].values()) / 22 for r in ("a", "b")])
    assert page.locator("[data-chart='accuracy'] .whisker").count() == 2  # each with its 95% interval
    groups = page.locator("[data-chart='groups'] rect.bar")
    expect(groups).to_have_count(len(TOPICS) * 2)  # per topic, one bar per run
    by_topic = groups.evaluate_all("bars => bars.map(b => [b.dataset.group, b.dataset.run, +b.dataset.value])")
    for topic, run, value in by_topic:
        ids = [x for x in IDS if TOPIC[x] == topic]
        assert value == pytest.approx(sum(RIGHT[run][x] for x in ids) / len(ids)), (topic, run)
    assert page.locator("[data-chart='groups'] h4").inner_text().lower() == "accuracy by topic (95% ci)"
    for run in ("a", "b"):
        panel = page.locator(f".run-charts[data-run='{run}']")
        counts = _log_counts(runs, run)
        latency_bars = panel.locator("[data-chart='latency'] rect.bar")
        assert latency_bars.count() >= 2 and _sum(latency_bars, "data-count") == counts["replies"] == 22
        bins = panel.locator("[data-chart='timeline'] g.bin")
        assert bins.count() >= 1
        for key, attribute in (("requests", "data-requests"), ("replies", "data-replies"),
                               ("rate_limited", "data-rate-limited"), ("errors", "data-errors")):
            assert _sum(bins, attribute) == counts[key], (run, key)
        assert f"{counts['rate_limited']} 429s" in panel.inner_text()
    assert _log_counts(runs, "a")["rate_limited"] > 0  # the 429s are drawn (orange segments)
    assert page.locator(".run-charts[data-run='a'] rect.stack-rl").count() > 0
    page.screenshot(path=str(tmp_path / "charts.png"), full_page=True)
    page.select_option("#group-select", "level")
    expect(page.locator("[data-chart='groups'] rect.bar")).to_have_count(4)
    assert "group=level" in page.url


def test_charts_follow_a_live_run(page, tmp_path):
    live_runs = tmp_path / "runs"
    live_runs.mkdir()
    data = tmp_path / "slow.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{i}", "prompt": f"answer: {'ABCD'[i % 4]}", "expected": "A"}) + "\n" for i in range(4)))
    with view_server(live_runs) as (_, _url, base):  # serving before the run starts: the page opens at once
        slow = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "run", str(data), "--runs-dir", str(live_runs), "--run-id", "live",
                                 "--parser", "choice", "--concurrency", "1", "--sim", json.dumps({"latency": 1.5})],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60  # a hang guard, not a performance threshold
            while not (live_runs / "live" / "responses.jsonl").exists():  # the session holds the lock: running
                assert slow.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            page.goto(base + "/?run=live&tab=charts")
            expect(page.locator("#live")).to_be_visible()  # the page polls while the run runs
            bins = page.locator(".run-charts[data-run='live'] [data-chart='timeline'] g.bin")
            try:  # a hang guard (the page polls every 3 s; a loaded machine answers slowly), not a threshold
                bins.first.wait_for(state="attached", timeout=60_000)
            except sync_api.TimeoutError:
                pytest.fail(f"no timeline: error {page.locator('#error').inner_text()!r}, charts "
                            f"{page.locator('#charts').inner_text()[:300]!r}, live {page.locator('#live').is_visible()}")
            assert _sum(bins, "data-replies") < 4  # seen while it runs (4 replies take 6 s)
            page.screenshot(path=str(tmp_path / "charts-live.png"), full_page=True)
            assert slow.wait(60) == 0, slow.stderr.read()
            expect(page.locator(".run-charts[data-run='live'] .badge")).to_have_text("completed", timeout=60_000)
            assert _sum(bins, "data-replies") == 4 and _sum(bins, "data-requests") == 4
            expect(page.locator("[data-chart='accuracy'] rect.bar")).to_have_attribute("data-value", str(1 / 4))
        finally:
            page.goto("about:blank")  # no poll reaches the server after it stops
            if slow.poll() is None:
                slow.kill()
            slow.wait()
            slow.stderr.close()


# -- the runs of test_compare: answers side by side, the differences, one item --------------


def test_the_page_shows_runs_side_by_side_filters_and_details(tmp_path_factory, page, tmp_path):
    runs = shared_runs(tmp_path_factory)
    with view_server(runs, "a", "b") as (_, url, base):
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

        chip(page, "differ").click()
        expect(rows).to_have_count(DIFFS)
        assert page.locator("#items-table tbody tr.disagree").count() == DIFFS
        assert page.locator("#counts").inner_text() == f"{DIFFS} of {N} items match"
        assert "show=differ" in page.url

        page.locator("#items-table tbody tr[data-item='i5']").click()
        detail = page.locator("#detail")
        detail.locator(".story").nth(1).wait_for()
        assert detail.locator(".story h3").all_inner_texts() == ["a", "b"]
        story_b = detail.locator(".story").nth(1)
        assert f"Question i5? answer: {HINTS['b'][5]}" in story_b.inner_text()
        assert story_b.locator(".ev-type").all_text_contents() == ["started", "response", "parsed"]
        assert EXPECTED[5] in story_b.locator(".facts").inner_text()

        page.keyboard.press("Escape")
        detail.wait_for(state="hidden")
        page.goto(url + "&diff=1")  # the old link of "disagreements only" still opens that view
        expect(rows).to_have_count(DIFFS)
        assert chip(page, "differ").get_attribute("aria-pressed") == "true"
