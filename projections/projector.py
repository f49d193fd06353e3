"""The projector: feeds durable events through the folds and writes the files.

Two projections, each with its own fold, files and part of the checkpoint:

* rows (fold.py): ``responses.jsonl`` (appended) and ``summary.json`` (rewritten atomically,
  at most every ``refresh`` seconds and on close);
* conversations (conversations.py): ``conversations/*.json``, each written atomically
  (temp + rename).

They are kept apart because they cost very differently to rebuild: rows are one appended
line per item, conversations one file create per item (about a hundred times slower on a
file system). ``rebuild`` folds the rows first, so ``responses.jsonl`` and ``summary.json``
are ready in seconds, and an open that finds only ``responses.jsonl`` damaged refolds only
the rows.

The checkpoint (``projections.ckpt``, MessagePack, written atomically, no fsync) holds, per
projection, the log offset and seq applied and the fold's state; for the rows also the byte
length and CRC-32 of ``responses.jsonl`` at that point. On open each projection repairs
itself from its part: ``responses.jsonl`` is truncated to the checkpointed length (a partial
last line from a crash goes away) and every event after the checkpoint is applied again
(conversation files are overwritten with identical bytes). A part ahead of the log (the log
lost its tail after the projections consumed it), a missing or unreadable checkpoint, or a
``responses.jsonl`` shorter than recorded or different inside means that projection is
folded again from offset zero. Projections never fsync: the log is the truth.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor

import msgspec

from ledger.events import Parsed, decode_many_view
from ledger.framing import HEADER_SIZE, Frame
from ledger.fsio import write_atomic
from ledger.errors import LogLockedError
from ledger.layout import RunPaths
from ledger.lock import RunLock
from ledger.reader import iter_frames, log_end
from ledger.recovery import locate_end

from . import conversations as conv_fold
from . import fold as rows_fold
from .conversations import Conversation, ConversationState
from .fold import Key, RunState
from .reparse import overrides
from .summary import encode_summary

__all__ = ["Projector", "Checkpoint", "rebuild", "refresh", "checkpointed_state", "ROWS", "CONVERSATIONS"]

_VERSION = 5  # bumped whenever a state changes shape: an older checkpoint means a full rebuild
ROWS, CONVERSATIONS = "rows", "conversations"
# write_atomic's temp names end in ".tmp.<pid>"; real files never do (conversations end in
# "_s<N>.json"), so an item id like "a.tmp.b" is safe from the clean-up.
_TEMP = re.compile(r"\.tmp\.\d+$")


class RowsCheckpoint(msgspec.Struct, kw_only=True):
    offset: int = HEADER_SIZE
    seq: int = 0
    responses_bytes: int = 0
    responses_crc: int = 0  # CRC-32 of those bytes: damage inside the file means a refold
    state: RunState = msgspec.field(default_factory=RunState)


class ConversationsCheckpoint(msgspec.Struct, kw_only=True):
    offset: int = HEADER_SIZE
    seq: int = 0
    state: ConversationState = msgspec.field(default_factory=ConversationState)


class Checkpoint(msgspec.Struct, kw_only=True):
    version: int = _VERSION
    clean: bool = False  # written by close(): nothing was written after it
    reparsed: bool = False  # folded with re-parse overrides: keep using them
    rows: RowsCheckpoint = msgspec.field(default_factory=RowsCheckpoint)
    conversations: ConversationsCheckpoint = msgspec.field(default_factory=ConversationsCheckpoint)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Checkpoint).decode


class Projector:
    """Owns a run's projection files; ``apply_frames`` is safe to call from one thread."""

    def __init__(self, paths: RunPaths, *, refresh: float = 1.0, checkpoint_every: float = 5.0,
                 writers: int = 0) -> None:
        self.paths = paths
        self.refresh = refresh
        self.checkpoint_every = checkpoint_every
        self.ckpt = Checkpoint()
        self._responses = None
        self._last_summary = 0.0
        self._last_ckpt = 0.0
        self.overrides: dict[Key, Parsed] = {}  # re-parses (reparse.py), for a fold from zero
        self.refolded: set[str] = set()  # projections this open folds from offset zero
        # Conversation files: written inline by default (a live run's projector thread: extra
        # threads would only compete with the event loop for the GIL); a rebuild uses a few
        # writer threads to overlap the syscalls with the fold. Either way they are drained
        # before every checkpoint, so a checkpoint never covers a file not written yet.
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="ledger-conversations") if writers else None
        self._pending: list[Future[None]] = []
        self._dirty = False  # anything applied since the files were last written
        self.broken = False  # an error left the state ahead of the files: never checkpoint it

    @property
    def state(self) -> RunState:
        """The rows fold's state: totals, open and failed items (what summary.json shows)."""
        return self.ckpt.rows.state

    def conversation(self, key: Key) -> Conversation | None:
        """An unfinished or finally failed conversation (a resume continues it)."""
        state = self.ckpt.conversations.state
        return state.open.get(key) or state.failed.get(key)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, paths: RunPaths, parts: Sequence[str] = (ROWS, CONVERSATIONS), **kw: float) -> "Projector":
        """Load the checkpoint, repair the files from it, catch ``parts`` up with the log
        (a projection left out is repaired but stays where its checkpoint has it)."""
        projector = cls(paths, **kw)
        projector._remove_stale_temps(parts)
        projector._load()
        projector._open_responses()
        projector.catch_up(parts)
        projector._redo_with_reparses(parts)
        return projector

    def _load(self, keep: Sequence[str] = (ROWS, CONVERSATIONS)) -> None:
        """Load the checkpoint and check the files of the projections to ``keep`` against it
        (the others are about to be folded again from zero)."""
        try:
            with open(self.paths.checkpoint, "rb") as f:
                ckpt = _decode(f.read())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            ckpt = None
        if ckpt is None or ckpt.version != _VERSION:
            self._reset(ROWS, CONVERSATIONS)
            return
        end = log_end(self.paths.log)
        self.ckpt = ckpt
        if ckpt.reparsed:  # catching up must apply re-parses the way the checkpointed part did
            self.overrides = overrides(self.paths.log)
        if ROWS in keep and not self._rows_intact(end):
            self._reset(ROWS)
        if CONVERSATIONS in keep:
            if ckpt.conversations.offset > end:
                self._reset(CONVERSATIONS)
            elif not ckpt.clean:
                self._remove_newer_conversations()

    def _rows_intact(self, end: int) -> bool:
        rows = self.ckpt.rows
        try:
            size = os.path.getsize(self.paths.responses)
        except OSError:
            return False
        if rows.offset > end or size < rows.responses_bytes:
            return False
        if _crc_prefix(self.paths.responses, rows.responses_bytes) != rows.responses_crc:
            return False  # zeroed or garbled inside (projections are never synced)
        if size > rows.responses_bytes:
            os.truncate(self.paths.responses, rows.responses_bytes)
        return True

    def _remove_newer_conversations(self) -> None:
        """After a crash, conversation files written after the checkpoint may record events
        the log no longer has (it lost its tail): remove those. File times only pick the
        candidates (with a margin: the kernel's file clock is coarse); each file's own
        ``seq`` decides."""
        if not os.path.isdir(self.paths.conversations):
            return
        since = os.stat(self.paths.checkpoint).st_mtime_ns - 2_000_000_000
        with open(self.paths.log, "rb") as f:
            last_seq = locate_end(f, self.paths.log).last_seq
        with os.scandir(self.paths.conversations) as entries:
            for entry in entries:
                if entry.stat().st_mtime_ns >= since and _recorded_seq(entry.path) > last_seq:
                    os.unlink(entry.path)

    def _remove_stale_temps(self, parts: Iterable[str] = (CONVERSATIONS,)) -> None:
        """Temp files of a process killed between write and rename (we hold the run now): in
        the run's directory, and among the conversations if they are in ``parts`` (a
        directory of one file per item takes a while to list)."""
        for directory in (self.paths.dir, self.paths.conversations) if CONVERSATIONS in parts else (self.paths.dir,):
            if os.path.isdir(directory):
                for name in os.listdir(directory):
                    if ".tmp." in name and _TEMP.search(name):
                        os.unlink(os.path.join(directory, name))

    def _reset(self, *parts: str) -> None:
        """Forget these projections' files and state: they are folded again from zero."""
        if ROWS in parts:
            for path in (self.paths.responses, self.paths.summary):
                if os.path.exists(path):
                    os.unlink(path)
            self.ckpt.rows = RowsCheckpoint()
            if self._responses is not None:
                self._responses.close()
                self._responses = open(self.paths.responses, "ab")
        if CONVERSATIONS in parts:
            shutil.rmtree(self.paths.conversations, ignore_errors=True)
            os.makedirs(self.paths.conversations, exist_ok=True)
            self.ckpt.conversations = ConversationsCheckpoint()
        if ROWS in parts and CONVERSATIONS in parts and os.path.exists(self.paths.checkpoint):
            os.unlink(self.paths.checkpoint)
        self.refolded.update(parts)
        self._dirty = True

    def _open_responses(self) -> None:
        os.makedirs(self.paths.conversations, exist_ok=True)
        self._responses = open(self.paths.responses, "ab")

    def catch_up(self, parts: Iterable[str] = (ROWS, CONVERSATIONS)) -> None:
        """Apply what the log has beyond the checkpoint. The cyclic garbage collector is paused
        meanwhile: decoded events make millions of short-lived containers and no cycles, and
        its passes over them cost a third of a large rebuild."""
        parts = tuple(parts)
        start = min(self.ckpt.rows.offset if ROWS in parts else 1 << 62,
                    self.ckpt.conversations.offset if CONVERSATIONS in parts else 1 << 62)
        batch: list[Frame] = []
        with _gc_paused():
            for frame in iter_frames(self.paths.log, start, decode=decode_many_view):
                batch.append(frame)
                if len(batch) >= 256:
                    self.apply_frames(batch, parts)
                    batch = []
            self.apply_frames(batch, parts)

    def _redo_with_reparses(self, parts: Iterable[str]) -> None:
        """A fold from zero ran without re-parse overrides (finding them costs a pass of its
        own, and most logs have none); if the log turned out to hold re-parses, fold those
        projections again with them."""
        redo = tuple(p for p in parts if p in self.refolded)
        if self.overrides or not redo or not self.state.reparse_sessions:
            return
        self.overrides = overrides(self.paths.log)
        if self.overrides:
            self._reset(*redo)
            self.catch_up(redo)

    # -- applying ------------------------------------------------------------------------

    def apply_frames(self, frames: Sequence[Frame], parts: Iterable[str] = (ROWS, CONVERSATIONS)) -> None:
        if not frames or self.broken:
            return
        self._dirty = True
        try:
            if ROWS in parts:
                self._apply_rows(frames)
            if CONVERSATIONS in parts:
                self._apply_conversations(frames)
        except BaseException:
            self.broken = True  # the folds moved on, the files did not: the last checkpoint stays
            raise
        self.maybe_refresh()

    def _apply_rows(self, frames: Sequence[Frame]) -> None:
        ckpt = self.ckpt.rows
        state, overrides_, apply_many = ckpt.state, self.overrides, rows_fold.apply_many
        rows: list[rows_fold.Row] = []
        for frame in frames:
            if frame.first_seq + len(frame.events) - 1 > ckpt.seq:  # else applied already
                rows += apply_many(state, frame.events, overrides_, ckpt.seq)
                ckpt.seq = frame.events[-1].seq
            ckpt.offset = max(ckpt.offset, frame.end)
        if rows:
            data = rows_fold.encode_rows(rows)
            self._responses.write(data)
            self._responses.flush()
            ckpt.responses_bytes += len(data)
            ckpt.responses_crc = zlib.crc32(data, ckpt.responses_crc)

    def _apply_conversations(self, frames: Sequence[Frame]) -> None:
        ckpt = self.ckpt.conversations
        state, overrides_, apply = ckpt.state, self.overrides, conv_fold.apply
        files: dict[str, bytes] = {}  # one write per file per batch: last wins
        for frame in frames:
            if frame.first_seq + len(frame.events) - 1 > ckpt.seq:
                seq = ckpt.seq
                for event in frame.events:
                    if event.seq > seq and (out := apply(state, event, overrides_)) is not None:
                        files[out[0]] = out[1]
                ckpt.seq = frame.events[-1].seq
            ckpt.offset = max(ckpt.offset, frame.end)
        for name, data in files.items():
            path = os.path.join(self.paths.conversations, name)
            if self._pool is None:
                write_atomic(path, data)
            else:
                self._pending.append(self._pool.submit(write_atomic, path, data))
        self._drain()  # no two writes of one file ever overlap across batches

    # -- writing -------------------------------------------------------------------------

    def maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_summary >= self.refresh:
            self.write_summary()
        if now - self._last_ckpt >= self.checkpoint_every:
            self.write_checkpoint()

    def write_summary(self) -> None:
        self._last_summary = time.monotonic()
        write_atomic(self.paths.summary, encode_summary(self.state))

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # an OSError here is a projection failure: let it surface

    def write_checkpoint(self, clean: bool = False) -> None:
        """Summary first: a checkpoint must never be newer than the summary it vouches for."""
        if self.broken:
            return
        self._drain()
        self.write_summary()
        self._last_ckpt = time.monotonic()
        self.ckpt.clean = clean
        self.ckpt.reparsed = bool(self.overrides)
        write_atomic(self.paths.checkpoint, _encode(self.ckpt))

    def close(self) -> None:
        if self._responses is not None and not self.broken:
            if self._dirty or not os.path.exists(self.paths.summary) or not os.path.exists(self.paths.checkpoint):
                self.write_checkpoint(clean=True)
        if self._responses is not None:
            self._responses.close()
            self._responses = None
        if self._pool is not None:
            self._pool.shutdown()


