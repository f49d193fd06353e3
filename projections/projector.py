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

The checkpoint (``projections.ckpt``, written atomically) holds, per projection, the log
offset and seq applied and the fold's state; for the rows also the byte length and CRC-32 of
``responses.jsonl`` at that point. Its bytes: a 20-byte header -- magic ``LDGCKPT\x01``
(the last byte is the file format), the body's length (u64 LE) and the body's CRC-32 (u32 LE)
-- then the body, the ``Checkpoint`` in MessagePack (whose ``version`` changes whenever a
state changes shape). A checkpoint whose header, length, CRC, version does not check, or
whose offset and seq are not a frame boundary of the log with that seq (the log was cut or
repaired after it), vouches for nothing: the projections it covered are folded again from
the log. Resume reads multi-turn history from this state, so it is never believed unchecked.

On open each projection repairs itself from its part: ``responses.jsonl`` is truncated to
the checkpointed length (a partial last line from a crash goes away) and every event after
the checkpoint is applied again (conversation files are overwritten with identical bytes).
A part ahead of the log (the log lost its tail after the projections consumed it), a missing
or failing checkpoint, or a ``responses.jsonl`` shorter than recorded or different inside
means that projection is folded again from offset zero. Before a projection's files are
deleted or replaced, the checkpoint on disk stops vouching for them, durably (fsync'd): a
crash in between never leaves it vouching for files that are gone. Otherwise projections
never fsync: the log is the truth.

``rebuild`` folds into new files beside the old ones (``*.rebuild.tmp.<pid>``) and swaps them
in only when the fold succeeded, like SQLite's journal: a rebuild that fails (a damaged log,
a full disk) or is killed leaves the old files and checkpoint as they were.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import NamedTuple

import msgspec

from llm_ledger.ledger.events import Parsed, decode_many_view
from llm_ledger.ledger.framing import HEADER_SIZE, Frame
from llm_ledger.ledger.errors import LedgerError, LogLockedError
from llm_ledger.ledger.fsio import fsync_dir, os_error, write_atomic
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import RunLock
from llm_ledger.ledger.reader import iter_frames
from llm_ledger.ledger.recovery import LogEnd, locate_end

from . import conversations as conv_fold
from . import fold as rows_fold
from .conversations import Conversation, ConversationState
from .fold import Key, RunState
from .overrides import overrides
from .summary import encode_summary

__all__ = ["Projector", "Checkpoint", "rebuild", "refresh", "checkpointed_state", "read_checkpoint", "ROWS",
           "CONVERSATIONS"]

_VERSION = 6  # bumped whenever a state changes shape: an older checkpoint means a full rebuild
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
_MAGIC = b"LDGCKPT\x01"
_HEADER = struct.Struct("<8sQI")  # magic, body length, CRC-32 of the body


