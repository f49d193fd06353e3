"""The projections' checkpoint is derived state that must prove itself (issue 12):

* 12.3: one changed byte in ``projections.ckpt`` (an open conversation's reply) is never
  trusted: `resume` sends the next turn with the history the log has, and the projections
  equal a rebuild;
* 12.6: `ledger replay --rebuild` killed with SIGKILL at any moment -- above all while it
  throws the old conversation files away -- loses nothing for good: the next `replay` (or
  `resume`) brings every file back, byte for byte.

Real processes: `ledger run` interrupted with Ctrl-C, `ledger replay --rebuild` killed with
SIGKILL (procs.py), `ledger replay` / `ledger resume` after.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from chaos.invariants import check_projections, projection_files, read_log
from chaos.procs import kill_when, lines_after, lock_held_by, run_cli, start_cli
from llm_ledger.ledger.events import Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.runners.dataset import file_sha256
from llm_ledger.projections.replay import replay

# -- 12.3: a changed byte in the checkpoint ------------------------------------------------


def _chat(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"m{i}", "turns": [f"Item {i} turn {t}. answer: R{i}-{t}" for t in range(3)],
                                        "expected": f"R{i}-2"}) + "\n" for i in range(n)))
    return path


def _interrupt(tmp_path: Path) -> Path:
    """Run the chat dataset again into tmp_path, stopped by Ctrl-C after 10 requests (mid-conversation)."""
    data = _chat(tmp_path / "chat.jsonl", 24)
    req_log = tmp_path / "requests.jsonl"
    sim = json.dumps({"latency": 0.3, "request_log": str(req_log), "seed": 11})
    proc = start_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "c", "--concurrency", "8",
                     "--sim", sim, cwd=tmp_path)
    end = time.monotonic() + 60
    while lines_after(req_log, 0) < 10:
        assert proc.poll() is None and time.monotonic() < end, proc.stderr
        time.sleep(0.005)
    proc.signal(signal.SIGINT)
    assert proc.wait(60) == 130, proc.stderr
    return tmp_path / "runs" / "c"


def _open_replies(run: Path) -> dict[str, str]:
    """item -> its last reply, for the items left open (a reply logged, no parse)."""
    events, error = read_log(run / "events.log")
    assert error == ""
    replies = {e.item_id: e.text for e in events if isinstance(e, Response)}
    done = {e.item_id for e in events if isinstance(e, Parsed)}
    return {item: text for item, text in replies.items() if item not in done}


def _histories_match_the_log(run: Path) -> list[str]:
    """Every request of a turn after the first carries, as the assistant's messages, exactly
    the replies the log holds for the earlier turns of that item."""
    events, error = read_log(run / "events.log")
    assert error == ""
    replies: dict[tuple[str, int], str] = {}
    bad = []
    for e in events:
        if isinstance(e, Response):
            replies[(e.item_id, e.turn)] = e.text
        elif isinstance(e, Started) and e.turn > 0:
            said = [m["content"] for m in e.request["messages"] if m.get("role") == "assistant"]
            logged = [replies.get((e.item_id, t)) for t in range(e.turn)]
            if said != logged:
                bad.append(f"{e.item_id} turn {e.turn} (seq {e.seq}) sent history {said}, the log has {logged}")
    return bad


def test_one_changed_byte_in_the_checkpoint_is_not_trusted_by_resume(tmp_path):
    run = _interrupt(tmp_path)
    open_replies = _open_replies(run)
    assert open_replies, "the interrupt left no conversation open: nothing to check"
    ckpt = bytearray((run / "projections.ckpt").read_bytes())
    changed = 0
    for item, text in sorted(open_replies.items()):
        needle = text.encode()
        at = ckpt.rfind(needle)  # the last copy: the turn record a resume reads
        if at >= 0:
            ckpt[at + len(needle) - 1] ^= 0x01  # one byte: "R3-0" -> "R3-1"
            changed += 1
            break
    assert changed, "no open reply found in the checkpoint"
    (run / "projections.ckpt").write_bytes(bytes(ckpt))

    r = run_cli("resume", "c", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r
    assert _histories_match_the_log(run) == []
    assert check_projections(run, tmp_path / "scratch", repair=False) == []


def test_a_changed_byte_in_the_checkpoint_is_not_trusted_by_replay(tmp_path):
    """`ledger replay` after the same damage: the projections equal a rebuild."""
    run = _interrupt(tmp_path)
    ckpt = bytearray((run / "projections.ckpt").read_bytes())
    text = sorted(_open_replies(run).values())[0].encode()
    at = ckpt.rfind(text)
    ckpt[at + len(text) - 1] ^= 0x01
    (run / "projections.ckpt").write_bytes(bytes(ckpt))
    r = run_cli("resume", "c", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r
    r = run_cli("replay", "c", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r
    assert check_projections(run, tmp_path / "scratch", repair=False) == []


# -- 12.6: kill -9 of `replay --rebuild` ---------------------------------------------------

ITEMS = 3000


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A finished run of ITEMS conversations (the log written directly: a real run of this
    size takes a while), its projections from `replay --rebuild`."""
    base = tmp_path_factory.mktemp("big")
    run = base / "runs" / "b"
    run.mkdir(parents=True)
    data = base / "qa.jsonl"  # a resume re-reads the dataset and checks its sha256
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Item {i}? answer: A{i}", "expected": f"A{i}"}) + "\n"
                            for i in range(ITEMS)))
    paths = RunPaths(str(run))
    with LogWriter.open(paths.log) as writer:
        writer.append_many([RunStarted(run_id="b", items=ITEMS, dataset=str(data), dataset_sha256=file_sha256(str(data)),
                                       config={"model": "sim-1", "samples": 1}),
                            SessionStarted(pid=1)])
        for start in range(0, ITEMS, 100):
            batch = []
            for i in range(start, start + 100):
                key = {"item_id": f"q{i}"}
                batch += [Started(**key, request={"messages": [{"role": "user", "content": f"Item {i}? answer: A{i}"}]},
                                  expected=f"A{i}"),
                          Response(**key, text=f"The answer is A{i}"), Parsed(**key, value=f"A{i}")]
            writer.append_many(batch)
        writer.append(SessionEnded(reason="completed"))
    replay(paths, full=True)
    return run, projection_files(run)


