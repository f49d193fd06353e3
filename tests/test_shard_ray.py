"""`--workers ray`: the shards as Ray tasks on a local cluster (``ray.init(num_cpus=2)``, one
for the module), merged into the same rows as an unsharded run. Skipped, with the reason,
where Ray is not installed (it is an optional extra: ``pip install 'llm-ledger[ray]'``)."""

from __future__ import annotations

import json

import pytest

from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.prepare import prepare
from llm_ledger.runners.session import run_prepared
from llm_ledger.runners.shards import run_sharded
from test_run_e2e import REGEX_PARSER, qa_records, read_jsonl, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'llm-ledger[ray]'): the Ray mode is not tested here")

TIMING = ("latency", "finished_at", "seq")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _rows(run_dir) -> dict:
    return {(r["item_id"], r["sample"]): {k: v for k, v in r.items() if k not in TIMING}
            for r in read_jsonl(run_dir / "responses.jsonl")}


def _config(**kw) -> RunConfig:
    return RunConfig(samples=2, parser=REGEX_PARSER, simulator={"accuracy": 0.7}, **kw)


def test_ray_tasks_run_the_shards_and_the_merge_equals_an_unsharded_run(cluster, tmp_path):
    dataset = str(write_jsonl(tmp_path / "qa.jsonl", qa_records(20)))
    runs = str(tmp_path / "runs")
    run_prepared(prepare(dataset, _config(), runs, "plain"))
    result = run_sharded(prepare(dataset, _config(shards=2, workers="ray"), runs, "on-ray"))
    assert result.reason == "completed" and not result.merge_error
    assert [o.error for o in result.outcomes] == ["", ""]
    assert sorted(o.index for o in result.outcomes) == [0, 1]
    assert _rows(tmp_path / "runs" / "on-ray") == _rows(tmp_path / "runs" / "plain")
    summary = json.loads((tmp_path / "runs" / "on-ray" / "summary.json").read_text())
    assert summary["counts"] == {"planned": 40, "done": 40, "failed": 0, "pending": 0}
    for k in range(2):  # each task wrote its own shard, a whole run directory
        assert (tmp_path / "runs" / "on-ray" / "shards" / str(k) / "summary.json").exists()
