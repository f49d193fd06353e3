"""`ledger merge RUN`: a sharded run's shards made into one run that every reader reads.

A sharded run (``ledger run --shards N``) keeps its truth in ``shards/<k>/events.log``, one
log per shard. Its top level is a run directory like any other whose ``events.log`` is
*derived*: the parent's ``run_started`` (``config.shards = N``) followed by the k-way merge
of the shard logs by timestamp (``heapq.merge`` over the shard readers; within a shard the
log's own order), numbered afresh. Every projection (``responses.jsonl``, ``summary.json``,
conversations, failures), the index, and so ``status``, ``export``, ``compare``, ``view``,
``show`` and ``log`` read that log unchanged: the statistics (accuracy and its interval,
latency percentiles, pass@k ...) are folded from the pooled events, never averaged from
per-shard figures, so a merged run's outputs are those of an unsharded run of the same
plan (apart from timings and session ids). The top level's own events -- reviews and
re-parses appended to a merged run (``shards/own.log``: ledger/own_log.py) -- are one more
stream of the merge, so a merge never drops them.

Sessions: the shards' sessions overlap; the merged log holds their union -- a
``session_started`` when the first shard starts, a ``session_ended`` when the last open
one ends, its reason the worst of theirs (error > interrupted > completed). A shard session
killed without ``session_ended`` ends, for the union, at its last event, as ``interrupted``.

Checks before anything is written (each refusal one line, exit 2, the old files untouched):
every shard 0..N-1 exists and says it is shard k of N of this run, its config hashes as
the run's (``ledger/shard_keys.config_sha256``, without the settings that may differ),
its dataset has the run's sha256, no shard is running, and no (item, sample) is in a
shard that does not own it (the hash decides: a key in two shards is in one that does not
own it). The last is checked while merging; the merged log replaces the old one only
after the whole merge succeeded. ``shards/merged.json`` records each shard's last seq,
so that ``status`` knows whether the merged figures are current.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from typing import Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Event, Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started
from llm_ledger.ledger.fsio import write_atomic
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import RunLock, holder_pid, is_locked
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.shard_keys import config_sha256, shard_info, shard_of

from .merge_log import remove_temps, write_log
from .merge_status import last_seq
from .projector import rebuild
from .summary import summarize

__all__ = ["Shard", "MergeReport", "merge", "merge_locked", "check_shards", "top_started", "is_sharded",
           "merged_manifest", "merged_events", "live_merged_events"]

_RANK = {"completed": 0, "interrupted": 1, "error": 2}
_REASON = {rank: reason for reason, rank in _RANK.items()}
_ITEM_EVENTS = (Started, Response, Parsed, Failed)


class Shard(msgspec.Struct, frozen=True):
    index: int
    paths_dir: str
    started: RunStarted

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.paths_dir)


class MergeReport(msgspec.Struct):
    run_id: str
    shards: int
    events: int  # in the merged log
    summary: dict[str, Any] = {}


def is_sharded(paths: RunPaths) -> bool:
    return os.path.isdir(paths.shards)


def top_started(paths: RunPaths) -> RunStarted:
    """The top level's ``run_started``; a run that is not sharded is refused."""
    started = _first(paths.log)
    if started is None:
        raise InputError(f"{paths.log}: the log does not begin with run_started")
    info = shard_info(started.config)
    if "index" in info:
        raise InputError(f"{paths.dir} is shard {info['index']} of run {info.get('run')}: merge run {info.get('run')}")
    if int(started.config.get("shards", 1) or 1) <= 1:
        raise InputError(f"run {paths.run_id} is not sharded (it was not started with --shards): nothing to merge")
    return started


def _first(log: str) -> RunStarted | None:
    if not os.path.isfile(log):
        return None
    event = next(iter_events(log), None)
    return event if isinstance(event, RunStarted) else None


def check_shards(paths: RunPaths, top: RunStarted, *, live: bool = False) -> list[Shard]:
    """Every shard of the run, each proven to belong to it; the first wrong one refused.
    ``live``: for a reader of a run that may be running -- shards not started yet are left
    out, running ones read as far as they are durable."""
    of, ident = int(top.config["shards"]), shard_info(top.config)
    if live:
        present = [k for k in range(of) if _first(paths.shard(k).log) is not None]
        return [_check_shard(paths, top, k, of, ident, live=True) for k in present]
    shards = [_check_shard(paths, top, k, of, ident) for k in range(of)]
    kept = {os.path.basename(p) for p in (paths.merged, paths.own_log, paths.own_log + ".lock", paths.own_log + ".broken")}
    extra = sorted(set(fs.listdir(paths.shards)) - {str(k) for k in range(of)} - kept)
    extra = [name for name in extra if ".tmp." not in name]
    if extra:
        raise InputError(f"{os.path.join(paths.shards, extra[0])}: not one of the {of} shards of run {paths.run_id}; "
                         "nothing was merged")
    return shards