def _conversations_going(conv: Path, inode: int, count: int):
    """True once the live conversations/ stops being what the checkpoint vouched for: files
    deleted from it, or the directory itself replaced or gone."""

    def check() -> bool:
        try:
            if os.stat(conv).st_ino != inode:
                return True
            with os.scandir(conv) as entries:
                return sum(1 for _ in entries) < count
        except FileNotFoundError:
            return True

    return check


KILLS = [("conversations", 0.0), ("conversations", 0.03), ("startup", None), ("startup", None), ("startup", None)]


@pytest.mark.parametrize("n", range(len(KILLS)))
def test_kill9_of_a_rebuild_loses_no_file_for_good(big_run, tmp_path, n):
    pristine_run, pristine = big_run
    trigger_kind, delay = KILLS[n]
    rng = random.Random(6100 + n)
    runs = tmp_path / "runs"
    run = runs / "b"
    shutil.copytree(pristine_run, run)
    conv = run / "conversations"
    if trigger_kind == "conversations":
        trigger = _conversations_going(conv, os.stat(conv).st_ino, ITEMS)
    else:
        delay = rng.uniform(0.0, 2.5)
        trigger = lock_held_by(run / "events.log.lock", 0)  # replaced below once the pid is known
    proc = start_cli("replay", "b", "--rebuild", "--runs-dir", str(runs), cwd=tmp_path)
    if trigger_kind == "startup":
        trigger = lock_held_by(run / "events.log.lock", proc.pid)
    code, _ = kill_when(proc, trigger, delay)
    story = f"kill {n} ({trigger_kind}, +{delay:.3f} s) -> exit {code}"
    if trigger_kind == "conversations":
        assert code == -9, f"{story}: the kill did not land while conversations/ was replaced ({proc.stderr})"

    follow = ("replay", "b") if n % 2 == 0 else ("resume", "b")
    r = run_cli(*follow, "--runs-dir", str(runs), cwd=tmp_path)
    assert r.returncode == 0, f"{story}: {r}"
    after = projection_files(run)
    missing = sorted(set(pristine) - set(after))
    differ = sorted(k for k in pristine if k in after and after[k] != pristine[k])
    if follow[0] == "resume":  # a resume adds a session: only summary.json may differ
        differ = [k for k in differ if k != "summary.json"]
    assert not missing and not differ, (f"{story}; then `{' '.join(follow)}`: {len(missing)} files missing "
                                        f"(e.g. {missing[:3]}), {len(differ)} differ (e.g. {differ[:3]})")
    assert sorted(set(after) - set(pristine)) == []
    leftovers = sorted(p.name for p in run.iterdir() if ".tmp." in p.name)
    assert leftovers == [], f"{story}: temp files left behind: {leftovers}"


# -- a checkpoint that checks out, over a log that changed under it -------------------------


def test_a_checkpoint_over_a_log_cut_and_grown_again_is_not_trusted(tmp_path):
    """The log lost its tail after the checkpoint (a repair), then grew past the checkpoint's
    offset again: the checkpoint's CRC holds, but its offset and seq are not a boundary of
    this log any more, so the next open folds from the log instead of trusting it."""
    from llm_ledger.ledger.reader import iter_frames
    from llm_ledger.projections.projector import Projector

    run = tmp_path / "r"
    run.mkdir()
    paths = RunPaths(str(run))

    def items(names: list[str], answer: str) -> list:
        out = []
        for name in names:
            key = {"item_id": name}
            out += [Started(**key, request={"messages": [{"role": "user", "content": name}]}, expected="A"),
                    Response(**key, text=answer), Parsed(**key, value=answer)]
        return out

    with LogWriter.open(paths.log) as writer:
        writer.append_many([RunStarted(run_id="r", items=30), SessionStarted(pid=1)])
        for n in range(10):
            writer.append_many(items([f"a{n}"], "A"))
    Projector.open(paths).close()  # checkpoint at the end of this log
    frames = list(iter_frames(paths.log))
    os.truncate(paths.log, frames[4].end)  # what a repair leaves ...
    with LogWriter.open(paths.log) as writer:  # ... then a session writes other events
        writer.append(SessionStarted(pid=2, reason="resume"))
        for n in range(20):
            writer.append_many(items([f"b{n}", f"c{n}"], "B"))
    Projector.open(paths).close()
    assert check_projections(run, tmp_path / "scratch", repair=False) == []
