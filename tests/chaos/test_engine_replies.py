"""Replies that arrive but are hostile to process, replies that never finish arriving, and a
key that comes back escaped.

* A reply nested 2,500 deep (past every decoder's recursion limit) and a reply whose
  ``usage`` counts exceed 64 bits: one bad reply fails (or degrades) one item, never the
  run; a reply whose bytes arrived is recorded once and never requested again on resume.
* A body that trickles a byte every half second: ``--timeout`` bounds the whole request,
  the attempt is a ``failed`` timeout and is retried.
* An API key with ``/`` and ``+`` echoed by servers that escape it (PHP's ``\\/``, ``\\u``
  escapes, URL-encoding, base64 at every alignment): no form of it in any byte written.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

from chaos.chains import REGEX_PARSER
from chaos.endpoints import BrokenServer, key_forms
from chaos.invariants import check_projections, read_log
from chaos.procs import run_cli
from chaos.test_secrets import readable_text


def write_dataset(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(n)))
    return path


def _cli(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 120):
    return run_cli(*args, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, env=env, timeout=timeout)


def _kinds(events: list, item: str) -> list[str]:
    return [type(e).__name__ for e in events if getattr(e, "item_id", None) == item]


# -- 12.5: a reply that arrives but cannot be processed ------------------------------------


def test_unprocessable_replies_fail_or_degrade_one_item_and_are_never_paid_for_twice(tmp_path):
    """q3 always answers with usage beyond 2**64, q5 always with JSON 2,500 deep. The run
    ends (not "event cannot be encoded"); q3's reply is durable (text kept, impossible usage
    dropped, raw counts as strings) and is never requested again; q5 is a final failure with
    its reason after its retries; every other item is done. Two resumes: q3 is not paid
    for again; q5 is retried (a failure), the others are not touched."""
    n = 20
    data = write_dataset(tmp_path / "d.jsonl", n)
    poisoned = {"q3": "huge_usage", "q5": "deep_json"}
    with BrokenServer(lambda item, attempt: poisoned.get(item, "ok")) as server:
        args = ("--base-url", server.base_url, "--model", "broken-1", "--retries", "2", "--concurrency", "4",
                "--parser", REGEX_PARSER)
        first = _cli(tmp_path, "run", str(data), "--run-id", "p", *args)
        resumes = [_cli(tmp_path, "resume", "p") for _ in range(2)]
        per_item = Counter(key.rsplit("/", 2)[0] for _, key, _, _ in server.log)
    for r in (first, *resumes):
        assert r.returncode == 1, r  # q5 fails finally; nothing else
        assert "cannot be encoded" not in r.stderr and "Traceback" not in r.stderr, r
    run_dir = tmp_path / "runs" / "p"
    events, error = read_log(run_dir / "events.log")
    assert not error
    assert per_item["q3"] == 1, per_item  # durable once: never requested again
    assert per_item["q5"] == 3 * 3, per_item  # three sessions, 1 + 2 retries each
    assert all(per_item[f"q{i}"] == 1 for i in range(n) if f"q{i}" not in poisoned), per_item

    (reply,) = [e for e in events if type(e).__name__ == "Response" and e.item_id == "q3"]
    assert reply.text == "The answer is A3" and reply.usage is None
    assert reply.raw is not None and reply.raw["usage"]["prompt_tokens"] == str(2**70)
    failures = [e for e in events if type(e).__name__ == "Failed" and e.item_id == "q5"]
    assert len(failures) == 9 and sum(e.final for e in failures) == 3
    assert {e.error_type for e in failures} == {"malformed_response"}
    assert all("nested too deeply" in e.message for e in failures)

    rows = {json.loads(line)["item_id"]: json.loads(line) for line in (run_dir / "responses.jsonl").read_text().splitlines()}
    assert rows["q3"]["correct"] is True and rows["q5"]["response"] is None and "nested" in rows["q5"]["error"]
    assert sum(1 for row in rows.values() if row["correct"]) == n - 1
    assert check_projections(run_dir, tmp_path / "scratch", repair=False) == []


# -- 12.7: --timeout is a deadline for the whole request -----------------------------------


def test_a_reply_that_trickles_is_cut_at_the_timeout_recorded_and_retried(tmp_path):
    """q0's first reply sends one byte every 0.5 s (a whole reply would take minutes; no
    single read ever waits a second). With --timeout 1 the attempt fails as a timeout
    after about a second and the retry gets the answer."""
    data = write_dataset(tmp_path / "d.jsonl", 3)
    plan = lambda item, attempt: "trickle" if item == "q0" and attempt == 1 else "ok"  # noqa: E731
    with BrokenServer(plan, trickle=0.5) as server:
        start = time.monotonic()
        r = _cli(tmp_path, "run", str(data), "--run-id", "t", "--base-url", server.base_url, "--model", "broken-1",
                 "--timeout", "1", "--retries", "2", "--parser", REGEX_PARSER, timeout=60)
        took = time.monotonic() - start
    assert r.returncode == 0 and "Traceback" not in r.stderr, r
    assert took < 30, took  # a hang guard only: the trickle alone would take minutes
    events, _ = read_log(tmp_path / "runs" / "t" / "events.log")
    assert _kinds(events, "q0") == ["Started", "Failed", "Started", "Response", "Parsed"]
    (failed,) = [e for e in events if type(e).__name__ == "Failed"]
    assert failed.error_type == "timeout" and failed.retryable and not failed.final and "1 s" in failed.message


# -- 12.10: the key, escaped, in every form ------------------------------------------------

SECRET = "sk-live/ab+CD/9f8e7d6c5b4a3210"
ECHOES = ["echo_key_php", "echo_key_php_500", "echo_key_php_401", "echo_key_unicode", "echo_key_encoded",
          "echo_key_in_reply", "ok"]
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{8,}={0,2}")


def leaks(data: bytes, key: str) -> list[str]:
    """The forms of ``key`` found in ``data``: literal forms by search; base64 by decoding
    every base64-looking run at every offset, in both alphabets."""
    found = [name for name, form in key_forms(key).items()
             if not name.startswith("base64") and form.encode() in data]
    for run in _B64_RUN.findall(data):
        for offset in range(4):
            chunk = run[offset:].rstrip(b"=")
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                try:
                    if key.encode() in decode(chunk + b"==="[: (-len(chunk)) % 4]):
                        found.append(f"base64 {run[:40]!r}")
                except ValueError:
                    pass
    return found


def test_a_key_echoed_in_escaped_forms_is_written_nowhere(tmp_path):
    """The key contains ``/`` and ``+``. Replies echo it PHP-escaped (``\\/``) in the text,
    a field of the raw body, a 500 and a 401 message; all characters ``\\u``-escaped;
    URL-encoded and base64-encoded inside longer strings. Every file of the run, every
    export and the output of --show-first, log, show, replay carry no form of it."""
    data = write_dataset(tmp_path / "d.jsonl", len(ECHOES))
    env = {"ECHO_KEY": SECRET}

    def plan(item: str, attempt: int) -> str:
        shape = ECHOES[int(item[1:])]
        return shape if attempt == 1 or shape == "echo_key_php_401" else "ok"

    with BrokenServer(plan) as server:
        results = [_cli(tmp_path, "run", str(data), "--run-id", "k", "--base-url", server.base_url, "--model", "broken-1",
                        "--api-key-env", "ECHO_KEY", "--retries", "2", "--concurrency", "1", "--show-first", env=env)]
    out = tmp_path / "exports"
    out.mkdir()
    commands = [["log", "k"], ["replay", "k", "--rebuild"]] + [["show", "k", f"q{i}"] for i in range(len(ECHOES))]
    commands += [["export", "k", fmt, "-o", str(out / f"k.{fmt}")] for fmt in ("jsonl", "csv", "parquet")]
    commands += [["export", "k", "jsonl", "--events", "-o", str(out / "events.jsonl")]]
    results += [_cli(tmp_path, *args, env=env) for args in commands]
    assert results[0].returncode == 1, results[0]  # the 401 fails finally
    assert "[redacted]" in (tmp_path / "runs" / "k" / "responses.jsonl").read_text()
    for r in results:
        assert not leaks((r.stdout + r.stderr).encode(), SECRET), r
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".mdb"]
    assert len(files) > 10
    found = {str(p.relative_to(tmp_path)): leaks(readable_text(p), SECRET) for p in files}
    assert {name: forms for name, forms in found.items() if forms} == {}


def test_a_parser_returning_what_the_log_cannot_hold_fails_the_parse_not_the_run(tmp_path):
    """A user parser returns an object (and an int over 64 bits): the writer refuses the
    submission, the engine degrades the parse and the reply is still durable, once."""
    (tmp_path / "oddparse.py").write_text("def parse(text):\n    return object() if 'A0' in text else 2**70\n")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"answer: A{i}"}) + "\n" for i in range(3)))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    from conftest import run_cli as run_process  # a fresh interpreter: it must import oddparse

    r = run_process("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "p", "--parser", "oddparse:parse",
                    cwd=tmp_path, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    events, error = read_log(tmp_path / "runs" / "p" / "events.log")
    assert not error
    parsed = sorted((e.item_id, e.ok, e.error) for e in events if type(e).__name__ == "Parsed")
    assert [p[0] for p in parsed] == ["q0", "q1", "q2"]
    assert all(not ok and "not plain data" in err for _, ok, err in parsed), parsed
    assert sum(type(e).__name__ == "Response" for e in events) == 3
