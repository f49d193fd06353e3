"""What a person sees at a terminal (issue 15, points 1-7), read off a real pseudo-terminal.

Each command runs with a pty of 60, 80 or 120 columns as its controlling terminal; what it
wrote is rendered by a VT100 emulator (pyte) and the tests read the visible rows:

- ``w60`` / ``w80`` / ``w120``: the same priced run (30 of 40 items by --limit 30 --seed 7,
  15% HTTP 429s retried) at three widths: the progress display, the header, the summary;
- ``ctrl-c``: a long run stopped by Ctrl-C typed at the terminal (exit 130);
- ``down``: every endpoint down past --give-up-after (exit 75);
- ``k``: a run killed by SIGKILL (a crash: no handler runs);
- then, on those runs: ``ls`` at 60 and 120 columns, ``show`` of a retried item, help, and
  ``status`` of the killed run.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli
from terminal_screen import Screen, in_terminal

WIDTHS = (60, 80, 120)
PRICED = ["--price-in", "2.5", "--price-out", "10", "--limit", "30", "--seed", "7", "--concurrency", "4", "--retries", "6",
          "--parser", "regex:answer is (.+)$", "--sim", json.dumps({"latency": 0.01, "rate_429": 0.15, "retry_after": 0.01, "seed": 1})]


def _dataset(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}? answer: A", "expected": "A"}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict[str, Screen]:
    base = tmp_path_factory.mktemp("terminal")
    small, large = _dataset(base / "small.jsonl", 40), _dataset(base / "large.jsonl", 300)
    runs = {f"w{cols}": (["run", str(small), "--run-id", f"w{cols}", "--no-cache", *PRICED], cols, None) for cols in WIDTHS}
    runs["ctrl-c"] = (["run", str(large), "--run-id", "cc", "--concurrency", "2", "--sim", json.dumps({"latency": 0.05})],
                      80, b"(adaptive)")
    runs["down"] = (["run", str(small), "--run-id", "down", "--give-up-after", "0.2", "--sim", json.dumps({"down": True})], 80, None)
    with ThreadPoolExecutor(len(runs) + 1) as pool:
        killed = pool.submit(_killed_mid_run, base, large, "k")
        futures = {key: pool.submit(in_terminal, args, cols, base, interrupt_when=when) for key, (args, cols, when) in runs.items()}
        screens = {key: f.result() for key, f in futures.items()}
        killed.result()
    log = [json.loads(line) for line in run_cli("log", "w80", cwd=base).stdout.splitlines()]
    starts: dict[str, int] = {}
    for e in log:
        if e["type"] == "started":
            starts[e["item_id"]] = starts.get(e["item_id"], 0) + 1
    retried = next(item for item, n in starts.items() if n > 1)
    plain = next(item for item, n in starts.items() if n == 1)
    after = {"ls60": (["ls"], 60), "ls120": (["ls"], 120), "show retried": (["show", "w80", retried], 80),
             "show plain": (["show", "w80", plain], 80), "help": (["-h"], 80), "run help": (["run", "--help"], 120),
             "status killed": (["status", "k"], 80)}
    with ThreadPoolExecutor(len(after) + 1) as pool:
        listed = pool.submit(run_cli, "ls", "--json", cwd=base)
        futures = {key: pool.submit(in_terminal, args, cols, base) for key, (args, cols) in after.items()}
        screens.update({key: f.result() for key, f in futures.items()})
        screens["_ls_json"] = json.loads(listed.result().stdout)  # type: ignore[assignment]
    screens["_base"] = base  # type: ignore[assignment]
    screens["_log"] = log  # type: ignore[assignment]
    return screens


def _summary(seen, run: str) -> dict:
    return json.loads((seen["_base"] / "runs" / run / "summary.json").read_bytes())


# -- 1. the progress display ------------------------------------------------------------------

ESSENTIALS = re.compile(r"^(━+) (\d+)/(\d+) +(\d+)% +(\d+\.\d)/s +ETA (\d+:\d\d|-)")


@pytest.mark.parametrize("cols", WIDTHS)
def test_progress_puts_bar_count_percent_rate_and_eta_first(seen, cols):
    screen = seen[f"w{cols}"]
    assert screen.returncode == 0, screen.text
    row = screen.line_with("ETA")
    line = screen.lines[row]
    match = ESSENTIALS.match(line)
    assert match, line
    bar, done, total, pct = match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4))
    assert (done, total, pct) == (30, 30, 100), line
    assert len(bar) >= 10 and match.group(6) == "0:00"
    assert all(len(visible) <= cols for visible in screen.lines)
    assert "…" not in screen.text  # nothing is cut mid-word


@pytest.mark.parametrize("cols", WIDTHS)
def test_progress_extras_follow_whole_and_in_order(seen, cols):
    screen = seen[f"w{cols}"]
    row = screen.line_with("ETA")
    summary = _summary(seen, f"w{cols}")
    tokens = summary["tokens"]["total"]
    extras = [f"failed {summary['counts']['failed']}", f"retries {summary['retries']}",
              r"in flight \d+", r"concurrency \d+( of 4)? \(adaptive\)", f"tokens {tokens:,}", r"cost \$\d+\.\d{4}, projected \$\d+\.\d{4}"]
    assert "retries" not in screen.lines[row]  # too many extras to share the bar's line at these widths
    second = screen.lines[row + 1]
    shown = second.split("  ")
    # 60: failures, retries, in flight (and the concurrency when it fits); 80: + tokens; 120: all
    assert len(shown) >= {60: 3, 80: 5, 120: 6}[cols], second
    for got, want in zip(shown, extras):
        assert re.fullmatch(want, got), (got, want)


def test_progress_line_at_each_width_as_a_person_sees_it(seen):
    """Prints the display's rows (``pytest -s``): the figures the issue asks to quote."""
    for cols in WIDTHS:
        screen = seen[f"w{cols}"]
        row = screen.line_with("ETA")
        print(f"\n{cols} columns:\n" + "\n".join(screen.lines[row:row + 2]))


