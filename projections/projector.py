"""The projector: feeds durable events through the fold and writes the files.

Files it owns in a run directory: ``responses.jsonl`` (appended), ``conversations/*.json``
(each written atomically: temp + rename), ``summary.json`` (rewritten atomically, at most
every ``refresh`` seconds and on close) and ``projections.ckpt``.

The checkpoint (MessagePack, written atomically, no fsync) holds the log offset and seq
applied, the byte length of ``responses.jsonl`` at that point, and the fold's state. On
open the projector repairs itself from it: ``responses.jsonl`` is truncated to the
checkpointed length (a partial last line from a crash goes away), and every event after the
checkpoint is applied again (conversation files are overwritten with identical bytes). A
checkpoint ahead of the log (the log lost its tail after the projections consumed it), a
missing or unreadable checkpoint, or a ``responses.jsonl`` shorter than recorded means a
full rebuild from offset zero. Projections never fsync: the log is the truth.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import msgspec

from ledger.events import Event, Parsed
from ledger.framing import HEADER_SIZE, Frame
from ledger.fsio import write_atomic
from ledger.errors import LogLockedError
from ledger.layout import RunPaths
from ledger.lock import RunLock
from ledger.reader import iter_frames, log_end
from ledger.recovery import locate_end

from .fold import ConversationFile, Line, RunState, apply
from .reparse import overrides
from .summary import encode_summary

__all__ = ["Projector", "rebuild", "refresh"]

_VERSION = 4
# write_atomic's temp names end in ".tmp.<pid>"; real files never do (conversations end in
# "_s<N>.json"), so an item id like "a.tmp.b" is safe from the clean-up.
_TEMP = re.compile(r"\.tmp\.\d+$")


class Checkpoint(msgspec.Struct, kw_only=True):
    version: int = _VERSION
    offset: int = HEADER_SIZE
    seq: int = 0
    responses_bytes: int = 0
    responses_crc: int = 0  # CRC-32 of those bytes: damage inside the file means a rebuild
    clean: bool = False  # written by close(): nothing was written after it
    reparsed: bool = False  # the state was folded with re-parse overrides: keep using them
    state: RunState = msgspec.field(default_factory=RunState)


_encode = msgspec.msgpack.Encoder().encode
# Bumped whenever RunState changes shape: an older checkpoint means a full rebuild.
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
        self.overrides: dict[str, Parsed] = {}  # set by rebuild: re-parses (reparse.py)
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
        return self.ckpt.state

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, paths: RunPaths, **kw: float) -> "Projector":
        """Load the checkpoint, repair the files from it, catch up with the log."""
        projector = cls(paths, **kw)
        projector._remove_stale_temps()
        if not projector._load():
            projector.overrides = overrides(paths.log)  # a full fold must see re-parses too
            projector._reset()
            projector._dirty = True
        projector._open_responses()
        projector.catch_up()
        return projector

    def _load(self) -> bool:
        try:
            with open(self.paths.checkpoint, "rb") as f:
                ckpt = _decode(f.read())
            size = os.path.getsize(self.paths.responses)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return False
        if ckpt.version != _VERSION:
            return False
        if ckpt.offset > log_end(self.paths.log) or size < ckpt.responses_bytes:
            return False
        if _crc_prefix(self.paths.responses, ckpt.responses_bytes) != ckpt.responses_crc:
            return False  # zeroed or garbled inside (projections are never synced)
        if size > ckpt.responses_bytes:
            os.truncate(self.paths.responses, ckpt.responses_bytes)
        if not ckpt.clean:
            self._remove_newer_conversations()
        if ckpt.reparsed:  # catching up must apply re-parses the way the checkpointed part did
            self.overrides = overrides(self.paths.log)
        self.ckpt = ckpt
        return True

    def _remove_newer_conversations(self) -> None:
        """After a crash, conversation files written after the checkpoint may record events
        the log no longer has (it lost its tail): remove those. File times only pick the
        candidates (with a margin: the kernel's file clock is coarse); each file's own
        ``seq`` decides."""
        since = os.stat(self.paths.checkpoint).st_mtime_ns - 2_000_000_000
        with open(self.paths.log, "rb") as f:
            last_seq = locate_end(f, self.paths.log).last_seq
        with os.scandir(self.paths.conversations) as entries:
            for entry in entries:
                if entry.stat().st_mtime_ns >= since and _recorded_seq(entry.path) > last_seq:
                    os.unlink(entry.path)

    def _remove_stale_temps(self) -> None:
        """Temp files of a process killed between write and rename (we hold the run now)."""
        for directory in (self.paths.dir, self.paths.conversations):
            if os.path.isdir(directory):
                for name in os.listdir(directory):
                    if _TEMP.search(name):
                        os.unlink(os.path.join(directory, name))

    def _reset(self) -> None:
        for path in (self.paths.responses, self.paths.summary, self.paths.checkpoint):
            if os.path.exists(path):
                os.unlink(path)
        shutil.rmtree(self.paths.conversations, ignore_errors=True)
        self.ckpt = Checkpoint()

    def _open_responses(self) -> None:
        os.makedirs(self.paths.conversations, exist_ok=True)
        self._responses = open(self.paths.responses, "ab")

    def catch_up(self) -> None:
        batch: list[Frame] = []
        for frame in iter_frames(self.paths.log, self.ckpt.offset):
            batch.append(frame)
            if len(batch) >= 256:
                self.apply_frames(batch)
                batch = []
        self.apply_frames(batch)

    # -- applying ------------------------------------------------------------------------

    def apply_frames(self, frames: Sequence[Frame]) -> None:
        if not frames or self.broken:
            return
        self._dirty = True
        try:
            self._apply_frames(frames)
        except BaseException:
            self.broken = True  # the fold moved on, the files did not: the last checkpoint stays
            raise

    def _apply_frames(self, frames: Sequence[Frame]) -> None:
        lines: list[bytes] = []
        conversations: dict[str, bytes] = {}  # one write per file per batch: last wins
        for frame in frames:
            if frame.first_seq + len(frame.events) - 1 <= self.ckpt.seq:
                continue  # already applied (a listener and a catch-up may overlap)
            for event in frame.events:
                if event.seq > self.ckpt.seq:
                    self._apply_event(event, lines, conversations)
            self.ckpt.offset = frame.end
        for name, data in conversations.items():
            path = os.path.join(self.paths.conversations, name)
            if self._pool is None:
                write_atomic(path, data)
            else:
                self._pending.append(self._pool.submit(write_atomic, path, data))
        self._drain()  # no two writes of one file ever overlap across batches
        if lines:
            data = b"".join(lines)
            self._responses.write(data)
            self._responses.flush()
            self.ckpt.responses_bytes += len(data)
            self.ckpt.responses_crc = zlib.crc32(data, self.ckpt.responses_crc)
        self.maybe_refresh()

    def _apply_event(self, event: Event, lines: list[bytes], conversations: dict[str, bytes]) -> None:
        for out in apply(self.ckpt.state, event, self.overrides):
            if isinstance(out, Line):
                lines.append(out.data)
            elif isinstance(out, ConversationFile):
                conversations[out.name] = out.data
        self.ckpt.seq = event.seq

    # -- writing -------------------------------------------------------------------------

    def maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_summary >= self.refresh:
            self.write_summary()
        if now - self._last_ckpt >= self.checkpoint_every:
            self.write_checkpoint()

    def write_summary(self) -> None:
        self._last_summary = time.monotonic()
        write_atomic(self.paths.summary, encode_summary(self.ckpt.state))

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


def rebuild(paths: RunPaths) -> Projector:
    """Delete every projection file and fold the whole log again. No checkpoint until the
    end: a rebuild killed halfway leaves none, so the next open rebuilds (with re-parses)."""
    projector = Projector(paths, checkpoint_every=float("inf"), writers=4)
    projector.overrides = overrides(paths.log)
    projector._reset()
    projector._open_responses()
    projector.catch_up()
    projector.close()
    return projector


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


def refresh(paths: RunPaths) -> RunState | None:
    """Bring the projection files up to date, unless a live run owns them.

    Takes the run's lock, so that no two processes ever write the same projection files.
    Returns the fold's state, or None when a writer holds the run (its own projector keeps
    the files current; read them as they are).
    """
    try:
        lock = RunLock.acquire(paths.lock)
    except LogLockedError:
        return None
    try:
        projector = Projector.open(paths)
        projector.close()
        return projector.state
    finally:
        lock.release()
