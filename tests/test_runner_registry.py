"""Runners and transports plug in through one registry (runners/registry.py), chosen by
the run's config and recorded in it.

* An unknown ``--runner`` / ``--transport`` is one line, exit 2, nothing written.
* A log written before these settings existed (its config has neither) resumes with the
  defaults.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from llm_ledger.ledger.events import RunStarted, Started
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.dataset import file_sha256
from llm_ledger.runners.registry import RUNNERS, TRANSPORTS
from test_run_e2e import qa_records, read_jsonl, write_jsonl


@pytest.mark.parametrize("option,value,message", [
    ("--runner", "nope", "error: --runner 'nope': unknown; known: " + ", ".join(RUNNERS)),
    ("--transport", "nope", "error: --transport 'nope': unknown; known: " + ", ".join(TRANSPORTS)),
])
def test_an_unknown_runner_or_transport_is_one_line_exit_2_and_nothing_written(cli, tmp_path, option, value, message):
    dataset = write_jsonl(tmp_path / "qa.jsonl", qa_records(2))
    r = cli("run", str(dataset), "--runs-dir", "runs", option, value)
    assert r.returncode == 2, r
    assert r.stderr.strip() == message, r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_log_from_before_runners_and_transports_resumes_with_the_defaults(tmp_path):
    dataset = write_jsonl(tmp_path / "qa.jsonl", qa_records(3))
    config = RunConfig().to_dict()
    del config["runner"], config["transport"]  # as every log written before they existed
    run_dir = tmp_path / "runs" / "old"
    run_dir.mkdir(parents=True)
    writer = LogWriter.open(str(run_dir / "events.log"))
    writer.append(RunStarted(run_id="old", config=config, dataset=str(dataset), dataset_sha256=file_sha256(str(dataset)),
                             items=3, version="0.1.0"))
    writer.close()
    r = run_cli("resume", "old", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(read_jsonl(run_dir / "responses.jsonl")) == 3
    started = [e for e in iter_events(str(run_dir / "events.log")) if isinstance(e, Started)]
    assert {e.endpoint for e in started} == {"embedded-simulator"}  # the default: openai over the HTTP simulator
    assert json.loads((run_dir / "summary.json").read_bytes())["counts"]["done"] == 3


class _Counting:
    """A runner of the test's own: the per-request runner, with the works it was handed
    counted. Registered by one line, as a new runner would be."""

    works: list = []

    def __init__(self, context):
        from llm_ledger.runners.per_request import PerRequestRunner

        self._inner = PerRequestRunner(context)
        self.progress = self._inner.progress

    async def run(self, works):
        def counted():
            for work in works:
                _Counting.works.append((work.item.id, work.sample))
                yield work

        await self._inner.run(counted())

    def stop(self, reason="interrupted"):
        self._inner.stop(reason)

    def abort(self):
        self._inner.abort()


def test_a_runner_added_to_the_registry_is_the_one_the_session_uses(tmp_path, monkeypatch):
    from llm_ledger.runners.prepare import prepare
    from llm_ledger.runners.session import run_prepared

    monkeypatch.setitem(RUNNERS, "counting", _Counting)
    monkeypatch.setattr(_Counting, "works", [])
    dataset = write_jsonl(tmp_path / "qa.jsonl", qa_records(4))
    prepared = prepare(str(dataset), RunConfig(runner="counting", samples=2), str(tmp_path / "runs"), "counted")
    _, reason = run_prepared(prepared)
    assert reason == "completed"
    assert sorted(_Counting.works) == sorted((f"q{i}", s) for i in range(4) for s in range(2))
    run_dir = tmp_path / "runs" / "counted"
    first = next(iter_events(str(run_dir / "events.log")))
    assert isinstance(first, RunStarted) and first.config["runner"] == "counting"
    assert len(read_jsonl(run_dir / "responses.jsonl")) == 8
