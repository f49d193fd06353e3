"""Reviewing a reply: a person's verdict appended as a ``reviewed`` event, then the rows rebuilt.

A use case, like re-parsing (``reparse.py``): under the run's writer lock it finds the
item's reply -- the latest final ``response`` of an (item, sample) the lifecycle says is
done -- and appends one ``reviewed`` event naming that response's seq and the sha256 of its
text, the verdict (correct / incorrect / cleared), a note, who (the OS user name) and, as
every event, when (``ts``). Then the rows projection is rebuilt from the log, which applies
each key's latest review at the item's parse (``projections/overrides.py``):
``responses.jsonl``, ``summary.json`` and ``reviews.jsonl`` show it at once.

A live run is refused, with one line saying what to do: its projector owns the files and
its writer the log; a second file of pending reviews folded in by the run would be a second
truth with its own recovery rules, for a few minutes of waiting. Reviewing a run that
finished, or was stopped, is always possible (``ledger resume`` later keeps the reviews).

Bad input -- an unknown item or sample, an item with no reply (failed, not finished), a
verdict that is not one of ``VERDICTS`` -- is an ``InputError`` raised before anything is
appended. The viewer's review mode calls this same function.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Any

from llm_ledger.ledger.errors import InputError, LogLockedError
from llm_ledger.ledger.events import VERDICTS, ResponseView, Reviewed, decode_many_view, to_builtins
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lifecycle import DONE, FAILED, PENDING, STATE_NAMES, State, kind_of, transition
from llm_ledger.ledger.lock import holder_pid, is_locked
from llm_ledger.ledger.own_log import own_writer
from llm_ledger.ledger.reader import iter_frames
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.checkpoint import invalidate
from llm_ledger.projections.merge_status import require_merged
from llm_ledger.projections.projector import ROWS, rebuild
from llm_ledger.projections.reviews import reply_sha256
from llm_ledger.projections.summary import summarize

__all__ = ["review", "Target", "find_target", "reviewer", "RunLiveError", "MAX_NOTE"]

MAX_NOTE = 4000  # characters of a note


class RunLiveError(InputError):
    """The run is live: reviews are refused until it stops."""

    def __init__(self, paths: RunPaths) -> None:
        pid = holder_pid(paths.lock)
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"run {paths.run_id} is live ({holder} is writing it): reviews are not taken while a run is "
                         f"going; review it once it has stopped (`ledger status {paths.run_id}`)")


@dataclass(frozen=True)
class Target:
    """The reply a review judges: its ``response`` event's seq, turn and text."""

    item_id: str
    sample: int
    turn: int
    seq: int
    text: str


def reviewer() -> str:
    """The OS user name (``who``); "unknown" where the system cannot say."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def review(paths: RunPaths, item_id: str, sample: int, verdict: str, note: str = "", who: str | None = None) -> dict[str, Any]:
    """Append the review and rebuild the rows. Returns the appended event (as plain data,
    ``reviewed``) and the run's summary after it (``summary``)."""
    if verdict not in VERDICTS:
        raise InputError(f"verdict {verdict!r}: one of {', '.join(VERDICTS)}")
    if len(note) > MAX_NOTE:
        raise InputError(f"--note: at most {MAX_NOTE} characters (got {len(note)})")
    if is_locked(paths.lock):
        raise RunLiveError(paths)
    require_merged(paths)  # a sharded run: review its replies, not a merge older than its shards
    try:
        writer = own_writer(paths, LogWriter.open(paths.log, lambda: RunIndex.durable_end(paths.index)))
    except LogLockedError:
        raise RunLiveError(paths) from None
    with writer:
        target = find_target(paths, item_id, sample)  # under the lock: no reply can arrive meanwhile
        event = Reviewed(item_id=target.item_id, sample=target.sample, turn=target.turn, target_seq=target.seq,
                         reply_sha256=reply_sha256(target.text), verdict=verdict, note=note, who=who or reviewer())
        # The rows' checkpoint stops vouching first: were we killed before the rebuild below
        # finished, the next open folds the rows from zero, with the review.
        invalidate(paths.checkpoint, (ROWS,))
        appended = writer.append(event)
        projector = rebuild(paths, (ROWS,))
    return {"reviewed": to_builtins(appended), "summary": summarize(projector.state)}


def find_target(paths: RunPaths, item_id: str, sample: int) -> Target:
    """The latest final reply of a done (item, sample), or an InputError saying why there is
    none to review."""
    states: dict[int, State] = {}
    replies: dict[int, ResponseView] = {}
    for frame in iter_frames(paths.log, decode=decode_many_view):
        for event in frame.events:
            if getattr(event, "item_id", None) != item_id or kind_of(event) is None:
                continue
            n = event.sample  # type: ignore[union-attr]
            states[n] = transition(states.get(n, PENDING), event)
            if isinstance(event, ResponseView) and event.final:
                replies[n] = event
    if not states:
        raise InputError(f"run {paths.run_id} has no item {item_id!r}")
    if sample not in states:
        have = ", ".join(str(n) for n in sorted(states))
        raise InputError(f"run {paths.run_id}: item {item_id!r} has no sample {sample} (samples: {have})")
    state, reply = states[sample], replies.get(sample)
    if state == FAILED:
        raise InputError(f"run {paths.run_id}: item {item_id!r} sample {sample} failed: no reply to review")
    if state != DONE:
        raise InputError(f"run {paths.run_id}: item {item_id!r} sample {sample} is {STATE_NAMES[state].replace('_', ' ')}: "
                         f"no reply to review yet")
    if reply is None:
        raise InputError(f"run {paths.run_id}: item {item_id!r} sample {sample} has no reply to review")
    return Target(item_id, sample, reply.turn, reply.seq, reply.text)
