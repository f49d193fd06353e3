"""The cross-run cache store (``<runs_dir>/cache.lmdb`` and LMDB's ``cache.lmdb-lock``): derived
from every run's log.

It maps a request's key (``runners/cache_key.py``: SHA-256 of the canonical request) to where
its durable reply sits: the run, the ``seq`` of the ``response`` event and the byte range of
the frame holding it. It holds no reply: a hit reads the event from that run's log. Only
``response`` events are entries (a ``failed`` one never is): the log is the truth, and the
store is rebuilt from the logs whenever it is missing, of another format or unreadable.

Layout (one LMDB environment, three named databases)::

    entries  key: 32 bytes, value: MessagePack array (``Entry``)
             run, seq, offset, end, ts, item_id, sample, turn, copied, origin_run, origin_seq,
             request_offset, model, keyed_sample, messages (16-byte digest), params, endpoint
    runs     key: run id (UTF-8), value: ``Mark``: [applied_end, low_water, last_seq, config, identity]
    meta     b"format": FORMAT

``copied``: the event is itself a cache hit (its ``cached_from`` names the original, kept as
origin_run/origin_seq and ``ts``); a copy is an entry only while no original holds the key,
so that a run whose source was deleted still serves. Among originals the newest reply wins
(``--cache-max-age`` asks about the freshest), ties by (run, seq): the same logs give the
same store in any order.

Keying needs each reply's request: the ``started`` event of the same (item, sample, turn)
before it. A run's log is walked in order keeping the requests not yet answered
(``RunWalk.pending``; a ``session_started`` drops them: a new session sends again). A run's
mark says the log up to ``applied_end`` is in, and that every request still unanswered
there starts at or after ``low_water``: catching up walks from ``low_water`` (re-putting a
few replies is harmless: a put is idempotent). A log shorter than its mark (repaired) has its
entries removed and is walked again from the start; a run that was deleted means a rebuild
(its entries would be misses, and copies of its replies in other logs must be found).

Several processes (runs in parallel, an experiment's arms) share the store: each keeps its
own run's entries current from its writer's commit listener, and on open catches up every
other run from its log (under ``cache.lock``, an flock, so that two processes never
rebuild at once). A write conflict is impossible (LMDB serialises write transactions); a
process whose store was rebuilt under it writes to the old files until its run ends -- those
replies are found by the next catch-up. Durability is not needed: ``sync=False``; ``writemap``
off (a full disk raises instead of crashing). ``ledger cache clear`` records the time before
which replies are forgotten in ``cache.cleared`` beside the store, so that a rebuild forgets
them too.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import lmdb
import msgspec

from . import fs
from .errors import IndexStateError, LedgerError
from .events import CachedFrom, Failed, ResponseView, RunStarted, SessionStarted, Started, decode
from .framing import HEADER_SIZE, Frame
from .index import begin_read
from .fsio import preallocate, write_atomic
from .reader import iter_frames

__all__ = ["CacheStore", "Entry", "Keyer", "RunWalk", "STORE_NAME", "store_path"]

FORMAT = b"2"  # 2: entries carry their endpoint identity
STORE_NAME = "cache.lmdb"  # one file (LMDB without a subdirectory: nothing that looks like a run), + "-lock"
LOCK_NAME = "cache.lock"  # flock'd while the store is opened, checked, rebuilt and caught up
_INITIAL_MAP = 1 << 30  # sparse: reserves address space, not disk
_LOCK_BYTES = 64 << 10
_BATCH = 256  # frames per write transaction while catching up
_FRAMES_KEPT = 8  # decoded frames a hit may reuse (a frame is one commit group: tens of replies)


class Entry(msgspec.Struct, array_like=True, gc=False):
    run: str
    seq: int
    offset: int  # the frame holding the response
    end: int
    ts: float  # when the reply was received (for a copy: the original's)
    item_id: str
    sample: int
    turn: int
    copied: bool = False
    origin_run: str = ""
    origin_seq: int = 0
    request_offset: int = 0  # the frame holding the request (explain reads it)
    model: str = ""
    keyed_sample: int = -1  # -1: deterministic, the key holds no sample
    messages: bytes = b""
    params: dict[str, Any] = {}
    endpoint: str = ""  # the endpoint identity the key was made with (explain compares it)

    def provenance(self) -> CachedFrom:
        if self.copied:
            return CachedFrom(run=self.origin_run, seq=self.origin_seq, ts=self.ts)
        return CachedFrom(run=self.run, seq=self.seq, ts=self.ts)

    def rank(self) -> tuple[bool, float, str, int]:
        """Which of two entries for one key is kept: originals, then the newest."""
        return (not self.copied, self.ts, self.run, self.seq)


class Mark(msgspec.Struct, array_like=True, gc=False):
    applied_end: int
    low_water: int
    last_seq: int
    config: dict[str, Any] = {}
    identity: str = ""
    inode: int = 0  # the log file walked (0: a mark from before it was kept): another file means walk it again


_pack = msgspec.msgpack.Encoder().encode
_unpack_entry = msgspec.msgpack.Decoder(Entry).decode
_unpack_mark = msgspec.msgpack.Decoder(Mark).decode


class Keyer(Protocol):
    """What the store needs of the key (runners/cache_key.py; ledger/ imports nothing above it)."""

    def identity(self, config: dict[str, Any]) -> str: ...

    def entry(self, identity: str, body: dict[str, Any], sample: int) -> tuple[bytes, str, int, bytes, dict[str, Any]]:
        """(key, model, keyed sample or -1, messages digest, params)."""
        ...


def store_path(runs_dir: str) -> str:
    return os.path.join(runs_dir, STORE_NAME)


class RunWalk:
    """One run's log folded into entries, frame by frame (see the module docstring)."""

    def __init__(self, run_id: str, keyer: Keyer, mark: Mark | None, cleared: float) -> None:
        self.run_id = run_id
        self.keyer = keyer
        self.cleared = cleared
        self.config: dict[str, Any] = dict(mark.config) if mark else {}
        self.identity = mark.identity if mark else ""
        self.pending: dict[tuple[str, int, int], tuple[dict[str, Any], int]] = {}
        self.applied_end = mark.applied_end if mark else HEADER_SIZE
        self.last_seq = mark.last_seq if mark else 0
        self.inode = mark.inode if mark else 0

    def low_water(self) -> int:
        return min((offset for _, offset in self.pending.values()), default=self.applied_end)

    def mark(self) -> Mark:
        return Mark(self.applied_end, self.low_water(), self.last_seq, self.config, self.identity, self.inode)

    def feed(self, frame: Frame) -> list[tuple[bytes, Entry]]:
        out: list[tuple[bytes, Entry]] = []
        for event in frame.events:
            cls = event.__class__
            if cls is Started:
                self.pending[(event.item_id, event.sample, event.turn)] = (event.request, frame.offset)
            elif issubclass(cls, ResponseView):
                request = self.pending.pop((event.item_id, event.sample, event.turn), None)
                if request is not None and self.identity:
                    made = self._entry(event, request, frame)
                    if made is not None:
                        out.append(made)
            elif cls is Failed:
                self.pending.pop((event.item_id, event.sample, event.turn), None)
            elif cls is SessionStarted:
                self.pending.clear()  # a new session sends again what was in flight
                self.identity = self.keyer.identity({**self.config, **event.overrides})
            elif cls is RunStarted:
                self.config = dict(event.config)
                self.identity = self.keyer.identity(self.config)
        self.applied_end = max(self.applied_end, frame.end)
        self.last_seq = max(self.last_seq, frame.first_seq + len(frame.events) - 1)
        return out

    def _entry(self, event: Any, request: tuple[dict[str, Any], int], frame: Frame) -> tuple[bytes, Entry] | None:
        body, request_offset = request
        origin: CachedFrom | None = event.cached_from
        ts = origin.ts if origin is not None else event.ts
        if ts < self.cleared:
            return None
        key, model, keyed, messages, params = self.keyer.entry(self.identity, body, event.sample)
        return key, Entry(self.run_id, event.seq, frame.offset, frame.end, ts, event.item_id, event.sample, event.turn,
                          origin is not None, origin.run if origin else "", origin.seq if origin else 0,
                          request_offset, model, keyed, messages, params, self.identity)