# -- 2. numbers for people --------------------------------------------------------------------


def test_summary_numbers_have_fixed_precision_and_units(seen):
    screen = seen["w80"]
    table = {cells[0]: cells[1] for cells in (re.split(r"\s*│\s*", line.strip("│ ")) for line in screen.lines if "│" in line)}
    summary = _summary(seen, "w80")
    assert table["cost"] == f"${summary['cost_usd']:.4f}" and re.fullmatch(r"\$\d+\.\d{4}", table["cost"])
    lat = summary["latency_s"]
    assert table["latency p50 / p90 / p99"] == " / ".join(f"{round(lat[q] * 1000)} ms" for q in ("p50", "p90", "p99"))
    assert re.fullmatch(r"\d+\.\d items/s", table["throughput"]) and re.fullmatch(r"\d+\.\d s", table["wall time"])
    assert table["accuracy"].startswith(f"{summary['accuracy']:.1%} (95% CI ")
    assert "e-0" not in screen.text  # no scientific notation anywhere


# -- 3. the run header ------------------------------------------------------------------------


def test_header_says_the_run_once_with_the_subset_in_force(seen):
    screen = seen["w80"]
    assert [line for line in screen.lines if re.match(r"(run|│ run)\b", line)] == ["run w80"]  # said once
    dataset = next(line for line in screen.joined(80) if line.startswith("dataset "))
    assert dataset.endswith(": 30 of 40 items (--limit 30, seed 7)"), dataset
    assert "samples" not in dataset


# -- 4. ls --------------------------------------------------------------------------------------


def _ls_ids(screen: Screen) -> list[str]:
    return [line.split()[0] for line in screen.lines[1:] if line.strip()]


def test_ls_lists_newest_first_and_never_cuts_a_run_id(seen):
    wide, narrow = seen["ls120"], seen["ls60"]
    assert wide.returncode == 0 and narrow.returncode == 0, (wide.text, narrow.text)
    listed = seen["_ls_json"]
    started = [r["started"] for r in listed]
    assert started == sorted(started, reverse=True)  # --json: newest first too
    assert _ls_ids(wide) == [r["run_id"] for r in listed] == _ls_ids(narrow)
    assert wide.lines[0].split() == ["run", "status", "model", "dataset", "done", "failed", "planned", "accuracy", "started"]
    assert all(len(line) <= 60 for line in narrow.lines) and "…" not in narrow.text
    by_id = {r["run_id"]: r for r in listed}
    for line in wide.lines[1:]:
        run_id = line.split()[0]
        assert by_id[run_id]["status_text"] in line  # the one status function's words