def rebuild(paths: RunPaths, parts: Sequence[str] = (ROWS, CONVERSATIONS), *,
            timings: dict[str, float] | None = None) -> Projector:
    """Delete the files of ``parts`` and fold the whole log again, one projection after the
    other (rows first: ``responses.jsonl`` and ``summary.json`` do not wait for the
    conversation files). Each projection's reset is checkpointed before it is folded again
    and its end after: a rebuild killed halfway leaves a checkpoint from which the next open
    finishes the job. ``timings`` receives the seconds each projection took."""
    projector = Projector(paths, checkpoint_every=float("inf"), writers=4)
    if ROWS in parts and CONVERSATIONS in parts:
        projector._reset(ROWS, CONVERSATIONS)
    else:  # the other projection stays as its checkpoint has it
        projector._remove_stale_temps(())  # the conversations folded again are deleted whole
        projector._load(keep=tuple(p for p in (ROWS, CONVERSATIONS) if p not in parts))
    projector._open_responses()
    todo = [p for p in (ROWS, CONVERSATIONS) if p in parts]
    for n, part in enumerate(todo, 1):
        start = time.perf_counter()
        projector._reset(part)
        projector.write_checkpoint()  # the reset is recorded before any file is written again
        projector.catch_up((part,))
        projector._redo_with_reparses((part,))
        if n == len(todo):
            projector.close()
        else:
            projector.write_checkpoint()
        if timings is not None:
            timings[part] = time.perf_counter() - start
    return projector


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Seq(msgspec.Struct):
    seq: int = 0