# LMDB must not be opened twice in one process (closing one handle drops the other's locks):
# sessions of one process (an experiment's arms run in threads) share one environment.
_SHARED: dict[str, "CacheStore"] = {}
_SHARED_LOCK = threading.Lock()


class CacheStore:
    """One process's handle on the store of a runs directory (shared by its sessions)."""

    def __init__(self, runs_dir: str, env: lmdb.Environment, keyer: Keyer) -> None:
        self.runs_dir = runs_dir
        self.path = store_path(runs_dir)
        self.keyer = keyer
        self._env = env
        self._entries = env.open_db(b"entries")
        self._runs = env.open_db(b"runs")
        self._meta = env.open_db(b"meta")
        self.cleared = _read_cleared(runs_dir)
        self.broken: Exception | None = None  # a failed update: the store is left alone from then on
        self._frames: dict[tuple[str, int, int], Frame] = {}  # recently read frames (events undecoded)
        self._users = 0  # handles given out by ``open`` in this process (one environment per process)
        self._real = ""

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, runs_dir: str, keyer: Keyer, *, catch_up: bool = True) -> "CacheStore":
        """Open (creating or rebuilding as needed) and, with ``catch_up``, bring every run's
        entries up to its log's end. Raises lmdb.Error or OSError when the store cannot be
        made at all (the caller runs without a cache and says so)."""
        fs.makedirs(runs_dir, exist_ok=True)
        real = os.path.realpath(store_path(runs_dir))
        with _SHARED_LOCK, _Exclusive(os.path.join(runs_dir, LOCK_NAME)):
            store = _SHARED.get(real)
            if store is None:
                store = cls._open_or_rebuild(runs_dir, keyer)
                if catch_up:
                    try:
                        store.catch_up_all()
                    except lmdb.Error:  # damage the open checks could not see: once more, from nothing
                        store._env.close()
                        store = cls._rebuilt(runs_dir, keyer)
                        store.catch_up_all()
                store._real = real
                _SHARED[real] = store
            elif catch_up:
                store.catch_up_all()
            store._users += 1
            return store

    @classmethod
    def _open_or_rebuild(cls, runs_dir: str, keyer: Keyer) -> "CacheStore":
        try:
            store = cls(runs_dir, _env(store_path(runs_dir)), keyer)
        except lmdb.Error:
            return cls._rebuilt(runs_dir, keyer)
        if store._sound() and not store._vanished():
            return store
        store._env.close()
        return cls._rebuilt(runs_dir, keyer)

    @classmethod
    def _rebuilt(cls, runs_dir: str, keyer: Keyer) -> "CacheStore":
        path = store_path(runs_dir)
        for name in (path, path + "-lock"):
            try:
                fs.unlink(name)
            except FileNotFoundError:
                pass
            except IsADirectoryError:  # a directory in its place is not ours to delete (a run named so?)
                raise LedgerError(f"{name} is a directory, where the cross-run cache keeps its store: move it "
                                  "(a run there is renamed with its directory) or run with --no-cache") from None
        store = cls(runs_dir, _env(path), keyer)
        with store._env.begin(write=True) as txn:
            txn.put(b"format", FORMAT, db=store._meta)
        return store

    def _sound(self) -> bool:
        """The format is ours and every run mark reads back (O(runs), not O(entries): a
        damaged entry is found when it is read, and is then a miss)."""
        try:
            with self._env.begin() as txn:
                if txn.get(b"format", db=self._meta) != FORMAT:
                    return False
                for _, raw in txn.cursor(db=self._runs):
                    _unpack_mark(raw)
                entry = txn.cursor(db=self._entries)
                if entry.first():
                    _unpack_entry(entry.value())
        except (lmdb.Error, msgspec.DecodeError, ValueError):
            return False
        return True

    def _vanished(self) -> bool:
        """Whether a run the store has walked is gone (deleted by its user): its entries would
        be misses, and copies of its replies in other runs' logs, entries only while no
        original holds the key, are found again only by walking everything anew."""
        present = set(_run_ids(self.runs_dir))
        with self._begin() as txn:
            return any(bytes(name).decode() not in present for name, _ in txn.cursor(db=self._runs))

    def close(self) -> None:
        """Let go of this handle; the environment closes with its last user in the process."""
        with _SHARED_LOCK:
            self._users -= 1
            if self._users > 0:
                return
            if _SHARED.get(self._real) is self:
                del _SHARED[self._real]
        self._env.close()

    # -- catching up ---------------------------------------------------------------------

    def catch_up_all(self) -> int:
        """Walk every run's log past its mark; returns the entries put."""
        put = 0
        for run_id in _run_ids(self.runs_dir):
            try:
                put += self.catch_up(run_id)
            except (LedgerError, OSError):  # another run's damaged or unreadable log: its replies are not served
                continue
        return put

    def walk_for(self, run_id: str) -> RunWalk:
        mark = self._mark(run_id)
        walk = RunWalk(run_id, self.keyer, mark, self.cleared)
        try:
            walk.inode = fs.stat(os.path.join(self.runs_dir, run_id, "events.log")).st_ino
        except OSError:
            pass
        return walk

    def catch_up(self, run_id: str, walk: RunWalk | None = None) -> int:
        """Walk the run's log past its mark. A log that is not the file the mark was made on
        (a sharded run's merge writes its top log afresh), shorter than the mark (repaired),
        or that does not read from the mark on, is walked again from its start."""
        log = os.path.join(self.runs_dir, run_id, "events.log")
        st = fs.stat(log)
        mark = self._mark(run_id)
        if mark is not None and mark.inode in (0, st.st_ino) and st.st_size == mark.applied_end:
            return 0
        if mark is not None and (st.st_size < mark.applied_end or mark.inode not in (0, st.st_ino)):
            self._forget_run(run_id)
            mark = None
        try:
            return self._walk(log, run_id, walk, mark, st.st_ino)
        except LedgerError:
            if mark is None:
                raise
            self._forget_run(run_id)  # the mark's offset is no frame of this log: the whole log again
            return self._walk(log, run_id, None, None, st.st_ino)

    def _walk(self, log: str, run_id: str, walk: RunWalk | None, mark: Mark | None, inode: int) -> int:
        walk = walk or RunWalk(run_id, self.keyer, mark, self.cleared)
        walk.inode = inode
        start = mark.low_water if mark else HEADER_SIZE
        put, batch = 0, []
        for frame in iter_frames(log, start, decode=_decode_view):
            batch.append(frame)
            if len(batch) >= _BATCH:
                put += self.apply(walk, batch)
                batch = []
        if batch:
            put += self.apply(walk, batch)
        return put

    def apply(self, walk: RunWalk, frames: Sequence[Frame]) -> int:
        """Fold frames of one run in (a commit listener calls it with each durable group)."""
        made = [pair for frame in frames for pair in walk.feed(frame)]
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, entry in made:
                        _put(txn, self._entries, key, entry)
                    self._put_mark(txn, walk)
                return len(made)
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except lmdb.MapResizedError:  # another process grew it
                self._env.set_mapsize(0)

    def _put_mark(self, txn: Any, walk: RunWalk) -> None:
        mine = walk.mark()
        raw = txn.get(walk.run_id.encode(), db=self._runs)
        if raw:
            stored = _unpack_mark(raw)
            if stored.applied_end > mine.applied_end and stored.inode in (0, mine.inode):  # another process walked further
                mine = Mark(stored.applied_end, min(stored.low_water, mine.low_water), stored.last_seq,
                            stored.config, stored.identity, mine.inode)
        txn.put(walk.run_id.encode(), _pack(mine), db=self._runs)

    def _forget_run(self, run_id: str) -> None:
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._entries)
            doomed = [key for key, raw in cursor if _unpack_entry(raw).run == run_id]
            for key in doomed:
                txn.delete(key, db=self._entries)
            txn.delete(run_id.encode(), db=self._runs)

    def _mark(self, run_id: str) -> Mark | None:
        with self._begin() as txn:
            raw = txn.get(run_id.encode(), db=self._runs)
        return _unpack_mark(raw) if raw else None

    # -- reading -------------------------------------------------------------------------

    def get(self, key: bytes) -> Entry | None:
        """The entry for ``key``; None for none (or one that no longer reads: a miss)."""
        try:
            with self._begin() as txn:
                raw = txn.get(key, db=self._entries)
            return _unpack_entry(raw) if raw else None
        except (lmdb.Error, msgspec.DecodeError):
            return None

    def entries(self) -> Iterator[tuple[bytes, Entry]]:
        """Every entry, from one snapshot (``stats``, ``explain``'s nearest, ``clear``)."""
        with self._begin() as txn:
            for key, raw in txn.cursor(db=self._entries):
                try:
                    yield bytes(key), _unpack_entry(raw)
                except msgspec.DecodeError:
                    continue

    def runs(self) -> int:
        with self._begin() as txn:
            return txn.stat(self._runs)["entries"]

    def count(self) -> int:
        with self._begin() as txn:
            return txn.stat(self._entries)["entries"]

    def read_event(self, entry: Entry) -> Any | None:
        """The ``response`` event an entry names, read from its run's log; None if it is not
        there as recorded (a deleted run, a replaced log): then the entry is a miss. The last
        few frames read are kept: a rerun's hits come in the order they were logged, many
        from one frame."""
        frame = self._frame(entry)
        index = entry.seq - frame.first_seq if frame is not None else -1
        if not 0 <= index < len(frame.events):  # type: ignore[union-attr]
            return None
        try:
            event = decode(frame.events[index].raw)  # type: ignore[union-attr]
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if not isinstance(event, ResponseView) or event.seq != entry.seq:
            return None
        same = (event.item_id, event.sample, event.turn) == (entry.item_id, entry.sample, entry.turn)
        return event if same else None

    def _frame(self, entry: Entry) -> Frame | None:
        """The frame holding an entry's reply, its events left undecoded (``msgspec.Raw``):
        a hit decodes its own event only, not the whole commit group's."""
        where = (entry.run, entry.offset, entry.end)
        frame = self._frames.get(where)
        if frame is not None:
            return frame
        log = os.path.join(self.runs_dir, entry.run, "events.log")
        try:
            found = next(iter_frames(log, entry.offset, entry.end, decode=_raw_events), None)
        except (LedgerError, OSError, msgspec.DecodeError):
            return None
        if found is None or found.offset != entry.offset:
            return None
        if len(self._frames) >= _FRAMES_KEPT:
            self._frames.pop(next(iter(self._frames)))
        self._frames[where] = found
        return found

    def read_request(self, entry: Entry) -> dict[str, Any] | None:
        """The request (``started``) an entry's reply answered, for ``explain``."""
        log = os.path.join(self.runs_dir, entry.run, "events.log")
        found = None
        try:
            for frame in iter_frames(log, entry.request_offset, entry.end, decode=_decode_view):
                for event in frame.events:
                    if (event.__class__ is Started and event.seq < entry.seq
                            and (event.item_id, event.sample, event.turn) == (entry.item_id, entry.sample, entry.turn)):
                        found = event.request
        except (LedgerError, OSError):
            return found
        return found

    # -- clearing ------------------------------------------------------------------------

    def clear(self, before: float) -> int:
        """Forget every reply received before ``before`` (Unix seconds), now and after a rebuild."""
        self.cleared = max(self.cleared, before)
        write_atomic(os.path.join(self.runs_dir, "cache.cleared"), msgspec.json.encode({"before": self.cleared}))
        removed = 0
        with self._env.begin(write=True) as txn:
            doomed = [key for key, raw in txn.cursor(db=self._entries) if _unpack_entry(raw).ts < before]
            for key in doomed:
                txn.delete(key, db=self._entries)
            removed = len(doomed)
        return removed

    def _begin(self) -> lmdb.Transaction:
        return begin_read(self._env)


