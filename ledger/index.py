"""The LMDB index of a run (``index.lmdb``): derived, rebuildable, never ahead of the log.

Layout (three named databases in one environment)::

    items  key: item_id UTF-8 + b"\\x00" + sample as 4 bytes big-endian
           value: MessagePack array [state, attempts, turn, offset, seq]
             state: 0 pending, 1 in flight, 2 done, 3 failed (finally)
             turn: last turn whose reply is in the log (-1: none)
             offset: log offset of the frame holding the item's latest event
    open   the keys of items whose state is in flight or failed (so resume is O(unfinished))
    meta   b"applied_offset", b"applied_seq": the log end that has been applied
           b"count:<state>": how many items are in each state; b"planned": items x samples
           b"status": last session state (running / completed / interrupted / error)

Everything for one commit group is written in one transaction together with
``applied_offset``, so a reader (``ledger status`` in another process) always sees a state
that matches a prefix of the log. Durability is not needed (the log is the truth):
``sync=False, metasync=False``; ``writemap`` is off so a full disk raises instead of
crashing. On open, the index checks that data.mdb holds every page it refers to (a cut
file would SIGBUS through the map), that every record reads back, and that its applied
offset ends a frame with the recorded seq, and catches up from there; if not (log repaired
or truncated, file cut or scribbled -- likely after a power loss, with sync off -- or from
another log) it is deleted and rebuilt; a reader (``open_readonly``) gets IndexError_.
A full map doubles the map size and retries.
An environment is opened per process and never carried across ``fork()``.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import lmdb
import msgspec

from .errors import CorruptLogError, IndexError_
from .events import Event, Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started
from .framing import HEADER_SIZE, Frame
from .reader import iter_frames, log_end

__all__ = ["RunIndex", "ItemState", "PENDING", "IN_FLIGHT", "DONE", "FAILED", "STATE_NAMES", "item_key"]

PENDING, IN_FLIGHT, DONE, FAILED = 0, 1, 2, 3
STATE_NAMES = ("pending", "in_flight", "done", "failed")
_INITIAL_MAP = 1 << 30  # sparse: reserves address space, not disk
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(tuple[int, int, int, int, int]).decode


class ItemState(NamedTuple):
    state: int
    attempts: int
    turn: int
    offset: int
    seq: int


def item_key(item_id: str, sample: int) -> bytes:
    return item_id.encode() + b"\x00" + struct.pack(">I", sample)


def split_key(key: bytes) -> tuple[str, int]:
    return key[:-5].decode(), struct.unpack(">I", key[-4:])[0]


class RunIndex:
    """One process's handle on a run's index. Writers apply durable frames; readers read."""

    def __init__(self, path: str, env: lmdb.Environment, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.stale: Exception | None = None  # set when an update failed: no more updates
        self._env = env
        self._items = env.open_db(b"items", create=not readonly)
        self._open = env.open_db(b"open", create=not readonly)
        self._meta = env.open_db(b"meta", create=not readonly)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open_for_log(cls, path: str, log_path: str) -> "RunIndex":
        """Open (creating or rebuilding as needed) and catch up with the log's valid end."""
        try:
            index = cls(path, _env(path, readonly=False), readonly=False)
        except lmdb.Error:
            index = cls._recreate(path)
        if not index._readable() or not index._matches(log_path):
            index.close()
            index = cls._recreate(path)
        try:
            index.catch_up(log_path)
        except lmdb.Error:  # damage the scan could not see (a page freed and reused)
            index.close()
            index = cls._recreate(path)
            index.catch_up(log_path)
        return index

    @classmethod
    def open_readonly(cls, path: str) -> "RunIndex":
        try:
            index = cls(path, _env(path, readonly=True), readonly=True)
        except lmdb.Error as exc:
            raise IndexError_(f"{path}: index cannot be read: {exc}") from exc
        try:
            index.counts()
        except lmdb.Error as exc:
            index.close()
            raise IndexError_(f"{path}: index cannot be read: {exc}") from exc
        return index

    @classmethod
    def _recreate(cls, path: str) -> "RunIndex":
        shutil.rmtree(path, ignore_errors=True)
        try:
            return cls(path, _env(path, readonly=False), readonly=False)
        except lmdb.Error as exc:
            raise IndexError_(f"{path}: index cannot be created: {exc}") from exc

    def _readable(self) -> bool:
        """Whether every record reads back: the index is written without syncs, so a power
        loss, or a scribbled file, can leave pages LMDB reports as corrupt (or values that
        no longer decode). O(items), like the resume plan that follows."""
        try:
            with self._env.begin() as txn:
                for _, value in txn.cursor(db=self._items):
                    _unpack(value)
                for key in txn.cursor(db=self._open).iternext(keys=True, values=False):
                    split_key(key)
                for key, value in txn.cursor(db=self._meta):
                    if key != b"status":
                        int(value)
        except (lmdb.Error, msgspec.DecodeError, ValueError, UnicodeDecodeError, struct.error):
            return False
        return True

    def _matches(self, log_path: str) -> bool:
        """True when the applied offset ends a frame of this log with the recorded seq."""
        offset, seq = self.applied()
        if offset == HEADER_SIZE and seq == 0:
            return True
        if offset > log_end(log_path):
            return False
        return _last_seq_before(log_path, offset) == seq

    def close(self) -> None:
        self._env.close()

    # -- writing -------------------------------------------------------------------------

    def catch_up(self, log_path: str) -> int:
        """Apply every durable frame after the applied offset; returns frames applied."""
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
        """Fold durable frames in, in one transaction with the new applied offset.

        After any other failure the index stops applying: a later frame must never move
        the applied offset past one that was lost. It then lags, as it may; the next open
        catches up from the last offset that was really applied."""
        if not frames or self.stale is not None:
            return
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    _apply_frames(txn, self._items, self._open, self._meta, frames)
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                self.stale = exc
                return

    # -- reading -------------------------------------------------------------------------

    def applied(self) -> tuple[int, int]:
        with self._begin() as txn:
            offset = txn.get(b"applied_offset", db=self._meta)
            seq = txn.get(b"applied_seq", db=self._meta)
        return (int(offset) if offset else HEADER_SIZE, int(seq) if seq else 0)

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
            raw = txn.get(item_key(item_id, sample), db=self._items)
        return ItemState(*_unpack(raw)) if raw else None

    def unfinished(self) -> Iterator[tuple[str, int, ItemState]]:
        """Items in flight or finally failed: the work a resume must look at."""
        with self._begin() as txn:
            keys = list(txn.cursor(db=self._open).iternext(keys=True, values=False))
            for key in keys:
                raw = txn.get(key, db=self._items)
                if raw:
                    yield (*split_key(key), ItemState(*_unpack(raw)))

    def known(self, keys: Iterable[tuple[str, int]]) -> Iterator[ItemState | None]:
        with self._begin() as txn:
            for item_id, sample in keys:
                raw = txn.get(item_key(item_id, sample), db=self._items)
                yield ItemState(*_unpack(raw)) if raw else None

    def _begin(self) -> lmdb.Transaction:
        try:
            return self._env.begin()
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)  # adopt the size another process grew it to
            return self._env.begin()


