"""Reading runs without opening them for writing: the one function that decides a run's status.

``run_status`` is what ``ledger status``, ``ledger ls`` and the viewer all call, so they
cannot disagree; it returns one typed value, ``RunStatus`` (``describe`` adds what the run
is -- model, dataset, start -- for a row of ``ls`` and of the viewer: ``RunRow``). Its counts (planned, done, failed, in flight, pending) and the state of
the last session come from the log, read through the cheapest source that is true:

* ``index``: the LMDB index, read-only, when it is current -- the log offset it applied is
  the log's valid end (O(1)); or the run is live (a writer holds the lock), where it may lag
  by a few milliseconds;
* ``index+log``: the index plus the events after its offset, when the log grew past it (a
  writer killed before its last index update): O(events after the offset);
* ``log``: a replay of the whole log (streamed by ``ledger.reader``; one small state per
  item) when there is no readable index or it is not a prefix of the log -- its offset is
  past the log's end or not a frame of it (a ``verify --repair`` cut events it had applied).

An item's state follows the one lifecycle, ``ledger.lifecycle.transition`` (started -> in
flight, parsed -> done, final failure -> failed; the table there is the rule). The status, from the lock, the last session
and the counts (``decide``):

    running                  a writer holds the lock
    completed                the last session ended completed and every planned item is done
    completed_with_failures  ... ended completed, N items failed finally ("completed, N failed")
    completed_with_pending   ... ended completed with items never finished ("completed, N pending")
    interrupted              the last session ended interrupted, or never ended (killed)
    error                    the last session ended on an error

``status_text`` is how a person reads it; ``status`` is the stable word. The accuracy shown
beside it comes from ``summary.json`` only when that file vouches for the same log (its
``last_seq`` is the log's last seq; a live run's refreshes as it goes): a summary written
before a crash or a repair is not passed off as the run's figure.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import lmdb
import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import CorruptLogError, IndexStateError, LedgerError
from llm_ledger.ledger.events import Event, Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started
from llm_ledger.ledger.index import RunIndex, next_state
from llm_ledger.ledger.lifecycle import DONE, FAILED, IN_FLIGHT, PENDING, STATE_NAMES
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import is_locked
from llm_ledger.ledger.reader import iter_events, iter_frames, log_end
from llm_ledger.ledger.shard_keys import planned_keys

__all__ = ["Counts", "RunStatus", "RunRow", "run_status", "describe", "files_version", "list_runs", "read_summary",
           "first_event", "decide", "status_text", "experiment_of"]


class Counts(NamedTuple):
    """Keys of a run by state; ``pending`` is planned and never started."""

    planned: int
    done: int
    failed: int
    in_flight: int
    pending: int


class RunStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A run's status and counts: the one value ``ledger status`` (``--json``: these fields),
    ``ledger ls`` and the viewer show. ``status`` is the stable word, ``status_text`` how a
    person reads it; ``events`` the log's last seq; ``accuracy`` only when ``summary.json``
    vouches for this log (``summary_current``); ``source`` where the counts came from."""

    run_id: str
    status: str
    status_text: str
    planned: int
    done: int
    failed: int
    in_flight: int
    pending: int
    events: int
    accuracy: float | None
    summary_current: bool
    source: str

    @property
    def counts(self) -> Counts:
        return Counts(self.planned, self.done, self.failed, self.in_flight, self.pending)


class RunRow(RunStatus, frozen=True, kw_only=True):
    """A row of ``ledger ls`` and of the viewer's run list: the status, and what the run is."""

    model: str
    dataset: str
    started: str  # UTC, "YYYY-MM-DD HH:MM:SS"; "" when the log has no run_started
    experiment: str = ""  # the experiment the run is an arm of (runners/experiment.py), "" for none