def _check_shard(paths: RunPaths, top: RunStarted, k: int, of: int, ident: dict[str, Any], live: bool = False) -> Shard:
    shard = paths.shard(k)
    started = _first(shard.log)
    if started is None:
        raise InputError(f"{shard.log}: shard {k} of {of} is missing (never started): `ledger resume {paths.run_id}` "
                         "runs it; nothing was merged")
    info = shard_info(started.config)
    if (info.get("run"), info.get("index"), info.get("of")) != (top.run_id, k, of):
        raise InputError(f"{shard.log}: not shard {k} of {of} of run {top.run_id} (it says shard {info.get('index')} "
                         f"of {info.get('of')} of run {info.get('run')!r}); nothing was merged")
    ignored = ident.get("ignored", [])
    if config_sha256(started.config, ignored) != ident.get("config_sha256") or info.get("config_sha256") != ident.get("config_sha256"):
        raise InputError(f"{shard.log}: shard {k} has another config than run {top.run_id} "
                         f"({_differences(top.config, started.config, ignored)}); nothing was merged")
    if started.dataset_sha256 != top.dataset_sha256:
        raise InputError(f"{shard.log}: shard {k} ran another dataset than run {top.run_id} (sha256 "
                         f"{started.dataset_sha256[:12]} vs {top.dataset_sha256[:12]}); nothing was merged")
    if not live and is_locked(shard.lock):
        pid = holder_pid(shard.lock)
        raise InputError(f"shard {k} of run {top.run_id} is running{f' (pid {pid})' if pid else ''}: merge it once "
                         "it has stopped")
    return Shard(k, shard.dir, started)


def _differences(run: dict[str, Any], shard: dict[str, Any], ignored: list[str]) -> str:
    names = sorted(k for k in {*run, *shard} if k not in ignored and run.get(k) != shard.get(k))
    shown = [f"{n}: {run.get(n)!r} (run) vs {shard.get(n)!r} (shard)" for n in names[:3]]
    return "; ".join(shown) or "its config hash differs"


# -- the merged stream -------------------------------------------------------------------


def _tagged(shard: Shard, live: bool = False) -> Iterator[tuple[float, int, int, Event]]:
    """(ts, shard, position, event) of one shard, in its log's order, with the end of a
    session killed without ``session_ended`` (at its last event, ``interrupted``; ``live``:
    the last session may be running, and is left open)."""
    k, n, last_ts, open_session = shard.index, 0, 0.0, False
    for event in iter_events(shard.paths.log):
        if isinstance(event, SessionStarted):
            if open_session:
                yield last_ts, k, n, SessionEnded(reason="interrupted", ts=last_ts)
                n += 1
            open_session = True
        elif isinstance(event, SessionEnded):
            open_session = False
        yield event.ts, k, n, event
        n += 1
        last_ts = event.ts
    if open_session and not live:
        yield last_ts, k, n, SessionEnded(reason="interrupted", ts=last_ts)


def _own(paths: RunPaths, k: int) -> Iterator[tuple[float, int, int, Event]]:
    """The top level's own events (ledger/own_log.py), tagged as stream ``k`` (after the shards)."""
    if os.path.isfile(paths.own_log):
        for n, event in enumerate(iter_events(paths.own_log)):
            yield event.ts, k, n, event


def _check_own(paths: RunPaths) -> None:
    """The top level's own log must read whole: a merge that skipped a damaged part of it
    would drop reviews or re-parses from the run for good, without a word."""
    from llm_ledger.ledger.events import Reviewed
    from llm_ledger.ledger.maintenance import verify_log

    def own_kind(event: Event) -> bool:
        return isinstance(event, Reviewed) or (isinstance(event, SessionStarted) and event.reason == "reparse")

    has = os.path.isfile(paths.own_log)
    report = verify_log(paths.own_log) if has else None
    if report is not None and not report.ok:
        first = report.problems[0]
        raise InputError(f"{paths.own_log}: damaged at byte {first.offset} ({first.reason}): it holds this run's reviews "
                         "and re-parses, which a merge would lose; restore it, or move it aside to merge without them; "
                         "nothing was merged")
    # its last frame damaged reads as a torn write: the run's log, which got each of them
    # after the own log did, says whether any is missing
    def same(event: Event) -> bytes:  # the event as both logs hold it (each stamps its own seq and time)
        return msgspec.msgpack.encode(msgspec.structs.replace(event, seq=0, ts=0.0))

    kept = {same(e) for e in iter_events(paths.own_log) if own_kind(e)} if has else set()
    missing = sum(same(e) not in kept for e in iter_events(paths.log) if own_kind(e))
    if missing:
        raise InputError(f"{paths.own_log}: {missing} review(s) or re-parse(s) of the run's log are not in it (damaged "
                         "or cut): a merge would lose them; restore it; nothing was merged")


