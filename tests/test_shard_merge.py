"""`ledger merge`: it refuses shards that do not make one run (a missing shard, another
config or dataset, an (item, sample) in two shards) with one line and exit 2, changing
nothing; and `--workers ray` without Ray is one line, exit 2, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest

from conftest import run_cli
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Response, RunStarted
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.shard_keys import shard_of
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.merge import merge
from llm_ledger.projections.merge_log import write_log
from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.prepare import prepare
from test_run_e2e import REGEX_PARSER, qa_records, write_jsonl


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A finished 2-shard run (and its dataset) to copy and spoil."""
    tmp = tmp_path_factory.mktemp("merge")
    dataset = write_jsonl(tmp / "qa.jsonl", qa_records(24))
    r = run_cli("run", str(dataset), "--parser", REGEX_PARSER, "--shards", "2", "--run-id", "r",
                "--runs-dir", str(tmp / "runs"), cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp / "runs" / "r"


def _copy(sharded: Path, tmp_path: Path) -> Path:
    target = tmp_path / "runs" / "r"
    shutil.copytree(sharded, target)
    return target


def _rewrite_run_started(log: Path, **changes) -> None:
    events = list(iter_events(str(log)))
    first = events[0]
    assert isinstance(first, RunStarted)
    write_log(str(log), [msgspec.structs.replace(first, **changes), *events[1:]])


def _refused(run: Path) -> str:
    before = (run / "summary.json").read_bytes(), (run / "events.log").read_bytes()
    with pytest.raises(InputError) as caught:
        merge(RunPaths(str(run)))
    assert caught.value.exit_code == 2
    assert ((run / "summary.json").read_bytes(), (run / "events.log").read_bytes()) == before  # nothing changed
    return str(caught.value)


def test_merge_again_gives_the_same_rows(sharded, tmp_path):
    run = _copy(sharded, tmp_path)
    rows = (run / "responses.jsonl").read_bytes()
    r = run_cli("merge", "r", "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    assert "merged 2 shards of run r" in r.stdout
    assert (run / "responses.jsonl").read_bytes() == rows


def test_missing_shard_is_refused_in_one_line_exit_2(sharded, tmp_path):
    run = _copy(sharded, tmp_path)
    shutil.rmtree(run / "shards" / "1")
    before = (run / "responses.jsonl").read_bytes()
    r = run_cli("merge", "r", "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "shard 1 of 2 is missing" in r.stderr
    assert (run / "responses.jsonl").read_bytes() == before


def test_shard_of_another_config_is_refused(sharded, tmp_path):
    run = _copy(sharded, tmp_path)
    log = run / "shards" / "1" / "events.log"
    config = next(iter_events(str(log))).config
    _rewrite_run_started(log, config={**config, "temperature": 0.5})
    message = _refused(run)
    assert "shard 1 has another config than run r" in message and "temperature" in message


def test_shard_of_another_dataset_is_refused(sharded, tmp_path):
    run = _copy(sharded, tmp_path)
    _rewrite_run_started(run / "shards" / "0" / "events.log", dataset_sha256="0" * 64)
    assert "shard 0 ran another dataset" in _refused(run)


def test_item_in_two_shards_is_refused(sharded, tmp_path):
    run = _copy(sharded, tmp_path)
    reply = next(e for e in iter_events(str(run / "shards" / "0" / "events.log")) if isinstance(e, Response))
    assert shard_of(reply.item_id, reply.sample, 2) == 0
    with LogWriter.open(str(run / "shards" / "1" / "events.log")) as writer:
        writer.append(msgspec.structs.replace(reply, seq=0, ts=0.0))
    message = _refused(run)
    assert f"item {reply.item_id!r} sample 0 is in two shards (0 and 1)" in message


def test_unsharded_run_or_a_shard_itself_has_nothing_to_merge(sharded, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    write_log(str(one / "events.log"), [RunStarted(run_id="one", config={"samples": 1}, ts=1.0)])
    with pytest.raises(InputError, match="run one is not sharded"):
        merge(RunPaths(str(one)))
    with pytest.raises(InputError, match="is shard 1 of run r: merge run r"):
        merge(RunPaths(str(_copy(sharded, tmp_path) / "shards" / "1")))


def test_workers_ray_without_ray_is_one_line_exit_2_nothing_written(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    dataset = write_jsonl(tmp_path / "qa.jsonl", qa_records(3))
    r = run_cli("run", str(dataset), "--shards", "2", "--workers", "ray", "--run-id", "x", cwd=tmp_path,
                env={"PYTHONPATH": str(tmp_path / "noray")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: --workers ray needs Ray, an optional extra: pip install 'llm-ledger[ray]'"]
    assert not (tmp_path / "runs" / "x").exists()


def test_limits_below_the_number_of_shards_are_refused_before_anything_is_written(tmp_path):
    dataset = str(write_jsonl(tmp_path / "qa.jsonl", qa_records(3)))
    for option, config in (("--rpm 3", RunConfig(shards=4, rpm=3)), ("--concurrency 2", RunConfig(shards=3, concurrency=2))):
        with pytest.raises(InputError, match=f"{option} with --shards"):
            prepare(dataset, config, str(tmp_path / "runs"))
    with pytest.raises(InputError, match="--workers 'slurm'"):
        prepare(dataset, RunConfig(shards=2, workers="slurm"), str(tmp_path / "runs"))
    with pytest.raises(InputError, match="--batch with --shards 2: the Batch API runs"):  # one log reconciles one run's batches
        prepare(dataset, RunConfig(shards=2, runner="batch"), str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_reviews_and_reparses_of_a_merged_run_survive_every_later_merge(sharded, tmp_path):
    """The top log of a sharded run is rewritten by each merge: a review or a re-parse appended
    to it is kept in the top level's own log (shards/own.log) and merged in again, once."""
    import json

    from llm_ledger.ledger.events import Parsed, Reviewed, SessionStarted

    run = _copy(sharded, tmp_path)
    where = ("--runs-dir", str(tmp_path / "runs"))
    r = run_cli("replay", "r", "--reparse", "regex:answer is A(\\d+)$", *where)
    assert r.returncode == 0, r.stderr
    r = run_cli("review", "r", "q3", "--incorrect", "--note", "not really", *where)
    assert r.returncode == 0, r.stderr

    def story() -> tuple[int, int, list[str]]:
        events = list(iter_events(str(run / "events.log")))
        reparses = sum(isinstance(e, SessionStarted) and e.reason == "reparse" for e in events)
        reviews = [e.note for e in events if isinstance(e, Reviewed)]
        return reparses, sum(isinstance(e, Parsed) and e.parser.endswith("(\\d+)$") for e in events), reviews

    before = story()
    assert before == (1, 24, ["not really"])
    for _ in range(2):  # merged twice: nothing lost, nothing doubled
        assert run_cli("merge", "r", *where).returncode == 0
        assert story() == before
    rows = {row["item_id"]: row for row in map(json.loads, (run / "responses.jsonl").read_text().splitlines())}
    assert rows["q5"]["parsed"] == "5" and rows["q5"]["correct"] is False  # the re-parse (expected is "A5")
    assert rows["q3"]["correct_reviewed"] is False and rows["q4"]["correct_reviewed"] is False
    shards_events = sum(1 for k in range(2) for e in iter_events(str(run / "shards" / str(k) / "events.log"))
                        if isinstance(e, Reviewed))
    assert shards_events == 0  # the shards' logs are theirs alone


def test_a_run_stopped_before_merging_is_said_and_replay_merges_it(sharded, tmp_path):
    """A sharded run whose coordinator died before merging (here: its merged.json made when the
    shards held one event each): status names `ledger merge`, export and compare refuse in one
    line rather than show the top files as the run, and `replay --rebuild` merges. A damaged
    merge record is said as one."""
    run = _copy(sharded, tmp_path)
    shutil.copytree(sharded, tmp_path / "runs" / "r2")  # a run to compare with
    (run / "shards" / "merged.json").write_text('{"shards": [1, 1]}\n')  # merged when its shards were at their start
    where = ("--runs-dir", str(tmp_path / "runs"))
    status = run_cli("status", "r", *where)
    assert "`ledger merge r` merges them" in status.stdout and "replay" not in status.stdout, status.stdout
    for command in (("export", "r", "csv", "-o", str(tmp_path / "r.csv")), ("compare", "r", "r2")):
        r = run_cli(*command, *where)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            "error: run r's shards hold work its merged files do not (it stopped before merging them): "
            "`ledger merge r` merges them"], (command, r.stderr)
    assert not (tmp_path / "r.csv").exists()
    r = run_cli("replay", "r", "--rebuild", *where)
    assert r.returncode == 0 and "a sharded run is rebuilt from its shards: merged 2 shards" in r.stdout, r.stdout + r.stderr
    assert (run / "shards" / "merged.json").exists()
    assert run_cli("export", "r", "csv", "-o", str(tmp_path / "r.csv"), *where).returncode == 0
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 25
    (run / "shards" / "merged.json").write_text("{garbled")
    r = run_cli("status", "r", *where)
    assert "merge record" in r.stdout and "is missing or damaged" in r.stdout and "merges them again" in r.stdout, r.stdout


def test_a_sharded_runs_replies_serve_later_runs_from_the_cache(sharded, tmp_path):
    """The merge writes the top log afresh: the cache store's mark of it (made on the log
    holding only run_started, while the shards ran) must not stop its replies from being
    entries. A plain rerun of the same plan is then served whole from the cache."""
    import json

    runs = tmp_path / "runs"
    _copy(sharded, tmp_path)
    shutil.copy(sharded.parent / "cache.lmdb", runs / "cache.lmdb")  # the store as the sharded run left it
    dataset = sharded.parent.parent / "qa.jsonl"
    r = run_cli("run", str(dataset), "--parser", REGEX_PARSER, "--run-id", "again", "--runs-dir", str(runs), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((runs / "again" / "summary.json").read_text())
    assert summary["cache"]["cached"] == 24, summary["cache"]


def test_a_damaged_own_log_stops_the_merge_instead_of_dropping_its_reviews(sharded, tmp_path):
    run = _copy(sharded, tmp_path)
    where = ("--runs-dir", str(tmp_path / "runs"))
    assert run_cli("review", "r", "q3", "--incorrect", *where).returncode == 0
    own = run / "shards" / "own.log"
    data = bytearray(own.read_bytes())
    data[40] ^= 1  # inside the first frame
    own.write_bytes(bytes(data))
    before = (run / "events.log").read_bytes()
    r = run_cli("merge", "r", *where)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "own.log: 1 review(s) or re-parse(s) of the run's log are not in it" in r.stderr, r.stderr
    assert "nothing was merged" in r.stderr, r.stderr
    assert (run / "events.log").read_bytes() == before
