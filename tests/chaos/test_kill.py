"""kill -9 of `ledger run` and `ledger resume` at 20+ seeded moments, across seeds.

Each chain is one run: `ledger run`, killed; then `ledger resume`, killed, again and again;
then a resume to completion (chains.py). After every kill, on copies of the run directory:
the durable log is a prefix of every later one, the writer reopens it losing nothing, it
verifies clean, the index catches up, and the projections as the crash left them, repaired
the way the next open repairs them, equal a rebuild from the log. At the end: every
item/sample/turn has exactly one reply in the log, no reply durable at any kill was
requested again (the simulator's request log), live projections equal a rebuild.

The chains run two at a time. Children are forked from a warm server (procs.py): the same
`ledger` code in a separate process, without a second of imports per kill
(tests/test_run_resume.py kills `python -m cli` itself).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from chaos.chains import Chain, REGEX_PARSER
from chaos.procs import run_cli
from llm_ledger.ledger.writer import LogWriter

# (seed, kind, sessions killed): 25 kill attempts (a "late" or "startup" kill may find the
# session already finished; at least 20 must land)
CHAINS = [
    (7101, "qa", 5),
    (7102, "big", 5),
    (7103, "chat", 5),
    (7104, "qa", 5),
    (7105, "big", 5),
]


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    def one(spec):
        seed, kind, kills = spec
        chain = Chain(tmp_path_factory.mktemp(f"chain{seed}"), seed, kind)
        try:
            return seed, (chain, chain.run(kills))
        except Exception as exc:  # reported by that chain's test, with its seed
            return seed, (chain, exc)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, CHAINS))


@pytest.mark.parametrize("seed", [c[0] for c in CHAINS])
def test_kill9_anywhere_loses_nothing_and_pays_nothing_twice(chains, seed):
    chain, result = chains[seed]
    if isinstance(result, Exception):
        raise AssertionError(f"{chain.label}: the chain failed to run") from result
    story = [f"kill {k.n}: {k.command} {k.trigger} -> exit {k.code}, {k.events} events" for k in chain.kills]
    assert result == [], "\n".join(result + story)


def test_the_chains_killed_often_and_everywhere(chains):
    kills = [k for chain, _ in chains.values() for k in chain.kills]
    landed = [k for k in kills if k.killed]
    assert len(landed) >= 20, [(k.command, k.trigger, k.code) for k in kills]
    assert {k.trigger for k in landed} >= {"requests", "projection", "startup"}
    assert sum(k.command == "resume" for k in landed) >= 12  # kills during resume itself


def test_a_run_killed_before_run_started_was_durable_can_be_run_again(tmp_path):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"answer: A{i}", "expected": f"A{i}"}) + "\n"
                               for i in range(5)))
    (tmp_path / "runs" / "early").mkdir(parents=True)
    LogWriter.open(str(tmp_path / "runs" / "early" / "events.log")).close()  # as a kill right after opening leaves it
    r = run_cli("run", str(dataset), "--runs-dir", str(tmp_path / "runs"), "--run-id", "early", "--parser", REGEX_PARSER,
                cwd=tmp_path)
    assert r.returncode == 0, r


def test_replay_after_a_reparse_killed_mid_rebuild_equals_a_rebuild(tmp_path):
    from chaos.invariants import check_projections
    from llm_ledger.ledger.events import Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started
    from llm_ledger.ledger.layout import RunPaths
    from llm_ledger.ledger.reader import iter_frames
    from llm_ledger.projections.projector import Projector
    from llm_ledger.projections.replay import replay
    from llm_ledger.projections.overrides import overrides

    run = tmp_path / "r"
    run.mkdir()
    paths = RunPaths(str(run))
    with LogWriter.open(paths.log) as writer:
        writer.append_many([RunStarted(run_id="r", items=40), SessionStarted(pid=1)])
        for i in range(40):
            key = {"item_id": f"q{i}"}
            writer.append_many([Started(**key, request={"messages": [{"role": "user", "content": f"q{i}"}]}, expected="B"),
                                Response(**key, text="The answer is (B)"), Parsed(**key, value="The answer is (B)")])
        writer.append_many([SessionEnded(reason="completed"), SessionStarted(pid=2, reason="reparse")])
        writer.append_many([Parsed(item_id=f"q{i}", parser="choice", value="B") for i in range(40)])
        writer.append(SessionEnded(reason="completed"))
    replay(paths, full=True)  # the projections as they were ...
    # ... then what `replay --reparse` does after appending, killed part way: rebuild(paths)
    projector = Projector(paths)
    projector.overrides = overrides(paths.log)
    projector._open_files()
    frames = list(iter_frames(paths.log))
    projector.apply_frames(frames[:10])  # the first batch writes a checkpoint; then SIGKILL
    # (nothing is left buffered: rows are flushed and conversation writes drained per batch)
    replay(paths)  # `ledger replay RUN`: the next open
    assert check_projections(run, tmp_path / "scratch", repair=False) == []
