"""The cross-run cache (issue 17): the issue's figure, counted at the simulator.

One module fixture runs, in one runs directory, in-process (``run_prepared``: the CLI is not
the point here), each run counting the requests its simulator received (its request log):

    a  1,000 items, temperature 0.7, --cache                           -> sends 1,000
    b  the same again                                                  -> sends 0
    c  the same with one sampling parameter changed (max_tokens)       -> sends all (200 of 200)
    d  another model                                                   -> sends all (200 of 200)
    e  --samples 3 at temperature 0.7 (sample 0 is a's)                -> sends 2,000
    f  --no-cache                                                      -> sends all (200 of 200)
    g  as a, without --cache: every request is looked up by default    -> sends 0 (100 held by a)
    h  temperature 0, without --cache                                  -> sends all (100 of 100)
    i  the same again with 2 samples: one key for both samples         -> sends 0

(a to e say ``--cache``, the default said explicitly.) The runs use the
in-process simulator transport, whose request log counts requests like the HTTP server's;
test_cache_resume.py's CLI runs go over HTTP to the embedded simulator. The asserts read
their logs and outputs. The key's rules have their own cases below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest

from conftest import run_cli
from llm_ledger.ledger.events import Response, Started
from llm_ledger.ledger.reader import iter_events
from llm_ledger.runners import cache_key
from llm_ledger.runners.cache import parse_age
from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.prepare import prepare
from llm_ledger.runners.session import run_prepared

N = 1000
SOME = 200  # the runs that must send everything: all of their first 200 items make the point
FEW = 100  # the runs of the default
PARSER = "regex:answer is (.+)$"
TIMING = ("latency", "finished_at", "seq", "cached_from")  # what may differ between a paid and a cached row


def _dataset(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(n)))
    return path


def run_in_process(runs: Path, dataset: Path, run_id: str, transport: str = "simulator", **settings) -> dict:
    """One run; returns the requests its simulator received and what the session counted."""
    log = runs.parent / f"requests-{run_id}.jsonl"
    config = RunConfig(simulator={"request_log": str(log)}, parser=PARSER, concurrency=200, transport=transport,
                       **settings)
    session, reason = run_prepared(prepare(str(dataset), config, str(runs), run_id))
    sent = len(log.read_text().splitlines()) if log.exists() else 0
    return {"reason": reason, "sent": sent, "cached": session.runner.progress.cached, "dir": runs / run_id}


@pytest.fixture(scope="module")
def figure(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    runs, dataset = root / "runs", _dataset(root / "items.jsonl", N)
    out = {"a": run_in_process(runs, dataset, "a", temperature=0.7, cache=True)}
    live = (out["a"]["dir"] / "responses.jsonl").read_bytes()
    out["b"] = run_in_process(runs, dataset, "b", temperature=0.7, cache=True)
    out["b_live"] = ((out["b"]["dir"] / "responses.jsonl").read_bytes(), (out["b"]["dir"] / "summary.json").read_bytes())
    out["c"] = run_in_process(runs, dataset, "c", temperature=0.7, max_tokens=64, limit=SOME, cache=True)
    out["d"] = run_in_process(runs, dataset, "d", temperature=0.7, model="sim-2", limit=SOME, cache=True)
    out["e"] = run_in_process(runs, dataset, "e", temperature=0.7, samples=3, cache=True)
    out["f"] = run_in_process(runs, dataset, "f", temperature=0.7, cache=False, limit=SOME)
    out["g"] = run_in_process(runs, dataset, "g", temperature=0.7, limit=FEW)
    out["h"] = run_in_process(runs, dataset, "h", temperature=0.0, limit=FEW)
    out["i"] = run_in_process(runs, dataset, "i", temperature=0.0, limit=FEW, samples=2)
    out.update(runs=runs, dataset=dataset, root=root, a_live=live)
    return out


def _rows(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "responses.jsonl").read_text().splitlines()]
    return {(r["item_id"], r["sample"]): r for r in rows}


def test_the_first_run_pays_for_every_request(figure):
    assert figure["a"]["reason"] == "completed"
    assert (figure["a"]["sent"], figure["a"]["cached"]) == (N, 0)


def test_the_same_run_again_sends_nothing_and_reads_the_same(figure):
    b = figure["b"]
    assert (b["reason"], b["sent"], b["cached"]) == ("completed", 0, N)
    first, second = _rows(figure["a"]["dir"]), _rows(b["dir"])
    assert first.keys() == second.keys() and len(second) == N
    for key, row in second.items():
        assert {k: v for k, v in row.items() if k not in TIMING} == {k: v for k, v in first[key].items() if k not in TIMING}
        assert row["cached_from"]["run"] == "a" and row["latency"] is None  # nothing sent: no time of its own
    a_seqs = {e.seq for e in iter_events(str(figure["a"]["dir"] / "events.log")) if isinstance(e, Response)}
    assert {row["cached_from"]["seq"] for row in second.values()} == a_seqs


def test_a_hit_is_events_in_the_log(figure):
    events = list(iter_events(str(figure["b"]["dir"] / "events.log")))
    started = [e for e in events if isinstance(e, Started)]
    responses = [e for e in events if isinstance(e, Response)]
    assert len(started) == len(responses) == N
    assert {e.endpoint for e in started} == {"cache"}
    assert all(r.cached_from is not None and r.raw for r in responses)  # the raw body is copied too


def test_the_summary_counts_cached_replies_apart(figure):
    summary = json.loads((figure["b"]["dir"] / "summary.json").read_text())
    assert summary["cache"]["cached"] == summary["cache"]["of"] == N
    assert summary["cache"]["tokens"]["total"] > 0
    assert summary["tokens"]["total"] == 0 and summary["attempts"] == 0
    assert summary["counts"]["done"] == N and summary["accuracy"] == 1.0
    paid = json.loads((figure["a"]["dir"] / "summary.json").read_text())
    assert paid["cache"]["cached"] == 0 and paid["tokens"] == summary["cache"]["tokens"]


def test_a_rebuild_reads_the_same_as_the_live_run(figure):
    from llm_ledger.ledger.layout import RunPaths
    from llm_ledger.projections.replay import replay

    r = run_cli("replay", "b", "--rebuild", "--runs-dir", str(figure["runs"]))
    assert r.returncode == 0, r.stderr
    assert "50 of" not in r.stdout and f"{N:,} of {N:,}" in r.stdout  # the table's cached row
    assert ((figure["runs"] / "b" / "responses.jsonl").read_bytes(),
            (figure["runs"] / "b" / "summary.json").read_bytes()) == figure["b_live"]
    replay(RunPaths(str(figure["runs"] / "a")), full=True)
    assert (figure["runs"] / "a" / "responses.jsonl").read_bytes() == figure["a_live"]


def test_one_changed_sampling_parameter_sends_all(figure):
    assert (figure["c"]["sent"], figure["c"]["cached"]) == (SOME, 0)


def test_another_model_sends_all(figure):
    assert (figure["d"]["sent"], figure["d"]["cached"]) == (SOME, 0)


def test_three_samples_after_one_pay_for_the_two_new_ones(figure):
    e = figure["e"]
    assert (e["sent"], e["cached"]) == (2 * N, N)
    rows = _rows(e["dir"])
    assert {s for (_, s), r in rows.items() if r.get("cached_from")} == {0}
    assert len(rows) == 3 * N


def test_no_cache_sends_everything(figure):
    assert (figure["f"]["sent"], figure["f"]["cached"]) == (SOME, 0)


def test_by_default_every_request_is_looked_up_a_sampled_one_per_sample(figure):
    assert (figure["g"]["sent"], figure["g"]["cached"]) == (0, FEW)  # temperature 0.7: sample 0 is held (run a)
    assert (figure["h"]["sent"], figure["h"]["cached"]) == (FEW, 0)  # temperature 0: nothing held yet
    assert (figure["i"]["sent"], figure["i"]["cached"]) == (0, 2 * FEW)  # ... now held: every sample is that one request


def test_stats_and_explain(figure):
    from llm_ledger.runners.cache_explain import explain, stats

    runs = str(figure["runs"])
    s = stats(runs)
    # a: 1,000 keys; c, d: 200 each; e: 2,000 new ones (its sample 0 is a's key); f, g: a's keys again;
    # h: 100 deterministic keys (i: copies of h's, which keep the keys)
    assert s["entries"] == 3 * N + 2 * SOME + FEW and s["copies"] == 0 and s["deterministic"] == FEW
    assert s["per_sample"] == 3 * N + 2 * SOME
    hit = explain(runs, "b", "q7")
    assert hit["this_run"]["reply"] == "cached" and hit["this_run"]["from_run"] == "a"
    assert hit["parts"]["params"] == {"temperature": 0.7} and hit["parts"]["sample"] == 0
    miss = run_cli("cache", "explain", "c", "q7", "--runs-dir", runs)
    assert miss.returncode == 0, miss.stderr
    assert "lookup    miss" in miss.stdout and "differs body.max_tokens: here 64, cached \"(absent)\"" in miss.stdout
    model = explain(runs, "d", "q7")
    assert [d["part"] for d in model["nearest"]["differs"]] == ["model"]
    assert model["nearest"]["item_id"] == "q7"
    bad = run_cli("cache", "explain", "b", "nope", "--runs-dir", runs)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr


def test_a_deleted_store_is_rebuilt_from_the_logs_with_the_same_entries(figure):
    runs = figure["runs"]
    before = json.loads(run_cli("cache", "stats", "--json", "--runs-dir", str(runs)).stdout)
    (runs / "cache.lmdb").unlink()
    from llm_ledger.runners.cache_explain import stats

    after = stats(str(runs))
    same = ("entries", "originals", "copies", "per_sample", "oldest", "newest")
    assert {k: after[k] for k in same} == {k: before[k] for k in same}


def test_clear_older_than_and_bad_ages(figure, tmp_path):
    from llm_ledger.runners.cache_explain import clear, stats

    runs = tmp_path / "runs"
    shutil.copytree(figure["runs"] / "a", runs / "a")
    assert clear(str(runs), 30 * 86400)["removed"] == 0 and stats(str(runs))["entries"] == N
    r = run_cli("cache", "clear", "--runs-dir", str(runs))
    assert r.returncode == 0 and f"forgot {N:,}" in r.stdout
    (runs / "cache.lmdb").unlink()  # a rebuild forgets them too
    assert stats(str(runs))["entries"] == 0
    bad = run_cli("cache", "clear", "--older-than", "soon", "--runs-dir", str(runs))
    assert bad.returncode == 2 and "--older-than" in bad.stderr and bad.stderr.count("\n") == 1
    bad = run_cli("run", str(figure["dataset"]), "--cache-max-age", "0d", "--runs-dir", str(runs))
    assert bad.returncode == 2 and "--cache-max-age" in bad.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["a", "cache.cleared", "cache.lmdb", "cache.lmdb-lock", "cache.lock"]
    bad = run_cli("cache", "stats", "--runs-dir", str(tmp_path / "typo"))
    assert bad.returncode == 2 and "no runs directory" in bad.stderr and not (tmp_path / "typo").exists()


# -- the key ---------------------------------------------------------------------------


SIM = cache_key.identity({"base_url": "", "simulator": {}})


def _key(body: dict, sample: int = 0, endpoint: str = SIM) -> bytes:
    return cache_key.make_key(endpoint, body, sample)


def test_the_sample_is_in_the_key_only_when_sampling():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert _key({**body, "temperature": 0}, 0) == _key({**body, "temperature": 0.0}, 5)
    assert _key({**body, "temperature": 0.7}, 0) != _key({**body, "temperature": 0.7}, 1)
    assert _key(body, 0) != _key(body, 1)  # absent: the endpoint's default (1.0 at OpenAI) samples
    assert _key({**body, "temperature": 0, "n": 3}, 0) != _key({**body, "temperature": 0, "n": 3}, 1)
    assert _key({**body, "temperature": 0.7}, 2) == _key({"temperature": 0.7, **body}, 2)  # key order is not the request


def test_every_part_of_the_body_and_the_endpoint_is_in_the_key():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    keys = {_key(body), _key({**body, "model": "m2"}), _key({**body, "max_tokens": 10}), _key({**body, "seed": 1}),
            _key({**body, "messages": [{"role": "user", "content": "hi "}]}),
            _key(body, endpoint=cache_key.identity({"base_url": "https://api.openai.com/v1"})),
            _key(body, endpoint=cache_key.identity({"base_url": "", "simulator": {"seed": 3}}))}
    assert len(keys) == 7
    assert cache_key.identity({"base_url": "HTTPS://API.example.com/v1/"}) == "https://api.example.com/v1"
    assert cache_key.identity({"transport": "simulator", "base_url": ""}) == SIM


def test_ages():
    assert parse_age("30d") == 30 * 86400 and parse_age("90m") == 5400 and parse_age("1.5h") == 5400
    for bad in ("", "30", "-1d", "3x", "0s"):
        with pytest.raises(Exception, match="--cache-max-age"):
            parse_age(bad)


def test_max_age_makes_old_replies_misses(figure):
    from llm_ledger.runners.cache import open_cache

    config = RunConfig(simulator={}, temperature=0.7, parser=PARSER, transport="simulator").to_dict()
    cache = open_cache(str(figure["runs"]), "probe", config, True, 3600.0)
    try:
        body = msgspec.json.decode(b'{"model":"sim-1","messages":[{"role":"user","content":"What is 3? answer: A3"}],'
                                   b'"temperature":0.7}')
        hit = cache.lookup(body, 0)
        assert hit is not None and hit.response.text == "The answer is A3"
        assert cache.lookup(body, 0, now=hit.provenance.ts + 3601) is None
        assert cache.lookup(body, 7) is None
    finally:
        cache.close()


def test_a_dry_run_after_a_run_prices_only_what_the_cache_does_not_answer(tmp_path):
    """A rerun's dry run says what the rerun pays: the requests an earlier log answers are
    counted apart, marked in plan.jsonl and left out of the tokens and cost; --no-cache
    counts them all."""
    data = _dataset(tmp_path / "d.jsonl", 6)
    runs = tmp_path / "runs"
    common = ("--runs-dir", str(runs), "--temperature", "0", "--max-tokens", "10", "--price-in", "1", "--price-out", "1")
    assert run_cli("run", str(data), *common, "--limit", "4", cwd=tmp_path).returncode == 0
    r = run_cli("run", str(data), *common, "--run-id", "p", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "4 of 6 answered by earlier runs" in out and "completion tokens (at most) │ 20 " in out, r.stdout
    plan = [json.loads(line) for line in (runs / "p" / "plan.jsonl").read_text().splitlines()]
    assert [p["cached"] for p in plan] == [True] * 4 + [False] * 2
    r = run_cli("run", str(data), *common, "--run-id", "q", "--dry-run", "--no-cache", cwd=tmp_path)
    out = " ".join(r.stdout.split())
    assert "off (--no-cache)" in out and "completion tokens (at most) │ 60 " in out, r.stdout


def test_explain_says_a_miss_came_from_the_runs_max_age(tmp_path):
    """A run with --cache-max-age that sent a request an older run held: explain names the age
    limit (the store then keeps the newer reply), instead of 'no other run holds it'."""
    import time

    data = _dataset(tmp_path / "d.jsonl", 2)
    where = ("--runs-dir", str(tmp_path / "runs"), "--temperature", "0")
    assert run_cli("run", str(data), *where, "--run-id", "old", cwd=tmp_path).returncode == 0
    time.sleep(1.1)
    assert run_cli("run", str(data), *where, "--run-id", "new", "--cache-max-age", "1s", cwd=tmp_path).returncode == 0
    r = run_cli("cache", "explain", "new", "q1", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "sent (the run had --cache-max-age 1s: older replies were not served)" in text, r.stdout
    assert "this run's own replaced any older one (not served: see above)" in text, r.stdout


def test_show_says_a_reply_was_copied_from_the_cache(figure):
    r = run_cli("show", "b", "q3", "--runs-dir", str(figure["runs"]))
    assert r.returncode == 0, r.stderr
    assert "reply: ok, copied from the cache (run a, event #" in r.stdout and "nothing sent" in r.stdout, r.stdout


def test_the_cache_never_deletes_a_directory_in_its_place_and_its_names_are_no_run_ids(tmp_path):
    data = _dataset(tmp_path / "d.jsonl", 2)
    runs = tmp_path / "runs"
    for name in ("cache.lmdb", "cache.lmdb-lock", "cache.lock"):
        r = run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", name, cwd=tmp_path)
        assert r.returncode == 2 and "the runs directory keeps that name for the cross-run cache" in r.stderr, r.stderr
    assert run_cli("run", str(data), "--runs-dir", str(runs), "--run-id", "a", cwd=tmp_path).returncode == 0
    (runs / "cache.lmdb").unlink()
    shutil.copytree(runs / "a", runs / "cache.lmdb")  # a run where the store goes (made by hand, or by an old version)
    r = run_cli("cache", "stats", "--runs-dir", str(runs), cwd=tmp_path)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "is a directory" in r.stderr, r.stderr
    assert (runs / "cache.lmdb" / "events.log").exists()


def test_an_imported_copy_of_a_cached_run_counts_nothing_as_paid(figure, tmp_path):
    """The export and responses.jsonl say which replies were copied from the cache: an import
    keeps that, so its summary pays for them no more than the original did."""
    runs = tmp_path / "runs"
    out = tmp_path / "b.jsonl"
    assert run_cli("export", "b", "jsonl", "-o", str(out), "--runs-dir", str(figure["runs"])).returncode == 0
    for source, fmt, run_id in ((out, "responses-jsonl", "from-export"),
                                (figure["b"]["dir"] / "responses.jsonl", "responses-jsonl", "from-rows")):
        r = run_cli("import", str(source), "--format", fmt, "--run-id", run_id, "--parser", PARSER, "--runs-dir", str(runs))
        assert r.returncode == 0, r.stderr
        summary = json.loads((runs / run_id / "summary.json").read_text())
        assert summary["cache"]["cached"] == N and summary["tokens"]["total"] == 0, (run_id, summary["cache"], summary["tokens"])