class _Seq(msgspec.Struct):
    seq: int = 0


_seq_of = msgspec.msgpack.Decoder(_Seq).decode
_raw_list = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode


class _Peek:
    """An undecoded event whose ``seq`` is read on demand (all that framing's check asks)."""

    __slots__ = ("raw",)

    def __init__(self, raw: msgspec.Raw) -> None:
        self.raw = raw

    @property
    def seq(self) -> int:
        return _seq_of(self.raw).seq


class _RawEvents(list):  # type: ignore[type-arg]
    """A frame's events left as MessagePack bytes; indexing gives a ``_Peek``."""

    def __getitem__(self, index: Any) -> Any:
        return _Peek(list.__getitem__(self, index))


def _raw_events(data: bytes | memoryview) -> list[Any]:
    return _RawEvents(_raw_list(data))


def _decode_view(data: bytes | memoryview) -> list[Any]:
    from .events import decode_many_view

    return decode_many_view(data)


def _put(txn: Any, db: Any, key: bytes, entry: Entry) -> None:
    raw = txn.get(key, db=db)
    if raw:
        try:
            if _unpack_entry(raw).rank() >= entry.rank():
                return
        except msgspec.DecodeError:
            pass
    txn.put(key, _pack(entry), db=db)


def _run_ids(runs_dir: str) -> list[str]:
    try:
        names = sorted(fs.listdir(runs_dir))
    except OSError:
        return []
    return [n for n in names if os.path.isfile(os.path.join(runs_dir, n, "events.log"))]