def _recorded_seq(path: str) -> int:
    """The seq of the event that finished a conversation file (unreadable: treat as ahead)."""
    try:
        with open(path, "rb") as f:
            return msgspec.json.decode(f.read(), type=_Seq).seq
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return 1 << 62


def _crc_prefix(path: str, length: int) -> int:
    crc, left = 0, length
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    return crc


def checkpointed_state(paths: RunPaths) -> RunState:
    """The rows fold's state as of the last checkpoint, without taking the run (a live run's
    projector owns it); an empty state when there is no readable checkpoint."""
    try:
        with open(paths.checkpoint, "rb") as f:
            return _decode(f.read()).rows.state
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return RunState()


def refresh(paths: RunPaths, parts: Sequence[str] = (ROWS,)) -> RunState | None:
    """Bring ``responses.jsonl`` and ``summary.json`` (and any other ``parts``) up to date,
    unless a live run owns them. Conversation files are left to the next run, resume or
    replay by default: a reader of rows (exports) should not wait for them.

    Takes the run's lock, so that no two processes ever write the same projection files.
    Returns the rows fold's state, or None when a writer holds the run (its own projector
    keeps the files current; read them as they are).
    """
    try:
        lock = RunLock.acquire(paths.lock)
    except LogLockedError:
        return None
    try:
        projector = Projector.open(paths, parts)
        projector.close()
        return projector.state
    finally:
        lock.release()
