"""What must hold for a run directory after a crash, checked on copies (never on the run
itself, so that the next resume still meets the crash as it was).

Each check returns a list of failures (strings) instead of asserting, so that bench/soak.py
can count them; tests assert the list is empty and print the seed.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import msgspec

from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.events import Event, Parsed, Response
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.maintenance import verify_log
from llm_ledger.ledger.reader import iter_events, log_end
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.projector import Projector, rebuild

__all__ = ["read_log", "encoded", "reply_keys", "done_keys", "lost_events", "check_prefix", "check_reopen",
           "check_projections", "projection_files", "requests_after", "resent", "check_final_log"]

_encode = msgspec.msgpack.Encoder().encode


def read_log(log: Path) -> tuple[list[Event], str]:
    """Every event a reader finds, and "" -- or the failure if reading fails."""
    try:
        return list(iter_events(str(log))), ""
    except (LedgerError, OSError) as exc:
        return [], f"reading {log} failed: {exc}"


def encoded(events: list[Event]) -> list[bytes]:
    return [_encode(e) for e in events]


def reply_keys(events: list[Event]) -> set[str]:
    """item/sample/turn of every reply in the log (what the simulator's x-ledger-key names)."""
    return {f"{e.item_id}/{e.sample}/{e.turn}" for e in events if isinstance(e, Response)}


def done_keys(events: list[Event]) -> set[tuple[str, int]]:
    return {(e.item_id, e.sample) for e in events if isinstance(e, Parsed)}


def lost_events(before: list[bytes], after: list[bytes]) -> int:
    """How many events of ``before`` are not, unchanged, at the same place in ``after``."""
    return sum(1 for i, event in enumerate(before) if i >= len(after) or after[i] != event)


def check_prefix(before: list[bytes], after: list[bytes], what: str) -> list[str]:
    """``before`` (the durable log at an earlier moment) must be a prefix of ``after``."""
    if after[:len(before)] == before:
        return []
    lost = next(i for i, (a, b) in enumerate(zip(before, after + [b""] * len(before))) if a != b)
    return [f"{what}: event seq {lost + 1} durable earlier is gone or changed ({len(before)} before, {len(after)} now)"]


def check_reopen(run_dir: Path, scratch: Path, snapshot: list[bytes]) -> list[str]:
    """On a copy: the writer opens (cutting a torn tail), exactly the snapshot survives, the
    log verifies clean, and the index catches up to the log's end."""
    copy = scratch / "reopen"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run_dir, copy)
    paths = RunPaths(str(copy))
    failures = []
    try:
        with LogWriter.open(paths.log) as writer:
            if writer.last_seq != len(snapshot):
                failures.append(f"reopen: last seq {writer.last_seq}, the log had {len(snapshot)} events")
        after, error = read_log(Path(paths.log))
        if error:
            return failures + [f"reopen: {error}"]
        if encoded(after) != snapshot:
            failures.append(f"reopen: {len(after)} events after recovery, {len(snapshot)} before")
        report = verify_log(paths.log)
        if not report.ok:
            failures.append(f"reopen: verify found {[(p.offset, p.reason) for p in report.problems]}")
        index = RunIndex.open_for_log(paths.index, paths.log)
        try:
            if index.applied() != (log_end(paths.log), len(snapshot)):
                failures.append(f"reopen: index applied {index.applied()}, log ends at {log_end(paths.log)}/{len(snapshot)}")
            done = len(done_keys(after))
            if index.counts()["done"] != done:
                failures.append(f"reopen: index says {index.counts()['done']} done, the log {done}")
        finally:
            index.close()
    except (LedgerError, OSError) as exc:
        failures.append(f"reopen failed: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return failures


def projection_files(run_dir: Path) -> dict[str, bytes]:
    out = {}
    for name in ("responses.jsonl", "summary.json", "failures.jsonl"):
        path = run_dir / name
        out[name] = path.read_bytes() if path.exists() else b"<missing>"
    conversations = run_dir / "conversations"
    if conversations.is_dir():
        for p in sorted(conversations.iterdir()):
            out["conversations/" + p.name] = p.read_bytes()
    return out


def _diff(a: dict[str, bytes], b: dict[str, bytes]) -> str:
    names = sorted(set(a) | set(b))
    bad = [n for n in names if a.get(n) != b.get(n)]
    return f"{len(bad)} files differ, e.g. {bad[:3]}"


def check_projections(run_dir: Path, scratch: Path, *, repair: bool = True) -> list[str]:
    """The projections equal a rebuild from the log alone, byte for byte. With ``repair``,
    the projections as a crash left them are first repaired the way the next open does
    (``Projector.open``: checkpoint, truncation, catch-up), on a copy."""
    live, rebuilt = scratch / "live", scratch / "rebuilt"
    for d in (live, rebuilt):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(run_dir, live, ignore=shutil.ignore_patterns("index.lmdb"))
    rebuilt.mkdir()
    shutil.copyfile(run_dir / "events.log", rebuilt / "events.log")  # a rebuild needs nothing else
    try:
        if repair:
            Projector.open(RunPaths(str(live))).close()
        rebuild(RunPaths(str(rebuilt)))
        a, b = projection_files(live), projection_files(rebuilt)
        if a != b:
            return [f"projections != rebuild ({'after repair' if repair else 'live'}): {_diff(a, b)}"]
        return []
    except (LedgerError, OSError, ValueError) as exc:
        return [f"projection check failed: {type(exc).__name__}: {exc}"]
    finally:
        for d in (live, rebuilt):
            shutil.rmtree(d, ignore_errors=True)


def requests_after(req_log: Path, offset: int) -> list[dict]:
    if not req_log.exists():
        return []
    with open(req_log, "rb") as f:
        f.seek(offset)
        data = f.read()
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def resent(req_log: Path, offset: int, durable: set[str]) -> list[str]:
    """Keys requested after ``offset`` of the request log although their reply was durable."""
    return sorted(e["key"] for e in requests_after(req_log, offset) if e["key"] in durable)


def check_final_log(events: list[Event], all_keys: set[str]) -> list[str]:
    """A finished run: gapless seqs and exactly one reply per planned item/sample/turn."""
    failures = []
    if [e.seq for e in events] != list(range(1, len(events) + 1)):
        failures.append("final log: seqs are not gapless from 1")
    replies = Counter(f"{e.item_id}/{e.sample}/{e.turn}" for e in events if isinstance(e, Response))
    if replies != Counter(all_keys):
        twice = sorted(k for k, n in replies.items() if n > 1)
        missing = sorted(all_keys - set(replies))
        failures.append(f"final log: replies twice {twice[:5]} ({len(twice)}), missing {missing[:5]} ({len(missing)})")
    return failures
