"""`ledger review`: a person's verdict as a `reviewed` event, through the real CLI.

Three real runs on the built-in simulator, made once per module: "a" and "b" on the same
six capitals (the simulator says "The answer is Paris", identical in both runs; the default
`text` parser takes the whole sentence, so the machine marks every answer wrong -- what a
person corrects); "d" is a copy of "b" whose cap0 was asked again and answered "The answer is
Paris, France" (a reply of another text for the same item and expected answer). Each test copies that runs directory and works on its copy.
The CLI runs as a subprocess where it is the point (its lines, exit codes, refusals); the
other reviews call the same function in-process (``runners.review.review``), to keep the
module's time down.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Failed, Parsed, Response, ResponseView, Reviewed, Started
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import RunLock
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.reviews import review_rows, review_table
from llm_ledger.projections.compare import compare_runs
from llm_ledger.projections.export import export
from llm_ledger.projections.replay import replay
from llm_ledger.projections.show import item_story
from llm_ledger.runners.reparse import reparse
from llm_ledger.runners.review import find_target
from llm_ledger.runners.review import review as review_item

CITIES = ["Paris", "Tokyo", "Nairobi", "Lima", "Oslo", "Cairo"]
N = len(CITIES)


def _dataset(path: Path) -> Path:
    lines = []
    for i, city in enumerate(CITIES):
        lines.append(json.dumps({"id": f"cap{i}", "prompt": f"Capital number {i}? answer: {city}", "expected": city}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("review")
    data, runs = _dataset(root / "caps.jsonl"), root / "runs"
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda name: run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", name), "ab"))
    assert [d.returncode for d in done] == [0, 0], [d.stderr for d in done]
    shutil.copytree(runs / "b", runs / "d")  # d: b, whose cap0 was asked again and answered otherwise
    reask(runs, "d", "cap0", "The answer is Paris, France")
    return runs


def reask(runs: Path, run: str, item: str, text: str) -> None:
    """The item asked again and answered with ``text`` (as a resume re-running it would), then
    the projections rebuilt."""
    with LogWriter.open(str(runs / run / "events.log")) as writer:
        writer.append_many([Started(item_id=item, attempt=2, request={"messages": [{"role": "user", "content": "again"}]},
                                    expected="Paris"),
                            Response(item_id=item, attempt=2, text=text), Parsed(item_id=item, parser="text", value=text)])
    replay(RunPaths(str(runs / run)), full=True)


@pytest.fixture
def runs(base, tmp_path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(base, copy)
    return copy


def review(runs: Path, *args: str):
    return run_cli("review", *args, "--runs-dir", str(runs))


def judge(runs: Path, run: str, item: str, verdict: str, note: str = "") -> dict:
    """What `ledger review` calls, in-process."""
    return review_item(RunPaths(str(runs / run)), item, 0, verdict, note)


def rebuild(runs: Path, run: str) -> None:
    replay(RunPaths(str(runs / run)), full=True)


def rows(runs: Path, run: str) -> dict[str, dict]:
    """The last line per item of responses.jsonl."""
    lines = [json.loads(line) for line in (runs / run / "responses.jsonl").read_text().splitlines()]
    return {r["item_id"]: r for r in lines}


def summary(runs: Path, run: str) -> dict:
    return json.loads((runs / run / "summary.json").read_text())


def reply_of(runs: Path, run: str, item: str) -> ResponseView:
    return [e for e in iter_events(str(runs / run / "events.log")) if isinstance(e, Response) and e.item_id == item][-1]


def outputs(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in ("responses.jsonl", "summary.json", "reviews.jsonl")}


def test_review_changes_reviewed_accuracy_by_exactly_the_verdicts_and_logs_who_hash_and_seq(runs):
    before = summary(runs, "a")
    assert before["accuracy"] == 0.0 and before["accuracy_reviewed"] == 0.0 and before["scored_reviewed"] == N
    r = review(runs, "a", "cap0", "--correct", "--note", "the city is right")
    assert r.returncode == 0, r.stderr
    assert "correct" in r.stdout and f"accuracy 0.0% (machine), {100 / N:.1f}% (reviewed)" in r.stdout
    judge(runs, "a", "cap1", "correct")
    judge(runs, "a", "cap2", "incorrect", "agrees with the machine")

    after = summary(runs, "a")
    assert after["accuracy"] == 0.0 and after["correct"] == 0  # the machine's verdicts are untouched
    assert (after["correct_reviewed"], after["scored_reviewed"], after["accuracy_reviewed"]) == (2, N, round(2 / N, 6))
    assert after["reviews"] == {"applied": 3, "overturned": 2, "stale": 0}
    got = rows(runs, "a")
    assert [(got[f"cap{i}"]["correct"], got[f"cap{i}"]["correct_reviewed"]) for i in range(4)] == [
        (False, True), (False, True), (False, False), (False, False)]

    reviewed = [e for e in iter_events(str(runs / "a" / "events.log")) if isinstance(e, Reviewed)]
    assert [(e.item_id, e.verdict) for e in reviewed] == [("cap0", "correct"), ("cap1", "correct"), ("cap2", "incorrect")]
    first, reply = reviewed[0], reply_of(runs, "a", "cap0")
    assert first.target_seq == reply.seq and first.reply_sha256 == hashlib.sha256(reply.text.encode()).hexdigest()
    assert (first.who, first.note, first.sample) == (getpass.getuser(), "the city is right", 0) and first.ts > reply.ts

    story = item_story(RunPaths(str(runs / "a")), "cap0", 0)  # what `ledger show` prints
    assert (story["review"]["verdict"], story["review"]["note"], story["review"]["stale"]) == ("correct", "the city is right", False)
    table = review_table([RunPaths(str(runs / "a"))])
    assert table.num_rows == 3 and table.column("verdict").to_pylist() == ["correct", "correct", "incorrect"]
    assert table.column_names[:3] == ["run_id", "item_id", "sample"] and not any(table.column("stale").to_pylist())

    # the export carries both columns; a rebuild from the log gives the same bytes
    assert export([RunPaths(str(runs / "a"))], "jsonl", str(runs / "a.jsonl")) == N
    exported = {r["item_id"]: r for r in map(json.loads, (runs / "a.jsonl").read_text().splitlines())}
    assert exported["cap0"]["correct"] is False and exported["cap0"]["correct_reviewed"] is True
    live = outputs(runs / "a")
    rebuild(runs, "a")
    assert outputs(runs / "a") == live


def test_clear_puts_the_machine_verdict_back_and_keeps_the_history(runs):
    judge(runs, "a", "cap3", "correct")
    assert summary(runs, "a")["correct_reviewed"] == 1
    assert judge(runs, "a", "cap3", "cleared")["summary"]["correct_reviewed"] == 0
    assert summary(runs, "a")["correct_reviewed"] == 0 and rows(runs, "a")["cap3"]["correct_reviewed"] is False
    history = review_rows(RunPaths(str(runs / "a")))
    assert [(h["verdict"], h["latest"]) for h in history] == [("correct", False), ("cleared", True)]


def test_a_review_carries_to_another_run_with_the_same_reply_and_is_stale_where_the_reply_differs(runs):
    judge(runs, "a", "cap0", "correct", "right")
    # b's reply to cap0 is the same text: compare applies a's verdict there too; b's own files do not change
    assert summary(runs, "b")["correct_reviewed"] == 0
    data = compare_runs([RunPaths(str(runs / "a")), RunPaths(str(runs / "b"))]).to_json()
    a, b = data["runs"]
    assert (a["accuracy"], a["correct_reviewed"], a["reviewed"], a["carried"]) == (0.0, 1, 1, 0)
    assert (b["accuracy"], b["correct_reviewed"], b["reviewed"], b["carried"]) == (0.0, 1, 1, 1)
    assert data["pairs"][0]["reviewed"]["both_correct"] == 1 and data["pairs"][0]["both_correct"] == 0
    text = run_cli("compare", "a", "b", "--runs-dir", str(runs)).stdout
    assert "accuracy with reviews" in text and "p reviewed" in text
    # d's cap0 reply differs ("..., France"): the review is shown stale there, not applied
    data = compare_runs([RunPaths(str(runs / "a")), RunPaths(str(runs / "d"))]).to_json(only_diff=True)
    d = data["runs"][1]
    assert (d["correct_reviewed"], d["carried"], d["stale_reviews"]) == (0, 0, 1)
    item = next(x for x in data["differences"] if x["item_id"] == "cap0")
    assert item["correct_reviewed"] == {"a": True, "d": False}
    assert item["reviews"]["d"]["stale"] is True and item["reviews"]["d"]["run_id"] == "a"


def test_a_review_goes_stale_when_the_item_gets_another_reply_and_survives_a_reparse(runs):
    judge(runs, "a", "cap0", "correct")
    # a re-parse changes parses, not replies: the verdict still applies
    reparse(RunPaths(str(runs / "a")), "regex:answer is (\\w+)")
    got = rows(runs, "a")["cap0"]
    assert (got["correct"], got["correct_reviewed"]) == (True, True)
    reask(runs, "a", "cap0", "The answer is Lyon")
    got = rows(runs, "a")["cap0"]
    assert (got["correct"], got["correct_reviewed"]) == (False, False)  # the verdict was for "The answer is Paris"
    assert [r["stale"] for r in review_rows(RunPaths(str(runs / "a")))] == [True]
    assert summary(runs, "a")["reviews"]["stale"] == 1
    assert judge(runs, "a", "cap0", "incorrect")["reviewed"]["target_seq"] == reply_of(runs, "a", "cap0").seq  # the new reply
    assert [r["stale"] for r in review_rows(RunPaths(str(runs / "a")))] == [True, False]


def test_a_live_run_refuses_reviews_with_one_line(runs):
    log = runs / "a" / "events.log"
    before = log.read_bytes()
    lock = RunLock.acquire(str(log) + ".lock")  # as a live run holds it
    try:
        r = review(runs, "a", "cap0", "--correct")
    finally:
        lock.release()
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "is live" in r.stderr and "once it has stopped" in r.stderr
    assert log.read_bytes() == before


def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs):
    paths = RunPaths(str(runs / "a"))
    # cap4 failed finally, cap5 is in flight (appended by hand, as a killed run leaves them)
    with LogWriter.open(paths.log) as writer:
        writer.append_many([Started(item_id="cap4", attempt=2), Failed(item_id="cap4", attempt=2, error_type="server_error",
                                                                        final=True), Started(item_id="cap5", attempt=2)])
    before = Path(paths.log).read_bytes()
    for args, words in [(("a", "cap0", "--correct", "--incorrect"), "exactly one of"),
                        (("a", "nope", "--correct"), "no item 'nope'"),
                        (("a", "cap4", "--incorrect"), "failed: no reply to review")]:
        r = review(runs, *args)
        assert r.returncode == 2 and r.stdout == "" and words in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    for item, sample, words in [("cap0", 3, "has no sample 3 (samples: 0)"), ("cap5", 0, "in flight: no reply to review yet")]:
        with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
            find_target(paths, item, sample)
    with pytest.raises(InputError, match="verdict 'maybe'"):
        review_item(paths, "cap0", 0, "maybe")
    assert Path(paths.log).read_bytes() == before