def _read_cleared(runs_dir: str) -> float:
    """The time before which `ledger cache clear` forgot replies (0: never cleared). A file
    that cannot be read is an error, never 0: a rebuild would bring the cleared replies back."""
    path = os.path.join(runs_dir, "cache.cleared")
    try:
        with fs.open_file(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0.0
    try:
        return float(msgspec.json.decode(data)["before"])
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise IndexStateError(f"{path}: damaged ({type(exc).__name__}: {exc}); it records which replies "
                              f"`ledger cache clear` forgot: delete it, then run `ledger cache clear [--older-than AGE]` "
                              f"again to forget them") from None


def _env(path: str) -> lmdb.Environment:
    try:
        preallocate(path + "-lock", _LOCK_BYTES)
    except OSError as exc:
        raise lmdb.Error(f"{path}: {exc.strerror or exc}") from exc
    env = lmdb.open(path, subdir=False, map_size=_INITIAL_MAP, max_dbs=4, sync=False, metasync=False, writemap=False)
    try:
        last_page, page_size = env.info()["last_pgno"], env.stat()["psize"]
        size = os.path.getsize(path)
    except (lmdb.Error, OSError) as exc:
        env.close()
        raise lmdb.Error(f"{path}: {exc}") from exc
    if size and (last_page + 1) * page_size > size:  # a cut file: reading it would SIGBUS
        env.close()
        raise lmdb.CorruptedError(f"{path}: the file holds {size} bytes, its pages reach {(last_page + 1) * page_size}")
    return env


class _Exclusive:
    """An flock held while the store is opened, checked and caught up (one rebuild at a time)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> "_Exclusive":
        self.fd = fs.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        fs.close(self.fd)