def read_summary(paths: RunPaths) -> dict[str, Any]:
    try:
        with fs.open_file(paths.summary, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return {}


def first_event(paths: RunPaths) -> RunStarted | None:
    event = next(iter_events(paths.log), None)
    return event if isinstance(event, RunStarted) else None


# -- the item lifecycle and the status ---------------------------------------------------


def decide(session: str, live: bool, counts: Counts) -> str:
    """The status word from the last session's state, the lock and the counts."""
    if live:
        return "running"
    if session == "completed":
        if counts.failed:
            return "completed_with_failures"
        return "completed_with_pending" if counts.pending + counts.in_flight else "completed"
    if session in ("", "running"):
        return "interrupted"  # no session_ended: the process was killed
    return session


def status_text(status: str, counts: Counts) -> str:
    """How a person reads the status: ``completed, 3 failed``."""
    if not status.startswith("completed_with_"):
        return status
    parts = [f"{counts.failed} failed"] if counts.failed else []
    unfinished = counts.pending + counts.in_flight
    return ", ".join(["completed", *parts, *([f"{unfinished} pending"] if unfinished else [])])


# -- counting ----------------------------------------------------------------------------


@dataclass
class _Counts:
    """What a source says: items per state, planned, the last session's state, last seq."""

    by_state: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    planned: int = 0
    session: str = ""
    last_seq: int = 0
    source: str = "log"

    def counts(self) -> Counts:
        done, in_flight, failed = self.by_state[DONE], self.by_state[IN_FLIGHT], self.by_state[FAILED]
        return Counts(self.planned, done, failed, in_flight, max(0, self.planned - done - in_flight - failed))

    def fold(self, events: Iterable[Event], prior: Callable[[str, int], int | None]) -> None:
        """Fold events in; ``prior(item_id, sample)`` gives an item's state before them (None:
        no record yet). The lifecycle is the index's own ``next_state``."""
        states: dict[tuple[str, int], int | None] = {}
        for event in events:
            self.last_seq = event.seq
            if isinstance(event, (Started, Response, Parsed, Failed)):
                key = (event.item_id, event.sample)
                before = states[key] if key in states else prior(*key)
                after = states[key] = next_state(before, event)
                if after != before:
                    if before is not None and before != PENDING:
                        self.by_state[before] -= 1
                    if after is not None:
                        self.by_state[after] += 1
            elif isinstance(event, RunStarted):
                self.planned = planned_keys(event.items, event.config)
                self.session = "running"
            elif isinstance(event, SessionStarted):
                self.session = "running"
            elif isinstance(event, SessionEnded):
                self.session = event.reason


def _replay(paths: RunPaths) -> _Counts:
    counts = _Counts()
    counts.fold(iter_events(paths.log), lambda item_id, sample: None)
    return counts


def _from_index(paths: RunPaths, index: RunIndex, live: bool) -> _Counts | None:
    """The index's counts, brought up to the log's end; None when it is no prefix of the log."""
    for _ in range(5):  # a live writer may apply between the two reads: take a matching pair
        offset, seq = index.applied()
        stored = index.counts()
        if stored["applied_seq"] == seq:
            break
    counts = _Counts([stored[name] for name in STATE_NAMES], stored["planned"], str(stored["status"]), seq, "index")
    if live:
        return counts  # the writer keeps it a few ms behind the log at most
    end = log_end(paths.log)
    if offset == end:
        return counts
    if offset > end:
        return None  # the log was cut below what the index applied
    return _with_tail(paths, index, counts, offset, end)


def _with_tail(paths: RunPaths, index: RunIndex, counts: _Counts, offset: int, end: int) -> _Counts | None:
    frames = iter_frames(paths.log, offset, end)
    try:
        first = next(frames, None)
    except CorruptLogError:
        return None  # the offset is not a frame boundary of this log
    if first is None or first.first_seq != counts.last_seq + 1:
        return None

    def events() -> Iterator[Event]:
        yield from first.events
        for frame in frames:
            yield from frame.events

    def prior(item_id: str, sample: int) -> int | None:
        state = index.get(item_id, sample)
        return None if state is None else state.state

    counts.fold(events(), prior)
    counts.source = "index+log"
    return counts


def _counts(paths: RunPaths, live: bool) -> _Counts:
    try:
        index = RunIndex.open_readonly(paths.index, paths.log)  # refused when it does not match the log
    except IndexStateError:
        return _replay(paths)
    try:
        counts = _from_index(paths, index, live)
    except (lmdb.Error, ValueError, msgspec.DecodeError):  # a scribbled index: the log decides
        counts = None
    finally:
        index.close()
    return counts if counts is not None else _replay(paths)


def run_status(paths: RunPaths) -> RunStatus:
    """A run's status, counts and (when ``summary.json`` is current) accuracy."""
    if os.path.isdir(paths.shards):  # a sharded run: its shards, summed (merge_status.py)
        from .merge_status import sharded_status

        return sharded_status(paths)
    live = is_locked(paths.lock)
    found = _counts(paths, live)
    counts = found.counts()
    status = decide(found.session, live, counts)
    summary = read_summary(paths)
    seq = summary.get("last_seq")
    current = isinstance(seq, int) and (live or seq == found.last_seq)  # live: both lag by a few ms
    return RunStatus(run_id=paths.run_id, status=status, status_text=status_text(status, counts), **counts._asdict(),
                     events=found.last_seq, accuracy=summary.get("accuracy") if current else None,
                     summary_current=current, source=found.source)


# -- listing -----------------------------------------------------------------------------


def list_runs(runs_dir: str, describe_run: Callable[[RunPaths], RunRow] | None = None) -> list[RunRow]:
    """``describe`` of every run under ``runs_dir`` (or ``describe_run``: the viewer's cache)."""
    if not os.path.isdir(runs_dir):
        return []
    rows = []
    for name in sorted(fs.listdir(runs_dir)):
        paths = RunPaths(os.path.join(runs_dir, name))
        if os.path.isfile(paths.log):
            rows.append((describe_run or describe)(paths))
    return sorted(rows, key=lambda r: r.started)


def describe(paths: RunPaths) -> RunRow:
    """``run_status`` plus model, dataset and start time: a row of ``ledger ls`` and of the
    viewer. A run whose log cannot be read is a ``damaged`` row, not an error for all."""
    try:
        started = first_event(paths)
        info = run_status(paths)
    except LedgerError as exc:  # one damaged run does not hide the others
        started, info = None, _damaged(paths, exc)
    when = datetime.datetime.fromtimestamp(started.ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S") if started else ""
    model = str(started.config.get("model", "")) if started else ""
    return RunRow(**msgspec.structs.asdict(info), model=model or str(read_summary(paths).get("model") or ""),
                  dataset=started.dataset if started else "", started=when,
                  experiment=str(experiment_of(started.config).get("name", "")) if started else "")


def experiment_of(config: dict[str, Any]) -> dict[str, Any]:
    """The ``experiment`` part of a run's config ({} for a run of its own): an arm's name,
    experiment and provider (runners/experiment.py)."""
    value = config.get("experiment")
    return value if isinstance(value, dict) else {}


def files_version(paths: RunPaths) -> tuple:
    """What ``describe`` reads, by size and mtime, and whether a writer holds the lock: while
    this is unchanged, so is the answer (the viewer asks every few seconds)."""
    stamps = []
    shard_logs = [os.path.join(paths.shards, k, "events.log") for k in _listed(paths.shards)]
    for path in (paths.log, os.path.join(paths.index, "data.mdb"), paths.summary, *shard_logs):
        try:
            st = fs.stat(path)
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append(None)
    return (*stamps, is_locked(paths.lock), *(is_locked(log + ".lock") for log in shard_logs))


def _listed(directory: str) -> list[str]:
    return sorted(fs.listdir(directory)) if os.path.isdir(directory) else []


def _damaged(paths: RunPaths, exc: LedgerError) -> RunStatus:
    return RunStatus(run_id=paths.run_id, status="damaged", status_text=f"damaged: {exc}", **Counts(0, 0, 0, 0, 0)._asdict(),
                     events=0, accuracy=None, summary_current=False, source="log")