def encode_checkpoint(ckpt: Checkpoint) -> bytes:
    """The checkpoint file's bytes: header, then the MessagePack body (see the module doc).
    One CRC-32 over the whole body: a few milliseconds for megabytes, cheap beside the
    encode itself, at the checkpoint's pace (every ``checkpoint_every`` seconds)."""
    body = _encode(ckpt)
    return _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def read_checkpoint(path: str) -> Checkpoint | None:
    """The checkpoint at ``path`` if it proves itself (magic, length, CRC, version), else None."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data)
    body = memoryview(data)[_HEADER.size:]
    if magic != _MAGIC or length != len(body) or zlib.crc32(body) != crc:
        return None
    try:
        ckpt = _decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return ckpt if ckpt.version == _VERSION else None


def _invalidate(path: str, parts: Iterable[str]) -> None:
    """Make the checkpoint at ``path`` stop vouching for ``parts``, durably, before their
    files are deleted or replaced (a checkpoint that fails its checks vouches for nothing)."""
    parts = tuple(parts)
    ckpt = read_checkpoint(path) if parts else None
    if ckpt is None:
        return
    if ROWS in parts:
        ckpt.rows = RowsCheckpoint()
    if CONVERSATIONS in parts:
        ckpt.conversations = ConversationsCheckpoint()
    ckpt.clean = False
    write_atomic(path, encode_checkpoint(ckpt), durable=True)


class _Files(NamedTuple):
    """Where the projector writes: the run's files, or a rebuild's staged ones beside them."""

    responses: str
    summary: str
    conversations: str


def _files(paths: RunPaths) -> _Files:
    return _Files(paths.responses, paths.summary, paths.conversations)


def _staged(path: str) -> str:
    return f"{path}.rebuild.tmp.{os.getpid()}"


def _staged_conversations(live: str) -> str:
    """Beside the directory, or inside it when it is a mount point of its own (projections
    on their own file system: a mount point cannot be renamed, nor a file moved across)."""
    return os.path.join(live, f".rebuild.tmp.{os.getpid()}") if os.path.ismount(live) else _staged(live)


def _swap_conversations(staged: str, live: str) -> str | None:
    """Put the staged conversation files in the live directory's place; returns where the
    old files went (a temp name nothing vouches for, deleted by the caller), if anywhere."""
    if os.path.dirname(staged) != live:
        old = None
        if os.path.isdir(live):
            old = f"{live}.old.tmp.{os.getpid()}"
            os.rename(live, old)
        os.rename(staged, live)
        return old
    old = os.path.join(live, f".old.tmp.{os.getpid()}")  # a mount point: move file by file
    os.makedirs(old, exist_ok=True)
    keep = {os.path.basename(staged), os.path.basename(old)}
    for name in os.listdir(live):
        if name not in keep:
            os.rename(os.path.join(live, name), os.path.join(old, name))
    for name in os.listdir(staged):
        os.rename(os.path.join(staged, name), os.path.join(live, name))
    os.rmdir(staged)
    fsync_dir(live)
    return old


class Projector:
    """Owns a run's projection files; ``apply_frames`` is safe to call from one thread."""

    def __init__(self, paths: RunPaths, *, refresh: float = 1.0, checkpoint_every: float = 5.0,
                 writers: int = 0) -> None:
        self.paths = paths
        self.files = _files(paths)  # a rebuild points parts of this at staged files
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
        """An unfinished or finally failed conversation (a resume continues it): from the
        checkpoint, which proved itself on open, plus the log after it."""
        state = self.ckpt.conversations.state
        return state.open.get(key) or state.failed.get(key)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, paths: RunPaths, parts: Sequence[str] = (ROWS, CONVERSATIONS), **kw: float) -> "Projector":
        """Load the checkpoint, repair the files from it, catch ``parts`` up with the log
        (a projection left out is repaired but stays where its checkpoint has it). A
        projection the checkpoint does not vouch for is folded from zero into staged files
        and swapped in when complete, as in ``rebuild``: a fold that fails (a damaged log)
        leaves the old files as they were."""
        projector = cls(paths, **kw)
        projector._remove_stale_temps(parts)
        projector._load(parts)
        projector._open_responses()
        try:
            projector.catch_up(parts)
            projector._redo_with_reparses(parts)
        except BaseException:
            projector._discard_staged()
            raise
        for part in (ROWS, CONVERSATIONS):
            if part in projector._staged_parts():
                projector._commit(part, clean=False, reopen=True)
        return projector

    def _load(self, parts: Sequence[str] = (ROWS, CONVERSATIONS)) -> None:
        """Load the checkpoint if it proves itself, and check each projection's files and log
        position against it. A projection that fails is folded again from zero: staged if it
        is among ``parts``; else the rows are reset in place and the conversations only in
        memory (their files stay until a fold replaces them)."""
        ckpt = read_checkpoint(self.paths.checkpoint)
        refold = {ROWS, CONVERSATIONS}
        if ckpt is not None:
            with open(self.paths.log, "rb") as f:
                end = locate_end(f, self.paths.log)
            self.ckpt, refold = ckpt, set()
            if ckpt.reparsed:  # catching up must apply re-parses the way the checkpointed part did
                self.overrides = overrides(self.paths.log)
            if not (_on_log(self.paths.log, ckpt.rows, end) and self._rows_intact()):
                refold.add(ROWS)
            if not _on_log(self.paths.log, ckpt.conversations, end):
                refold.add(CONVERSATIONS)
            elif not ckpt.clean:
                self._remove_newer_conversations(end.last_seq)
        for part in (ROWS, CONVERSATIONS):
            if part in refold and part in parts:
                self._stage(part)
            elif part == ROWS and part in refold:
                self._reset(ROWS)
            elif part in refold:
                self.ckpt.conversations = ConversationsCheckpoint()

    def _rows_intact(self) -> bool:
        rows = self.ckpt.rows
        try:
            size = os.path.getsize(self.paths.responses)
        except OSError:
            return False
        if size < rows.responses_bytes:
            return False
        if _crc_prefix(self.paths.responses, rows.responses_bytes) != rows.responses_crc:
            return False  # zeroed or garbled inside (projections are never synced)
        if size > rows.responses_bytes:
            os.truncate(self.paths.responses, rows.responses_bytes)
        return True

    def _remove_newer_conversations(self, last_seq: int) -> None:
        """After a crash, conversation files written after the checkpoint may record events
        the log no longer has (it lost its tail): remove those. File times only pick the
        candidates (with a margin: the kernel's file clock is coarse); each file's own
        ``seq`` decides."""
        if not os.path.isdir(self.paths.conversations):
            return
        since = os.stat(self.paths.checkpoint).st_mtime_ns - 2_000_000_000
        with os.scandir(self.paths.conversations) as entries:
            for entry in entries:
                if entry.stat().st_mtime_ns >= since and _recorded_seq(entry.path) > last_seq:
                    os.unlink(entry.path)

    def _remove_stale_temps(self, parts: Iterable[str] = (CONVERSATIONS,)) -> None:
        """Temp files of a process killed between write and rename, and a killed rebuild's
        staged files and directories (we hold the run now): in the run's directory, and
        among the conversations if they are in ``parts`` (a directory of one file per item
        takes a while to list)."""
        for directory in (self.paths.dir, self.paths.conversations) if CONVERSATIONS in parts else (self.paths.dir,):
            if os.path.isdir(directory):
                for name in os.listdir(directory):
                    if ".tmp." in name and _TEMP.search(name):
                        path = os.path.join(directory, name)
                        if os.path.isdir(path) and not os.path.islink(path):
                            shutil.rmtree(path)
                        else:
                            os.unlink(path)

    def _reset(self, *parts: str) -> None:
        """Forget these projections' files and state: they are folded again from zero. The
        checkpoint on disk stops vouching for them (durably) before a file is deleted."""
        _invalidate(self.paths.checkpoint, [p for p in parts if p not in self._staged_parts()])
        if ROWS in parts:
            for path in (self.files.responses, self.files.summary):
                if os.path.exists(path):
                    os.unlink(path)
            self.ckpt.rows = RowsCheckpoint()
            if self._responses is not None:
                self._responses.close()
                self._responses = open(self.files.responses, "ab")
        if CONVERSATIONS in parts:
            shutil.rmtree(self.files.conversations, ignore_errors=True)
            os.makedirs(self.files.conversations, exist_ok=True)
            self.ckpt.conversations = ConversationsCheckpoint()
        self.refolded.update(parts)
        self._dirty = True

    def _open_responses(self) -> None:
        os.makedirs(self.files.conversations, exist_ok=True)
        self._responses = open(self.files.responses, "ab")

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

    # -- rebuilding (staged files, swapped in when complete) ------------------------------

    def _staged_parts(self) -> set[str]:
        """The projections being folded into staged files (no checkpoint may cover them)."""
        live = _files(self.paths)
        return {part for part, staged in ((ROWS, self.files.responses != live.responses),
                                          (CONVERSATIONS, self.files.conversations != live.conversations)) if staged}

    def _stage(self, part: str) -> None:
        """Point ``part`` at new, empty files beside the run's and forget its state (the
        rows' file is opened by ``_open_responses``)."""
        self.refolded.add(part)
        if part == ROWS:
            self.files = self.files._replace(responses=_staged(self.paths.responses), summary=_staged(self.paths.summary))
            self.ckpt.rows = RowsCheckpoint()
            if self._responses is not None:
                self._responses.close()
                self._responses = None
            if os.path.exists(self.files.responses):
                os.unlink(self.files.responses)
        else:
            self.files = self.files._replace(conversations=_staged_conversations(self.paths.conversations))
            self.ckpt.conversations = ConversationsCheckpoint()
            os.makedirs(self.files.conversations)

    def _discard_staged(self) -> None:
        """A failed rebuild: remove its staged files; the run's own are untouched."""
        wait(self._pending)
        self._pending = []
        if self._responses is not None:
            with contextlib.suppress(OSError):  # its unwritten buffer goes with the staged file
                self._responses.close()
            self._responses = None
        for staged, live in zip(self.files, _files(self.paths)):
            if staged != live and os.path.isdir(staged):
                shutil.rmtree(staged, ignore_errors=True)
            elif staged != live and os.path.exists(staged):
                os.unlink(staged)
        self.files = _files(self.paths)

    def _commit(self, part: str, clean: bool, reopen: bool = False) -> None:
        """Swap ``part``'s staged files in: the checkpoint stops vouching for the old files
        (durably), the staged ones are renamed over them, then the new checkpoint is written
        (once nothing is staged any more). The old conversation files are deleted last, under
        a temp name nothing vouches for. ``reopen``: keep appending to the new
        ``responses.jsonl`` (an open that goes on live)."""
        self._drain()
        if part == ROWS:
            self._responses.close()
            self._responses = None
            write_atomic(self.files.summary, encode_summary(self.state))
        _invalidate(self.paths.checkpoint, (part,))
        old = None
        if part == ROWS:
            os.replace(self.files.responses, self.paths.responses)
            os.replace(self.files.summary, self.paths.summary)
            self.files = self.files._replace(responses=self.paths.responses, summary=self.paths.summary)
            if reopen:
                self._responses = open(self.paths.responses, "ab")
        else:
            old = _swap_conversations(self.files.conversations, self.paths.conversations)
            self.files = self.files._replace(conversations=self.paths.conversations)
        fsync_dir(self.paths.dir)  # the swap is durable before a checkpoint vouches for it
        if not self._staged_parts():
            if part != ROWS:
                self.write_summary()  # the rows' state may be ahead of summary.json
            self._write_checkpoint_file(clean)
        if old is not None:
            shutil.rmtree(old)

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
            try:
                self._responses.write(data)
                self._responses.flush()
            except OSError as exc:
                raise os_error(self.paths.responses, exc) from exc
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
            path = os.path.join(self.files.conversations, name)
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
        write_atomic(self.files.summary, encode_summary(self.state))

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # an OSError here is a projection failure: let it surface

    def write_checkpoint(self, clean: bool = False) -> None:
        """Summary first: a checkpoint must never be newer than the summary it vouches for."""
        if self.broken or self._staged_parts():
            return
        self._drain()
        self.write_summary()
        self._write_checkpoint_file(clean)

    def _write_checkpoint_file(self, clean: bool) -> None:
        self._last_ckpt = time.monotonic()
        self.ckpt.clean = clean
        self.ckpt.reparsed = bool(self.overrides)
        write_atomic(self.paths.checkpoint, encode_checkpoint(self.ckpt))

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
    """Fold the whole log again into new files for ``parts``, beside the run's, and swap each
    projection's files in only once its fold has succeeded (``Projector._commit``): a rebuild
    that fails or is killed leaves the old files and checkpoint as they were, and the next
    open removes its staged files. One projection after the other, rows first:
    ``responses.jsonl`` and ``summary.json`` do not wait for the conversation files. A
    projection not in ``parts`` stays as its checkpoint has it. ``timings`` receives the
    seconds each projection took."""
    projector = Projector(paths, refresh=float("inf"), checkpoint_every=float("inf"), writers=4)
    projector._remove_stale_temps(())  # the run's directory: a killed rebuild's staged files
    old = read_checkpoint(paths.checkpoint)
    if old is not None:
        projector.ckpt = old
        if ROWS not in parts and (old.reparsed or old.rows.state.reparse_sessions):
            projector.overrides = overrides(paths.log)  # the rows' state is not refolded here
    clean = projector.ckpt.clean  # the run's conversations/ is untouched until its commit
    try:
        for part in (p for p in (ROWS, CONVERSATIONS) if p in parts):
            start = time.perf_counter()
            projector._stage(part)
            if part == ROWS:
                projector._open_responses()
            try:
                projector.catch_up((part,))
                projector._redo_with_reparses((part,))
                projector._drain()
            except BaseException:
                projector._discard_staged()
                raise
            clean = clean or part == CONVERSATIONS
            projector._commit(part, clean)
            if timings is not None:
                timings[part] = time.perf_counter() - start
    finally:
        projector.close()
    return projector


def _on_log(log: str, part: RowsCheckpoint | ConversationsCheckpoint, end: LogEnd) -> bool:
    """Is the part's position a frame boundary of this log, right after the part's seq? (A
    log cut or repaired after the checkpoint, then grown again, has other events there.)"""
    if part.offset == end.end:
        return part.seq == end.last_seq
    if part.offset > end.end:
        return False
    try:
        frame = next(iter_frames(log, part.offset, end.end), None)
    except LedgerError:
        return False
    return frame is not None and frame.offset == part.offset and frame.first_seq == part.seq + 1


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
    ckpt = read_checkpoint(paths.checkpoint)
    return ckpt.rows.state if ckpt is not None else RunState()


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
