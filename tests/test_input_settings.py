"""Issue 11, run preparation: what a user types is either used or refused, never ignored.

Real CLI subprocesses against the embedded simulator or a small server on loopback
(``input_server.py``) that records every request, so "nothing was sent" is checked by count.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli
from input_server import InputServer, model_list
from llm_ledger.ledger.events import SessionStarted, Started
from llm_ledger.ledger.reader import iter_events


def _dataset(path: Path, n: int = 6, **extra) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"say {i}", "topic": f"t{i}", **extra}) + "\n"
                            for i in range(n)))
    return path


def _error_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def _started(run_dir: Path) -> list[Started]:
    return [e for e in iter_events(str(run_dir / "events.log")) if isinstance(e, Started)]


def _sessions(run_dir: Path) -> list[SessionStarted]:
    return [e for e in iter_events(str(run_dir / "events.log")) if isinstance(e, SessionStarted)]


# -- 11.3: `run --run-id EXISTING` with other settings --------------------------------------


def test_run_id_existing_with_other_settings_is_refused_naming_each(tmp_path):
    a, b = _dataset(tmp_path / "a.jsonl"), _dataset(tmp_path / "b.jsonl", 3)
    runs = tmp_path / "runs"
    first = run_cli("run", str(a), "--runs-dir", str(runs), "--run-id", "r", "--parser", "text", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    log_before = (runs / "r" / "events.log").read_bytes()

    r = run_cli("run", str(b), "--runs-dir", str(runs), "--run-id", "r", "--samples", "2", "--parser", "json",
                "--model", "gpt-x", cwd=tmp_path)
    line = _error_line(r)
    assert f"dataset: {a} (run) vs {b} (given)" in line, line
    assert "--samples: 1 (run) vs 2 (given)" in line and "--parser: 'text' (run) vs 'json' (given)" in line, line
    assert "--model: 'sim-1' (run) vs 'gpt-x' (given)" in line, line
    assert (runs / "r" / "events.log").read_bytes() == log_before  # nothing sent, nothing logged

    # the same settings (typed or left to the run) resume it as before
    again = run_cli("run", str(a), "--runs-dir", str(runs), "--run-id", "r", "--parser", "text", cwd=tmp_path)
    assert again.returncode == 0 and "0 to send" in again.stdout, (again.stdout, again.stderr)


def test_resume_and_rerun_use_and_record_how_settings(tmp_path):
    data = _dataset(tmp_path / "d.jsonl")
    runs = tmp_path / "runs"
    with InputServer(model_list("m-1"), chat_status=500) as down, InputServer(model_list("m-1")) as good, InputServer(model_list("m-1")) as third:
        r = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "r", "--base-url", down.base_url,
                    "--model", "m-1", "--retries", "0", cwd=tmp_path)
        assert r.returncode == 1 and len(down.requests) == 6, (r.stdout, r.stderr)

        r = run_cli("resume", "r", "--runs-dir", str(runs), "--base-url", good.base_url, "--concurrency", "3",
                    "--timeout", "7", "--rpm", "60000", cwd=tmp_path)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert len(good.requests) == 6 and len(down.requests) == 6  # the override was used
        last = _sessions(runs / "r")[-1]
        assert last.overrides == {"base_url": good.base_url, "base_urls": [good.base_url], "concurrency": 3,
                                  "timeout": 7.0, "rpm": 60000}
        assert {e.endpoint for e in _started(runs / "r")[6:]} == {good.base_url}

        # `run --run-id EXISTING`: a typed how-setting applies the same way (the rest is refused above)
        r = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "r", "--base-url", third.base_url,
                    "--model", "m-1", "--concurrency", "2", cwd=tmp_path)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert _sessions(runs / "r")[-1].overrides == {"base_url": third.base_url, "base_urls": [third.base_url],
                                                        "concurrency": 2}


def test_resume_refuses_a_bad_override_before_anything_is_written(tmp_path):
    data = _dataset(tmp_path / "d.jsonl")
    runs = tmp_path / "runs"
    assert run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "r", cwd=tmp_path).returncode == 0
    before = (runs / "r" / "events.log").read_bytes()
    for args in (["--timeout", "nan"], ["--concurrency", "0"], ["--base-url", "http://127.0.0.1:9/v1"]):
        line = _error_line(run_cli("resume", "r", "--runs-dir", str(runs), *args, cwd=tmp_path))
        assert args[0] in line or "built-in simulator" in line, line
    assert (runs / "r" / "events.log").read_bytes() == before


# -- 11.6: a /models reply that is not a model list -----------------------------------------

NOT_A_LIST = {
    "empty_object": (b"{}", "application/json", "a JSON object without 'data'"),
    "array": (b"[]", "application/json", "a JSON array"),
    "data_null": (b'{"data": null}', "application/json", "'data' = null"),
    "html": (b"<html><body>login</body></html>", "text/html", "not JSON (text/html)"),
    "entries_without_id": (b'{"data": [{"name": "m"}]}', "application/json", "without a string 'id'"),
}


@pytest.mark.parametrize("name", list(NOT_A_LIST))
def test_preflight_reply_that_is_not_a_model_list_is_one_line(tmp_path, name):
    body, kind, said = NOT_A_LIST[name]
    data = _dataset(tmp_path / "d.jsonl")
    with InputServer(body, kind) as server:
        r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--base-url", server.base_url,
                    "--model", "m", cwd=tmp_path)
        line = _error_line(r)
        assert said in line and "not a model list" in line and "--no-preflight" in line, line
        assert not server.requests and not (tmp_path / "runs").exists()


# -- 11.7: --base-url without --model -------------------------------------------------------


def test_base_url_without_model_uses_the_only_model_and_says_so(tmp_path):
    data = _dataset(tmp_path / "d.jsonl", 2)
    with InputServer(model_list("only-1")) as server:
        r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--base-url", server.base_url, cwd=tmp_path)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "model only-1: the only model" in r.stderr and "model only-1 @" in r.stdout
        assert [body["model"] for body in server.requests] == ["only-1", "only-1"]


@pytest.mark.parametrize("case", ["no_preflight", "two_models", "no_models", "dry_run"])
def test_base_url_without_model_is_a_configuration_error(tmp_path, case):
    data = _dataset(tmp_path / "d.jsonl", 2)
    models = {"two_models": model_list("a", "b"), "no_models": model_list()}.get(case, model_list("only-1"))
    extra = {"no_preflight": ["--no-preflight"], "dry_run": ["--dry-run"]}.get(case, [])
    with InputServer(models) as server:
        r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--base-url", server.base_url, *extra, cwd=tmp_path)
        line = _error_line(r)
        assert "needs --model" in line, line
        if case == "two_models":
            assert "lists 2 models (a, b)" in line, line
        assert not server.requests and not (tmp_path / "runs").exists()


# -- 11.12: --template ----------------------------------------------------------------------


def test_template_has_id_every_metadata_field_and_escapes(tmp_path):
    data = _dataset(tmp_path / "d.jsonl", 2)
    r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "t",
                "--template", r"[{id}/{topic}] Q: {prompt}\nA:\t\\n", cwd=tmp_path)
    assert r.returncode == 0, (r.stdout, r.stderr)
    prompts = sorted(e.request["messages"][-1]["content"] for e in _started(tmp_path / "runs" / "t"))
    assert prompts == ["[q0/t0] Q: say 0\nA:\t\\n", "[q1/t1] Q: say 1\nA:\t\\n"]


# -- 11.15: --dry-run -----------------------------------------------------------------------


def test_dry_run_needs_no_key_nor_network_and_prints_a_table(tmp_path):
    data = _dataset(tmp_path / "d.jsonl", 4)
    env = {"OPENAI_API_KEY": "", "NO_KEY_HERE": ""}
    r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "p", "--model", "gpt-x",
                "--base-url", "https://api.example.invalid/v1", "--api-key-env", "NO_KEY_HERE", "--dry-run",
                "--max-tokens", "100", "--samples", "2", "--price-in", "1", "--price-out", "2", cwd=tmp_path, env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert not r.stdout.lstrip().startswith("{")
    assert "dry run: nothing sent" in r.stdout
    assert "completion tokens (at most)" in r.stdout and "800" in r.stdout, r.stdout  # 4 items x 2 samples x 100
    assert "prompt tokens (estimate)" in r.stdout
    plan = (tmp_path / "runs" / "p" / "plan.jsonl").read_text().splitlines()
    assert len(plan) == 8 and not (tmp_path / "runs" / "p" / "events.log").exists()

    r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--dry-run", "--model", "gpt-x",
                "--base-url", "https://api.example.invalid/v1", "--api-key-env", "NO_KEY_HERE", cwd=tmp_path, env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "no bound: 4 requests without --max-tokens" in r.stdout, r.stdout


# -- 11.16: --seed without --limit; the header under --limit --------------------------------


def test_seed_without_limit_is_said_and_header_counts_the_limit(tmp_path):
    data = _dataset(tmp_path / "d.jsonl", 20)
    r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--seed", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--seed 3 has no effect without --limit" in r.stderr, r.stderr

    r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--limit", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ": 5 of 20 items (--limit 5, the first 5)\n" in r.stdout, r.stdout


def test_dry_run_on_an_existing_run_is_refused_and_writes_nothing(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "a", "prompt": "answer: A"}\n')
    runs = tmp_path / "runs"
    assert run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "x").returncode == 0
    before = sorted(p.name for p in (runs / "x").iterdir())
    r = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "x", "--dry-run")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--dry-run plans a new run" in lines[0], r.stderr
    assert sorted(p.name for p in (runs / "x").iterdir()) == before and not (runs / "x" / "plan.jsonl").exists()


def test_what_the_user_typed_is_printed_as_typed_never_as_an_emoji(tmp_path):
    """rich reads ":x:" as an emoji code: the consoles must not (a parser spec, a path, a reply)."""
    data = _dataset(tmp_path / "d.jsonl", 1)
    line = _error_line(run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--parser", "bogus:x", cwd=tmp_path))
    assert line == "error: --parser bogus:x: No module named 'bogus'", line


@pytest.mark.parametrize("args, said", [
    (("run", "d.jsonl", "--bogus"), "error: No such option: --bogus (see `ledger run --help`)"),
    (("run", "d.jsonl", "--concurrency", "abc"), "error: Invalid value for '--concurrency': "),
    (("run", "d.jsonl", "--run-id"), "error: Option '--run-id' requires an argument. (see `ledger run --help`)"),
    (("export",), "error: Missing argument 'RUN... FORMAT'. (see `ledger export --help`)"),
    (("nocmd",), "error: No such command 'nocmd'."),
])
def test_a_usage_error_is_one_line_exit_2(tmp_path, args, said):
    """The parser's own errors too: one line naming the help, never Typer's boxed panel."""
    _dataset(tmp_path / "d.jsonl", 1)
    line = _error_line(run_cli(*args, cwd=tmp_path))
    assert line.startswith(said), line
    assert not (tmp_path / "runs").exists()


def test_ledger_alone_prints_its_help_once_exit_0(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llm_ledger.cli"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "100"})
    assert r.returncode == 0 and r.stdout.count("Usage: ledger") == 1 and r.stderr == "", (r.stdout, r.stderr)


def test_a_reparse_of_a_run_with_items_left_is_refused(tmp_path):
    """Replies a resume receives later are parsed with the run's own parser: re-parsing first
    would leave two parsers in one accuracy, unsaid."""
    data = _dataset(tmp_path / "d.jsonl", 3)
    r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "down", "--base-url", "http://127.0.0.1:9/v1",
                "--model", "m", "--no-preflight", "--give-up-after", "0.3", cwd=tmp_path, env={"OPENAI_API_KEY": "k"})
    assert r.returncode == 75, (r.stdout, r.stderr)
    before = (tmp_path / "runs" / "down" / "events.log").read_bytes()
    line = _error_line(run_cli("replay", "down", "--reparse", "text", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path))
    assert line == "error: run down has 3 item(s) not finished: `ledger resume down` first, then re-parse (replies it " \
                   "receives later are parsed with the run's own parser)", line
    assert (tmp_path / "runs" / "down" / "events.log").read_bytes() == before


def test_show_of_an_item_whose_conversation_file_is_damaged_says_so_in_one_line(tmp_path):
    data = _dataset(tmp_path / "d.jsonl", 1)
    assert run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "a", cwd=tmp_path).returncode == 0
    (damaged,) = (tmp_path / "runs" / "a" / "conversations").iterdir()
    damaged.write_text("{tru")
    r = run_cli("show", "a", "q0", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0 and "reply: ok" in r.stdout and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [f"note: {damaged} is damaged "
                                             "(not JSON): `ledger replay a --rebuild` rewrites it; the answer and verdict it "
                                             "holds are not shown"]


def test_a_csv_quote_never_closed_is_refused_and_a_jsonl_bom_is_read(tmp_path):
    bad = tmp_path / "q.csv"
    bad.write_text('id,prompt,expected\nq1,"answer: 4,4\nq2,answer: 5,5\nq3,answer: 6,6\n')
    line = _error_line(run_cli("run", str(bad), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path))
    assert line == f"error: {bad}:2: malformed CSV in the record starting here: unexpected end of data", line
    assert not (tmp_path / "runs").exists()
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "say a"}\n')
    r = run_cli("run", str(bom), "--runs-dir", str(tmp_path / "runs"), "--run-id", "b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