def _env(path: str, readonly: bool) -> lmdb.Environment:
    if readonly and not os.path.isdir(path):
        raise lmdb.Error(f"{path}: no index")
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


def _last_seq_before(log_path: str, offset: int) -> int | None:
    """Seq of the last event of the frame that ends at ``offset`` (read via its trailer)."""
    with open(log_path, "rb") as f:
        if offset < HEADER_SIZE + 8:
            return None
        f.seek(offset - 8)
        total = int.from_bytes(f.read(4), "little")
    start = offset - total
    if start < HEADER_SIZE:
        return None
    try:
        for frame in iter_frames(log_path, start, offset):
            return frame.first_seq + len(frame.events) - 1 if frame.end == offset else None
    except CorruptLogError:  # ``start`` came from bytes that are no trailer: not a frame end
        return None
    return None


def _apply_frames(txn, items, open_db, meta, frames: Sequence[Frame]) -> None:
    counts: dict[int, int] = {}
    cache: dict[bytes, list[int]] = {}
    for frame in frames:
        for event in frame.events:
            _apply_event(txn, items, meta, cache, counts, frame.offset, event)
    for key, value in cache.items():
        txn.put(key, _pack(value), db=items)
        if value[0] in (IN_FLIGHT, FAILED):
            txn.put(key, b"", db=open_db)
        else:
            txn.delete(key, db=open_db)
    for state, delta in counts.items():
        name = f"count:{STATE_NAMES[state]}".encode()
        txn.put(name, str(int(txn.get(name, b"0", db=meta)) + delta).encode(), db=meta)
    last = frames[-1]
    txn.put(b"applied_offset", str(last.end).encode(), db=meta)
    txn.put(b"applied_seq", str(last.first_seq + len(last.events) - 1).encode(), db=meta)


def _apply_event(txn, items, meta, cache, counts, offset: int, event: Event) -> None:
    match event:
        case RunStarted(items=n, config=config):
            txn.put(b"planned", str(n * int(config.get("samples", 1) or 1)).encode(), db=meta)
            txn.put(b"status", b"running", db=meta)
        case SessionStarted():
            txn.put(b"status", b"running", db=meta)
        case SessionEnded(reason=reason):
            txn.put(b"status", reason.encode(), db=meta)
        case Started() | Response() | Parsed() | Failed():
            _apply_item(txn, items, cache, counts, offset, event)


def _apply_item(txn, items, cache, counts, offset: int, event) -> None:
    key = item_key(event.item_id, event.sample)
    value = cache.get(key)
    if value is None:
        raw = txn.get(key, db=items)
        value = list(_unpack(raw)) if raw else [PENDING, 0, -1, 0, 0]
        cache[key] = value
    before = value[0]
    match event:
        case Started():
            value[0], value[1] = IN_FLIGHT, value[1] + 1
        case Response(turn=turn):
            value[0], value[2] = (IN_FLIGHT if value[0] != DONE else DONE), max(value[2], turn)
        case Parsed():
            value[0] = DONE
        case Failed(final=final):
            if value[0] != DONE:
                value[0] = FAILED if final else IN_FLIGHT
    value[3], value[4] = offset, event.seq
    if value[0] != before:
        counts[before] = counts.get(before, 0) - (before != PENDING)
        counts[value[0]] = counts.get(value[0], 0) + 1
