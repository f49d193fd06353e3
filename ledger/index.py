"""The LMDB index of a run (``index.lmdb``): derived, rebuildable, never ahead of the log,
and able to prove which log it was built from.

Layout (two named databases in one environment; an index written by an earlier
version may also hold a third, ``open``, which nothing reads any more)::

    items  key: the item key (``item_key``), value: MessagePack array
             [state, attempts, turn, offset, seq] (+ item_id, for a hashed key)
             state: 0 pending, 1 in flight, 2 done, 3 failed (finally)
             turn: last turn whose reply is in the log (-1: none)
             offset: log offset of the frame holding the item's latest event
    meta   b"format": b"2" (another value, or none: the index is rebuilt)
           b"applied_offset", b"applied_seq": the log end that has been applied
           b"applied_chain": CRC-32 of every log byte from the header's end to applied_offset
           b"applied_frame_crc": the stored CRC of the last applied frame
           b"count:<state>": how many items are in each state; b"planned": items x samples
           b"status": last session state (running / completed / interrupted / error)

Item keys. LMDB refuses keys above 511 bytes, so an item key is ``item_id`` UTF-8 + NUL + the
sample as 4 bytes big-endian when that fits, and otherwise 0xFF (never in UTF-8) + SHA-256 of
the id + NUL + sample, with the full id kept in the value. Any id works.

Everything for one commit group is written in one transaction together with the applied
offset and chain, so a reader (``ledger status`` in another process) always sees a state
that matches a prefix of the log. Frames are applied strictly in log order: a frame that does
not start where the index ends, or an update that fails, raises IndexStateError (and the handle
applies nothing more): the index never stops silently. Durability is not needed (the log is
the truth): ``sync=False, metasync=False``; ``writemap`` is off so a full disk raises instead
of crashing, and ``lock.mdb`` (which LMDB extends with ftruncate and writes through a map) is
given its disk blocks first, so that a full disk is ENOSPC here, never SIGBUS.

Derived state proves itself (what a writer checks before the log is appended to):

* cheap, for everyone (``matches``): the applied offset ends a frame of this log whose last
  seq and stored CRC are the recorded ones. A repaired, cut or replaced log fails this; a
  reader (``open_readonly(..., log_path)``) then gets IndexStateError, a writer rebuilds.
* full, for a writer (``open_for_log``): the log bytes the index vouches for still have the
  recorded chain CRC (one sequential read at CRC-32 speed, no decoding: 0.25 s for a 210 MB
  log here, page cache warm -- the same order as the dataset's sha256 every resume computes,
  far below catching up), and every frame after them is
  checked and decoded as it is applied. So each resume reads the log once, and a log damaged
  anywhere -- in the middle, behind what every derived file has applied -- is found before
  anything is appended: LogNotSoundError (run ``ledger verify --repair``). A chain that
  differs without a damaged frame (the log was repaired or replaced) means a rebuild.

On open the index also checks that data.mdb holds every page it refers to (a cut file would
SIGBUS through the map) and that every record reads back; if not (a power loss with sync
off, a scribbled file) it is deleted and rebuilt. A full map doubles the map size and
retries. An environment is opened per process and never carried across ``fork()``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import lmdb
import msgspec

from . import fs
from .errors import CorruptLogError, IndexStateError, LogNotSoundError
from .events import Event, Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started
from .framing import FRAME_HEAD_SIZE, HEADER_SIZE, Frame
from .fsio import os_error, preallocate
from .lifecycle import DONE, FAILED, IN_FLIGHT, PENDING, STATE_NAMES, transition
from .reader import iter_frames, log_end
from .shard_keys import planned_keys

__all__ = ["RunIndex", "ItemState", "PENDING", "IN_FLIGHT", "DONE", "FAILED", "STATE_NAMES", "item_key", "next_state"]

FORMAT = b"3"  # 3: item states follow ledger.lifecycle (four edge cases differ from 2): rebuilt on open
_INITIAL_MAP = 1 << 30  # sparse: reserves address space, not disk
_KEY_LIMIT = 511  # LMDB's largest key (its compile-time default, that of py-lmdb's build)
_HASHED = b"\xff"  # first byte of a hashed key: never a byte of UTF-8
_LOCK_BYTES = 64 << 10  # lock.mdb: LMDB wants 8 KiB for its 126 default readers; a larger file serves more
_CHUNK = 8 << 20


class _Value(msgspec.Struct, array_like=True):
    state: int
    attempts: int
    turn: int
    offset: int
    seq: int
    item_id: str = ""  # only for a hashed key


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(_Value).decode


class ItemState(NamedTuple):
    state: int
    attempts: int
    turn: int
    offset: int
    seq: int


def item_key(item_id: str, sample: int) -> bytes:
    raw = item_id.encode()
    tail = b"\x00" + struct.pack(">I", sample)
    if len(raw) + len(tail) <= _KEY_LIMIT:
        return raw + tail
    return _HASHED + hashlib.sha256(raw).digest() + tail


def _split(key: bytes, value: _Value) -> tuple[str, int]:
    item_id = value.item_id if key[:1] == _HASHED else key[:-5].decode()
    return item_id, struct.unpack(">I", key[-4:])[0]


def _state(value: _Value) -> ItemState:
    return ItemState(value.state, value.attempts, value.turn, value.offset, value.seq)


class RunIndex:
    """One process's handle on a run's index. Writers apply durable frames; readers read."""

    def __init__(self, path: str, env: lmdb.Environment, readonly: bool, log_path: str = "") -> None:
        self.path = path
        self.readonly = readonly
        self.log_path = log_path
        self.stale: Exception | None = None  # set when an update failed: no more updates
        self._log_fd: int | None = None  # the log, read to extend the chain CRC
        self._env = env
        self._items = env.open_db(b"items", create=not readonly)
        self._meta = env.open_db(b"meta", create=not readonly)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open_for_log(cls, path: str, log_path: str, *, verify: bool = True) -> "RunIndex":
        """Open (creating or rebuilding as needed) and catch up with the log's valid end.

        ``verify``: also prove the log sound up to its end (the module docstring): raises
        LogNotSoundError for a damaged frame anywhere. Raises IndexStateError when the index
        cannot be brought level with the log (a full disk ...)."""
        index = cls._open_or_create(path, log_path)
        try:
            if not index._trusted(log_path, verify):
                index.close()
                index = cls._recreate(path, log_path)
            try:
                index.catch_up(log_path)
            except (lmdb.Error, IndexStateError):  # damage the checks could not see (a page freed and reused)
                index.close()
                index = cls._recreate(path, log_path)
                index.catch_up(log_path)
            index._check_level(log_path)
        except CorruptLogError as exc:
            index.close()
            raise LogNotSoundError(exc.path, exc.offset, exc.reason) from exc
        except lmdb.Error as exc:
            index.close()
            raise IndexStateError(f"{path}: index cannot be brought up to date: {_cause(exc, path)}") from exc
        except OSError as exc:  # reading the log failed (EIO ...)
            index.close()
            raise os_error(log_path, exc, "cannot read") from exc
        except BaseException:
            index.close()
            raise
        return index

    @classmethod
    def _open_or_create(cls, path: str, log_path: str) -> "RunIndex":
        try:
            return cls(path, _env(path, readonly=False), readonly=False, log_path=log_path)
        except lmdb.Error:
            return cls._recreate(path, log_path)

    def _trusted(self, log_path: str, verify: bool) -> bool:
        """Whether this index may be caught up rather than rebuilt."""
        if not self._readable() or not self._current_format():
            return False
        if not self.matches(log_path):
            return False
        return not verify or self._prefix_intact(log_path)

    @staticmethod
    def durable_end(path: str) -> int:
        """How far the log was durable when the index last applied it (0 when unknown): a
        writer must not cut a damaged tail below it (writer.py). An index that cannot be read
        vouches for nothing."""
        if not os.path.isdir(path):
            return 0
        try:
            index = RunIndex.open_readonly(path, any_format=True)  # an upgrade keeps the guard
        except IndexStateError:
            return 0
        try:
            return index.applied()[0]
        except (lmdb.Error, ValueError):
            return 0
        finally:
            index.close()

    @classmethod
    def open_readonly(cls, path: str, log_path: str | None = None, *, any_format: bool = False) -> "RunIndex":
        """A reader's handle. With ``log_path``, an index that does not match that log (ahead
        of it after a repair or a cut, or built from another log) is refused: IndexStateError.
        ``any_format``: also an index of an earlier format (whose item states may differ, but
        whose applied offset means the same)."""
        try:
            index = cls(path, _env(path, readonly=True), readonly=True)
        except lmdb.Error as exc:
            raise IndexStateError(f"{path}: index cannot be read: {exc}") from exc
        try:
            index.counts()
            trusted = (any_format or index._current_format()) and (log_path is None or index.matches(log_path))
        except (lmdb.Error, CorruptLogError, OSError, ValueError, msgspec.DecodeError) as exc:  # scribbled (no sync)
            index.close()
            raise IndexStateError(f"{path}: index cannot be read: {exc}") from exc
        if not trusted:
            index.close()
            raise IndexStateError(f"{path}: index does not match {log_path or 'this ledger'}; the next writer rebuilds it")
        return index

    @classmethod
    def _recreate(cls, path: str, log_path: str = "") -> "RunIndex":
        fs.rmtree(path, ignore_errors=True)
        try:
            index = cls(path, _env(path, readonly=False), readonly=False, log_path=log_path)
        except lmdb.Error as exc:
            raise IndexStateError(f"{path}: index cannot be created: {_cause(exc, path)}") from exc
        try:
            with index._env.begin(write=True) as txn:
                txn.put(b"format", FORMAT, db=index._meta)
        except lmdb.Error as exc:
            index.close()
            raise IndexStateError(f"{path}: index cannot be created: {_cause(exc, path)}") from exc
        return index

    def _current_format(self) -> bool:
        with self._begin() as txn:
            return txn.get(b"format", db=self._meta) == FORMAT

    def _readable(self) -> bool:
        """Whether every record reads back: the index is written without syncs, so a power
        loss, or a scribbled file, can leave pages LMDB reports as corrupt (or values that
        no longer decode). O(items), like the resume plan that follows."""
        try:
            with self._env.begin() as txn:
                for key, value in txn.cursor(db=self._items):
                    _split(key, _unpack(value))
                for key, value in txn.cursor(db=self._meta):
                    if key not in (b"status", b"format"):
                        int(value)
        except (lmdb.Error, msgspec.DecodeError, ValueError, UnicodeDecodeError, struct.error):
            return False
        return True

    def matches(self, log_path: str) -> bool:
        """True when the applied offset ends a frame of this log with the recorded last seq
        and stored CRC: O(1), for readers too (a repaired or cut log fails it)."""
        offset, seq = self.applied()
        if offset == HEADER_SIZE and seq == 0:
            return True
        if offset > log_end(log_path):
            return False
        found = _frame_ending_at(log_path, offset)
        return found is not None and found == (seq, self._meta_int(b"applied_frame_crc"))

    def _prefix_intact(self, log_path: str) -> bool:
        """The log bytes this index applied still have the chain CRC it recorded."""
        offset = self.applied()[0]
        with fs.open_file(log_path, "rb", buffering=0) as f:
            return _crc_range(f.fileno(), HEADER_SIZE, offset, 0) == self._meta_int(b"applied_chain")

    def _check_level(self, log_path: str) -> None:
        end, applied = log_end(log_path), self.applied()[0]
        if applied != end:
            raise IndexStateError(f"{self.path}: index stopped at log offset {applied}, the log ends at {end}")

    def close(self) -> None:
        if self._log_fd is not None:
            fs.close(self._log_fd)
            self._log_fd = None
        self._env.close()

    # -- writing -------------------------------------------------------------------------

    def catch_up(self, log_path: str) -> int:
        """Apply every durable frame after the applied offset; returns frames applied."""
        if log_path != self.log_path and self._log_fd is not None:
            fs.close(self._log_fd)
            self._log_fd = None
        self.log_path = log_path
        start, n, batch = self.applied()[0], 0, []
        for frame in iter_frames(log_path, start):
            batch.append(frame)
            if len(batch) >= 512:
                self.apply(batch)
                n += len(batch)
                batch = []
        if batch:
            self.apply(batch)
        return n + len(batch)

    def apply(self, frames: Sequence[Frame]) -> None:
        """Fold durable frames in, in one transaction with the new applied offset and chain.

        Frames must start where the index ends. Any failure raises IndexStateError and stops this
        handle for good: a later frame must never move the applied offset past one that was
        lost. The next open catches up from the last offset that was really applied (or
        rebuilds)."""
        if not frames:
            return
        if self.stale is not None:
            raise IndexStateError(f"{self.path}: index stopped after an earlier error: {self.stale}")
        try:
            if self._log_fd is None:
                self._log_fd = fs.open(self.log_path, os.O_RDONLY)
            self._apply_retrying(self._log_fd, frames)
        except (lmdb.Error, OSError, _OutOfOrder) as exc:
            self.stale = exc
            raise IndexStateError(f"{self.path}: index could not apply the log from offset {frames[0].offset}: "
                              f"{_cause(exc, self.path)}; the next session brings it up to date") from exc

    def _apply_retrying(self, log_fd: int, frames: Sequence[Frame]) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    _apply_frames(txn, self._items, self._meta, frames, log_fd)
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    # -- reading -------------------------------------------------------------------------

    def applied(self) -> tuple[int, int]:
        with self._begin() as txn:
            offset = txn.get(b"applied_offset", db=self._meta)
            seq = txn.get(b"applied_seq", db=self._meta)
        return (int(offset) if offset else HEADER_SIZE, int(seq) if seq else 0)

    def _meta_int(self, name: bytes) -> int:
        with self._begin() as txn:
            return int(txn.get(name, b"0", db=self._meta))

    def counts(self) -> dict[str, int]:
        """Items per state, plus planned and status: O(1) in the log and dataset size."""
        with self._begin() as txn:
            out = {name: int(txn.get(f"count:{name}".encode(), b"0", db=self._meta)) for name in STATE_NAMES}
            out["planned"] = int(txn.get(b"planned", b"0", db=self._meta))
            out["applied_seq"] = int(txn.get(b"applied_seq", b"0", db=self._meta))
            status = txn.get(b"status", b"", db=self._meta).decode()
        out["pending"] = max(0, out["planned"] - out["in_flight"] - out["done"] - out["failed"])
        return {**out, "status": status}  # type: ignore[dict-item]

    def get(self, item_id: str, sample: int) -> ItemState | None:
        with self._begin() as txn:
            return _lookup(txn, self._items, item_id, sample)

    def get_many(self, keys: Sequence[tuple[str, int]]) -> list[ItemState | None]:
        """``get`` for many (item_id, sample) at once, in one read transaction."""
        with self._begin() as txn:
            return [_lookup(txn, self._items, item_id, sample) for item_id, sample in keys]

    def records(self) -> Iterator[tuple[str, int, ItemState]]:
        """Every (item_id, sample, state) held, streamed from one snapshot (read it to the end
        before writing in this thread)."""
        with self._begin() as txn:
            for key, raw in txn.cursor(db=self._items):
                value = _unpack(raw)
                yield (*_split(key, value), _state(value))

    def _begin(self) -> lmdb.Transaction:
        return begin_read(self._env)


def begin_read(env: lmdb.Environment) -> lmdb.Transaction:
    """A read transaction of an environment another process may have grown (the index's,
    the cache store's)."""
    try:
        return env.begin()
    except lmdb.MapResizedError:
        env.set_mapsize(0)  # adopt the size another process grew it to
        return env.begin()


def _cause(exc: BaseException, path: str) -> str:
    """What went wrong, said once: LMDB reports a full disk as whatever its short write
    became (sometimes EIO), so a file system with (almost) no space left is named as such."""
    text = getattr(exc, "strerror", None) or str(exc)
    text = text.removeprefix(f"{path}: ")
    try:
        st = fs.statvfs(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    except OSError:
        return text
    if st.f_bavail * st.f_frsize < _LOCK_BYTES and "No space" not in text:
        return f"No space left on device ({text})"
    return text


class _OutOfOrder(Exception):
    """Frames handed to the index that do not continue what it has applied."""


def _lookup(txn, items, item_id: str, sample: int) -> ItemState | None:
    key = item_key(item_id, sample)
    raw = txn.get(key, db=items)
    if not raw:
        return None
    value = _unpack(raw)
    if key[:1] == _HASHED and value.item_id != item_id:  # a SHA-256 collision: never seen
        raise IndexStateError(f"two item ids share the index key {key.hex()}: {item_id!r}, {value.item_id!r}")
    return _state(value)


def _env(path: str, readonly: bool) -> lmdb.Environment:
    if readonly and not os.path.isdir(path):
        raise lmdb.Error(f"{path}: no index")
    _reserve_lock_file(path, readonly)
    env = lmdb.open(
        path,
        map_size=_INITIAL_MAP,
        max_dbs=4,
        readonly=readonly,
        sync=False,
        metasync=False,
        writemap=False,
        create=not readonly,
    )
    _check_size(env, path)
    return env


def _reserve_lock_file(path: str, readonly: bool) -> None:
    """Disk blocks for lock.mdb before LMDB maps it (fsio.preallocate: ENOSPC, not SIGBUS).
    A reader that may not write the directory leaves it to LMDB (it cannot extend it either)."""
    try:
        if not readonly:
            fs.makedirs(path, exist_ok=True)
        preallocate(os.path.join(path, "lock.mdb"), _LOCK_BYTES)
    except OSError as exc:
        if readonly and exc.errno in (13, 1, 30):  # EACCES, EPERM, EROFS
            return
        raise lmdb.Error(f"{path}: {exc.strerror or exc}") from exc


def _check_size(env: lmdb.Environment, path: str) -> None:
    """Refuse an environment whose pages reach past the end of data.mdb (a cut file): LMDB
    reads it through a memory map, and touching a page past the end kills the process with
    SIGBUS. Only the meta page is read to know."""
    try:
        last_page, page_size = env.info()["last_pgno"], env.stat()["psize"]
        size = os.path.getsize(os.path.join(path, "data.mdb"))
    except (lmdb.Error, OSError) as exc:
        env.close()
        raise lmdb.Error(f"{path}: {exc}") from exc
    if size and (last_page + 1) * page_size > size:
        env.close()
        raise lmdb.CorruptedError(f"{path}: data.mdb holds {size} bytes, its pages reach {(last_page + 1) * page_size}")


def _crc_range(fd: int, start: int, end: int, crc: int) -> int:
    """``crc`` continued over the file's bytes [start, end), read in large chunks."""
    while start < end:
        data = fs.pread(fd, min(_CHUNK, end - start), start)
        if not data:
            raise OSError(5, f"log ends at {start}, before {end}")
        crc = zlib.crc32(data, crc)
        start += len(data)
    return crc


def _frame_ending_at(log_path: str, offset: int) -> tuple[int, int] | None:
    """(last seq, stored CRC) of the frame that ends at ``offset`` (found via its trailer),
    or None when no valid frame ends there."""
    with fs.open_file(log_path, "rb") as f:
        if offset < HEADER_SIZE + 8:
            return None
        f.seek(offset - 8)
        total = int.from_bytes(f.read(4), "little")
    start = offset - total
    if start < HEADER_SIZE:
        return None
    try:
        for frame in iter_frames(log_path, start, offset):
            if frame.end != offset:
                return None
            with fs.open_file(log_path, "rb") as f:
                f.seek(start + FRAME_HEAD_SIZE - 4)
                return frame.first_seq + len(frame.events) - 1, int.from_bytes(f.read(4), "little")
    except CorruptLogError:  # ``start`` came from bytes that are no trailer: not a frame end
        return None
    return None


def _apply_frames(txn, items, meta, frames: Sequence[Frame], log_fd: int) -> None:
    applied = int(txn.get(b"applied_offset", str(HEADER_SIZE).encode(), db=meta))
    previous = applied
    for frame in frames:
        if frame.offset != previous:
            raise _OutOfOrder(f"frame at offset {frame.offset}, expected {previous}")
        previous = frame.end
    counts: dict[int, int] = {}
    cache: dict[bytes, list] = {}
    for frame in frames:
        for event in frame.events:
            _apply_event(txn, items, meta, cache, counts, frame.offset, event)
    for key, value in cache.items():
        txn.put(key, _pack(value if key[:1] == _HASHED else value[:5]), db=items)
    for state, delta in counts.items():
        name = f"count:{STATE_NAMES[state]}".encode()
        txn.put(name, str(int(txn.get(name, b"0", db=meta)) + delta).encode(), db=meta)
    last = frames[-1]
    chain = _crc_range(log_fd, applied, last.end, int(txn.get(b"applied_chain", b"0", db=meta)))
    frame_crc = int.from_bytes(fs.pread(log_fd, 4, last.offset + FRAME_HEAD_SIZE - 4), "little")
    txn.put(b"applied_offset", str(last.end).encode(), db=meta)
    txn.put(b"applied_seq", str(last.first_seq + len(last.events) - 1).encode(), db=meta)
    txn.put(b"applied_chain", str(chain).encode(), db=meta)
    txn.put(b"applied_frame_crc", str(frame_crc).encode(), db=meta)


def _apply_event(txn, items, meta, cache, counts, offset: int, event: Event) -> None:
    match event:
        case RunStarted(items=n, config=config):
            txn.put(b"planned", str(planned_keys(n, config)).encode(), db=meta)
            txn.put(b"status", b"running", db=meta)
        case SessionStarted():
            txn.put(b"status", b"running", db=meta)
        case SessionEnded(reason=reason):
            txn.put(b"status", reason.encode(), db=meta)
        case Started() | Response() | Parsed() | Failed():
            _apply_item(txn, items, cache, counts, offset, event)


def next_state(state: int | None, event: Event) -> int | None:
    """``lifecycle.transition`` for a reader that keeps no record of an item until an event
    counts for it: ``state`` None is no record yet, and stays None while the item is pending
    (a retryable failure or a parse whose request and reply are not in the log)."""
    after = transition(PENDING if state is None else state, event)  # type: ignore[arg-type]
    return None if state is None and after == PENDING else after


def _apply_item(txn, items, cache, counts, offset: int, event) -> None:
    """One item event into the item's record (created when an event first counts for it);
    the new state is ``lifecycle.transition``'s."""
    key = item_key(event.item_id, event.sample)
    value = cache.get(key)
    if value is None:
        raw = txn.get(key, db=items)
        if raw:
            old = _unpack(raw)
            value = [old.state, old.attempts, old.turn, old.offset, old.seq, event.item_id]
        elif transition(PENDING, event) == PENDING:  # nothing that counts yet: no record
            return
        else:
            value = [PENDING, 0, -1, 0, 0, event.item_id]
        cache[key] = value
    before = value[0]
    value[0] = transition(before, event)
    if isinstance(event, Started):
        value[1] += 1
    elif isinstance(event, Response):
        value[2] = max(value[2], event.turn)
    value[3], value[4] = offset, event.seq
    if value[0] != before:
        counts[before] = counts.get(before, 0) - (before != PENDING)
        counts[value[0]] = counts.get(value[0], 0) + 1