def live_merged_events(paths: RunPaths) -> Iterator[Event]:
    """The union of the shards as they are now, numbered as a merge numbers it: what a
    reader of a running sharded run (the event table) reads."""
    top = top_started(paths)
    events = merged_events(top, check_shards(paths, top, live=True), live=True, own=paths)
    for seq, event in enumerate(events, 1):
        yield msgspec.structs.replace(event, seq=seq)


def merged_events(top: RunStarted, shards: list[Shard], live: bool = False, own: RunPaths | None = None) -> Iterator[Event]:
    """The top's run_started, then every shard's events by timestamp, sessions as their
    union; raises InputError at an (item, sample) in a shard that does not own it. ``own``:
    the run whose own log (reviews, re-parses: ledger/own_log.py) is merged in as it is."""
    yield top
    of = int(top.config["shards"])
    open_shards: set[int] = set()
    worst = 0
    streams = [_tagged(s, live) for s in shards] + ([_own(own, of)] if own is not None else [])
    for _ts, k, _n, event in heapq.merge(*streams):
        if k == of:  # the top level's own: appended under the run's lock, never inside a shard session
            yield event
        elif isinstance(event, _ITEM_EVENTS):
            if shard_of(event.item_id, event.sample, of) != k:
                raise _misplaced(shards, event.item_id, event.sample, k)
            yield event
        elif isinstance(event, SessionStarted):
            if not open_shards:
                worst = 0
                yield event
            open_shards.add(k)
        elif isinstance(event, SessionEnded):
            if k not in open_shards:
                continue
            open_shards.discard(k)
            worst = max(worst, _RANK.get(event.reason, 1))
            if not open_shards:
                yield msgspec.structs.replace(event, reason=_REASON[worst])
        elif not isinstance(event, RunStarted):
            yield event


def _misplaced(shards: list[Shard], item_id: str, sample: int, k: int) -> InputError:
    home = shard_of(item_id, sample, int(shards[0].started.config["shard"]["of"]))
    there = any(isinstance(e, _ITEM_EVENTS) and e.item_id == item_id and e.sample == sample
                for s in shards if s.index == home for e in iter_events(s.paths.log))
    where = f"in two shards ({min(home, k)} and {max(home, k)})" if there else f"in shard {k}, which does not own it (shard {home} does)"
    return InputError(f"item {item_id!r} sample {sample} is {where}: the shards overlap; nothing was merged")


# -- merging -----------------------------------------------------------------------------


def merge(paths: RunPaths) -> MergeReport:
    """Check the shards and merge them into the top level (taking the run's lock: a live
    sharded run merges itself at its end)."""
    lock = RunLock.acquire(paths.lock)
    try:
        report, lock = merge_locked(paths, lock)
    finally:
        lock.release()
    return report


def merge_locked(paths: RunPaths, lock: RunLock) -> tuple[MergeReport, RunLock]:
    """``merge`` under the lock the caller holds on the top log. The merged log replaces
    the old one (a new file): the lock is taken again on it, and that lock is returned, the
    caller's released."""
    top = top_started(paths)
    shards = check_shards(paths, top)
    _check_own(paths)
    remove_temps(paths.log)
    manifest = merged_manifest(shards)
    _forget(paths.merged)  # it vouches for the merged figures: not while they change
    events = write_log(paths.log, merged_events(top, shards, own=paths))
    relocked = RunLock.acquire(paths.lock)  # the new inode: nobody else between here and the projections
    lock.release()
    try:
        _forget(paths.checkpoint)  # it vouched for the old log's projections
        fs.rmtree(paths.index, ignore_errors=True)
        RunIndex.open_for_log(paths.index, paths.log).close()
        state = rebuild(paths).state
        write_atomic(paths.merged, msgspec.json.encode(manifest) + b"\n")
    except BaseException:
        relocked.release()
        raise
    return MergeReport(paths.run_id, len(shards), events, summarize(state)), relocked


def _forget(path: str) -> None:
    try:
        fs.unlink(path)
    except FileNotFoundError:
        pass


def merged_manifest(shards: list[Shard]) -> dict[str, Any]:
    """What the merged log was made of: each shard's last seq (``status`` compares)."""
    return {"shards": [last_seq(s.paths.log) for s in shards]}