# -- 5. show ------------------------------------------------------------------------------------


def test_show_reads_as_a_conversation_then_one_line_per_request(seen):
    screen = seen["show retried"]
    assert screen.returncode == 0, screen.text
    text = screen.text
    assert re.search(r"^user: Question \d+\? answer: A$", text, re.M) and "assistant: The answer is A" in text
    assert "answer: A   expected: A   right" in text
    assert "{'" not in text and "usage" not in text and "'A'" not in text  # no Python reprs
    attempts = [line for line in screen.lines if line.startswith("attempt ")]
    assert attempts[0].startswith("attempt 1: failed, HTTP 429 rate_limit: ") and attempts[0].endswith("(retried)")
    assert re.fullmatch(r"attempt \d+: ok, \d+ ms, \d+ prompt \+ \d+ completion tokens", attempts[-1]), attempts
    plain = seen["show plain"]
    assert "attempt" not in plain.text  # no retry: no attempt numbers
    assert re.search(r"^reply: ok, \d+ ms, \d+ prompt \+ \d+ completion tokens$", plain.text, re.M), plain.text


# -- 6. help ------------------------------------------------------------------------------------


def test_help_lists_commands_in_the_order_of_use_with_conventional_names(seen):
    screen = seen["help"]
    assert screen.returncode == 0, screen.text
    listed = [m.group(1) for line in screen.lines if (m := re.match(r"│ (\w+) {2,}\S", line))]
    assert listed == ["run", "resume", "cancel", "status", "ls", "show", "review", "compare", "view", "sql", "export", "import", "merge",
                      "replay", "log", "verify", "cache", "simulate"]
    assert re.search(r"--version\b", screen.text) and re.search(r"--help\s+-h\b", screen.text)
    run_help = seen["run help"].text
    assert "Usage: ledger run [OPTIONS] PATH" in run_help
    for placeholder in ("<str>", "<int>", "<float>", "<bool>", "<list[", "{dataset}"):
        assert placeholder not in run_help and placeholder not in screen.text, placeholder
    for option, metavar in (("--base-url", "URL"), ("--limit", "N"), ("--runs-dir", "PATH"), ("--timeout", "SECONDS")):
        assert re.search(rf"{option}\s+{metavar}\b", run_help), option
    assert "O(1)" not in screen.text and "DESIGN" not in screen.text


# -- 7. the way back after a stop ---------------------------------------------------------------


def test_ctrl_c_ends_with_the_resume_line(seen):
    screen = seen["ctrl-c"]
    assert screen.returncode == 130, screen.text
    assert screen.lines[-1] == "resume with: ledger resume cc"
    assert sum(line.startswith("resume with:") for line in screen.lines) == 1


def test_exit_75_ends_with_the_resume_line(seen):
    screen = seen["down"]
    assert screen.returncode == 75, screen.text
    assert screen.lines[-1] == "resume with: ledger resume down"
    assert sum(line.startswith("resume with:") for line in screen.lines) == 1


def _killed_mid_run(base: Path, data: Path, run_id: str) -> None:
    """A run killed (SIGKILL: no handler runs, as in a crash) once it has logged some work."""
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "run", str(data), "--run-id", run_id, "--concurrency", "2",
                             "--sim", json.dumps({"latency": 0.05})], cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = base / "runs" / run_id / "events.log"
    try:
        deadline = time.monotonic() + 60
        while (not log.exists() or log.stat().st_size < 2000) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_after_a_crash_status_says_how_to_resume(seen):
    screen = seen["status killed"]
    assert screen.returncode == 0, screen.text
    assert re.search(r"^\s+status: interrupted$", screen.text, re.M), screen.text
    assert screen.lines[-1] == "resume with: ledger resume k"
