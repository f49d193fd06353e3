"""The one writer of a run's log: exclusive lock, recovery on open, group commit.

Producers (threads via ``append``, asyncio tasks via ``append_async``, or fire-and-forget
via ``submit``) put events on a queue. One writer thread takes everything queued, gives it
seq numbers and a commit timestamp, writes it as one frame (framing.py) with one
``os.write`` and makes it durable with one ``os.fdatasync``; only then are the producers
acknowledged, and only then do commit listeners (the index, projections) see the events.
Throughput therefore approaches one group per sync while latency stays about one sync.
(A group above MAX_FRAME becomes several frames, each written and synced before the next,
so that only the last frame of a log can ever be torn.) The payload is decoded back before
it is written: a submission that could not be read back fails alone and is never logged.

A failed write or fdatasync is fatal for this writer (PostgreSQL's fsyncgate lesson: after
a failed fsync the kernel may have dropped the dirty pages, so retrying proves nothing).
Every queued producer gets LogWriteError, later appends get LogClosedError, and the bytes
of the failed group are cut off through a *new* descriptor when possible. Reopening the log
recovers it as after a crash.
"""

from __future__ import annotations

import asyncio
import errno
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from . import fs
from .errors import LogClosedError, LogError, LogNotSoundError, LogWriteError, UnencodableEventError
from .events import Event, EventBase, decode, decode_many, encode, encode_many
from .framing import MAX_FRAME, Frame, encode_frame, file_header
from .fsio import fsync_dir, os_error
from .lock import RunLock
from .recovery import cut_tail, locate_end

__all__ = ["LogWriter", "CommitListener", "Recovered"]

CommitListener = Callable[[Sequence[Frame]], None]
_CLOSE = object()


class Recovered(msgspec.Struct, frozen=True):
    """What opening found: a tail cut away (saved to ``saved_to``) or nothing."""

    end: int
    last_seq: int
    cut_bytes: int = 0
    saved_to: str = ""


class _ThreadWaiter:
    """One-shot wake-up for a blocked thread: a bare lock is the cheapest signal there is."""

    __slots__ = ("_lock", "result", "error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.result: list[Event] | None = None
        self.error: BaseException | None = None

    def done(self, result: list[Event] | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self._lock.release()

    def wait(self) -> list[Event]:
        self._lock.acquire()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class LogWriter:
    """The exclusive, group-committing writer of one ``events.log``."""

    def __init__(self, path: str, fd: int, lock: RunLock, recovered: Recovered) -> None:
        self.path = path
        self.recovered = recovered
        self._fd = fd
        self._lock = lock
        self._end = recovered.end
        self._next_seq = recovered.last_seq + 1
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._listeners: list[CommitListener] = []
        self._dead: BaseException | None = None
        self._closing = False
        self.listener_errors: list[BaseException] = []
        # Submissions (``submit``: nobody waits) refused because they could not be encoded:
        # no producer hears of it, so their errors are kept here for the runner to report.
        self.refused: list[UnencodableEventError] = []
        self.groups = 0  # commit groups written (one fdatasync each)
        self.cpu_seconds = 0.0  # the writer thread's CPU time, once it has ended (bench/run.py)
        # Seconds to wait for company when a group starts with a fire-and-forget submit
        # (Kafka's linger.ms): fewer, larger syncs and fewer thread wake-ups competing with
        # the producers for the GIL. Waited-on appends never linger.
        self.linger = 0.005
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, durable_end: Callable[[], int] | None = None) -> "LogWriter":
        """Create durably if new, lock (lock.py), cut a torn tail (saved beside the log),
        start. Only the tail is checked here: a caller appending to an existing log proves
        the rest sound first (the session through its index, index.py).

        ``durable_end`` (called once the lock is held) says how far the log is known to
        have been durable -- the index applies a frame only after its fdatasync. A damaged
        last frame below that is no torn write but damage to acknowledged events: it is
        refused (LogNotSoundError, repair first), never cut, so that no durable reply is
        dropped and paid for again."""
        try:
            if not os.path.exists(path):
                _create(path)
        except OSError as exc:  # a read-only run directory, a full or failing disk ...
            raise os_error(path, exc, "cannot create") from exc
        lock = RunLock.acquire(f"{path}.lock")
        try:
            fd = fs.open(path, os.O_RDWR)
            try:
                recovered = _recover(fd, path, durable_end() if durable_end else 0)
            except BaseException:
                fs.close(fd)
                raise
        except OSError as exc:
            lock.release()
            raise os_error(path, exc, "cannot open for writing") from exc
        except BaseException:
            lock.release()
            raise
        return cls(path, fd, lock, recovered)

    @property
    def end(self) -> int:
        """Offset just past the last durable frame."""
        return self._end

    @property
    def dead(self) -> BaseException | None:
        """The write error that killed this writer, if one did (it appends nothing more)."""
        return self._dead

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def add_listener(self, listener: CommitListener) -> None:
        """Called in the writer thread with each durable group's frames, after the acks.
        It must be quick and must not raise (errors are kept in ``listener_errors``)."""
        self._listeners.append(listener)

    # -- appending -----------------------------------------------------------------------

    def append(self, event: Event) -> Event:
        """Block until ``event`` is durable; returns it with its seq and ts."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[Event]) -> list[Event]:
        """Block until all of ``events`` are durable, in one frame (all or nothing)."""
        waiter = _ThreadWaiter()
        self._put(list(events), waiter)
        return waiter.wait()

    async def append_async(self, event: Event) -> Event:
        return (await self.append_many_async([event]))[0]

    async def append_many_async(self, events: Sequence[Event]) -> list[Event]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Event]] = loop.create_future()
        self._put(list(events), (loop, future))
        return await future

    def submit(self, events: Sequence[Event]) -> None:
        """Queue events without waiting for them (their durability is seen by listeners)."""
        self._put(list(events), None)

    def _put(self, events: list[Event], waiter: Any) -> None:
        for event in events:
            if not isinstance(event, EventBase):
                raise TypeError(f"not a ledger event: {type(event).__name__}")
        if self._dead is not None:
            raise LogClosedError(f"{self.path}: writer stopped: {self._dead}") from self._dead
        if self._closing:
            raise LogClosedError(f"{self.path}: writer is closed")
        if not events:  # nothing to make durable; an empty group would kill the writer thread
            _resolve(waiter, [], None)
            return
        self._queue.put((events, waiter))

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, stop the thread, release the lock. Idempotent."""
        if not self._closing:
            self._closing = True
            self._queue.put(_CLOSE)
            self._thread.join()
            fs.close(self._fd)
            self._lock.release()

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.cpu_seconds = time.thread_time()

    def _loop(self) -> None:
        closing = False
        while not closing:
            batch = [self._queue.get()]
            if self.linger and batch[0] is not _CLOSE and batch[0][1] is None:
                time.sleep(self.linger)  # nobody waits on a submit: gather a bigger group
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _CLOSE or _CLOSE in batch:
                closing = True
                batch = [item for item in batch if item is not _CLOSE]
            if batch and self._dead is None:
                try:
                    self._commit(batch)
                except Exception as exc:  # a bug or a bad event must fail its producers, not hang them
                    self._fail(batch, LogError(f"{self.path}: could not commit: {type(exc).__name__}: {exc}"))
            elif batch:
                self._fail(batch, LogClosedError(f"{self.path}: writer stopped: {self._dead}"))

    def _commit(self, batch: list[tuple[list[Event], Any]]) -> None:
        now, seq = time.time(), self._next_seq
        stamped = []
        for events, waiter in batch:
            stamped.append(([msgspec.structs.replace(e, seq=seq + i, ts=now) for i, e in enumerate(events)], waiter))
            seq += len(events)
        try:
            payload = encode_many([e for evs, _ in stamped for e in evs])
            decode_many(payload)  # a frame no reader could decode must never reach the log
        except (msgspec.EncodeError, msgspec.DecodeError, TypeError, ValueError, OverflowError, RecursionError):
            payload = b""
        if payload and len(payload) <= MAX_FRAME:
            groups = [(stamped, payload)]
        else:  # rare: split oversize batches, fail only the unencodable submissions
            groups = _regroup(stamped, self.refused)
            if not groups:
                return
        # One write + one fdatasync per frame: a frame is written only once every frame
        # before it is durable, so a crash can tear the last frame alone and the tail rule
        # (framing.py) holds. Sharing one sync, a disk could keep a later frame and lose a
        # sector of an earlier one: corruption in the middle, not a tail.
        for n, (group, data) in enumerate(groups):
            events = [e for evs, _ in group for e in evs]
            frame_bytes = encode_frame(events[0].seq, len(events), data)
            frame = Frame(self._end, self._end + len(frame_bytes), events[0].seq, events)
            try:
                _write_all(self._fd, frame_bytes)
                fs.fdatasync(self._fd)
            except OSError as exc:
                self._die([item for later, _ in groups[n:] for item in later], exc)
                return
            self._end, self._next_seq = frame.end, events[-1].seq + 1
            self.groups += 1
            _acknowledge(group)
            self._notify([frame])

    def _die(self, batch: list[tuple[list[Event], Any]], exc: OSError) -> None:
        self._dead = LogWriteError(f"{self.path}: write/fdatasync failed: {exc.strerror or exc}; log must be reopened")
        self._next_seq = -1
        _cut_unsynced(self.path, self._end)  # before the producers hear of it: their error
        self._fail(batch, self._dead)  # means the failed group's bytes are already gone

    def _fail(self, batch: list[tuple[list[Event], Any]], error: BaseException) -> None:
        for _, waiter in batch:
            _resolve(waiter, None, error)

    def _notify(self, frames: list[Frame]) -> None:
        for listener in self._listeners:
            try:
                listener(frames)
            except Exception as exc:  # a listener is derived state: record, keep committing
                self.listener_errors.append(exc)


def _create(path: str) -> None:
    """A new log holding its header, made durable before its name appears; linked into
    place, never renamed over: two processes creating the same run race harmlessly (one
    link wins, the other finds the log), and a log, once there, is never replaced by a
    creator under a writer that has locked it."""
    tmp = f"{path}.new.{os.getpid()}"
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            _write_all(fd, file_header())
            fs.fsync(fd)
        finally:
            fs.close(fd)
        try:
            fs.link(tmp, path)
        except FileExistsError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            fs.replace(tmp, path)  # a file system without hard links (vfat, some FUSE)
            fsync_dir(os.path.dirname(os.path.abspath(path)))
            return
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.lexists(tmp):
            fs.unlink(tmp)


def _recover(fd: int, path: str, durable: int = 0) -> Recovered:
    with fs.fdopen(fs.dup(fd), "rb", buffering=0) as f:
        found = locate_end(f, path)
    if found.size > found.end and found.end < durable:
        raise LogNotSoundError(path, found.end, f"the last frame is damaged, but events up to byte {durable} were "
                                                "durable (the index applied them): not a torn write")
    saved, cut = cut_tail(fd, path, found.end) if found.size > found.end else ("", 0)
    fs.lseek(fd, found.end, os.SEEK_SET)
    return Recovered(found.end, found.last_seq, cut, saved)


def _cut_unsynced(path: str, end: int) -> None:
    """Best effort, through a new descriptor: drop the group whose sync failed."""
    try:
        fd = fs.open(path, os.O_RDWR)
        try:
            fs.ftruncate(fd, end)
            fs.fsync(fd)
        finally:
            fs.close(fd)
    except OSError:
        pass  # reopening will recover; the events were never acknowledged either way


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[fs.write(fd, view) :]


def _regroup(stamped: list[tuple[list[Event], Any]],
             refused: list[UnencodableEventError]) -> list[tuple[list[tuple[list[Event], Any]], bytes]]:
    """Frames of at most about MAX_FRAME payload bytes, never splitting a submission
    (append_many is all or nothing). A submission that cannot be encoded fails alone (one
    without a waiter is kept in ``refused``); the seqs of the others are renumbered so the
    log stays gapless."""
    encoded: list[tuple[list[Event], Any, int]] = []
    for events, waiter in stamped:
        try:
            encoded.append((events, waiter, sum(len(_checked(e)) for e in events)))
        except (msgspec.EncodeError, msgspec.DecodeError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            error = UnencodableEventError(f"{type(events[0]).__name__} event cannot be encoded: {exc}")
            if waiter is None:
                refused.append(error)
            _resolve(waiter, None, error)
    if not encoded:
        return []
    seq = stamped[0][0][0].seq
    groups: list[list[tuple[list[Event], Any]]] = [[]]
    size = 0
    for events, waiter, n in encoded:
        if groups[-1] and size + n > MAX_FRAME:
            groups.append([])
            size = 0
        groups[-1].append(([msgspec.structs.replace(e, seq=seq + i) for i, e in enumerate(events)], waiter))
        seq += len(events)
        size += n
    return [(group, encode_many([e for evs, _ in group for e in evs])) for group in groups]


def _checked(event: Event) -> bytes:
    """The event's bytes, once they are known to decode back (a field of the wrong type,
    e.g. a number where the schema says string, encodes fine but would make the frame
    unreadable: CorruptLogError for every reader, forever)."""
    data = encode(event)
    decode(data)
    return data


def _acknowledge(stamped: list[tuple[list[Event], Any]]) -> None:
    """Wake thread producers one by one, and each event loop once for all its futures."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, list[Event]]]] = {}
    for events, waiter in stamped:
        if isinstance(waiter, tuple):
            by_loop.setdefault(waiter[0], []).append((waiter[1], events))
        elif waiter is not None:
            waiter.done(events, None)
    for loop, pairs in by_loop.items():
        _call_soon(loop, _set_results, pairs)


def _set_results(pairs: list[tuple[asyncio.Future, Any]]) -> None:
    for future, result in pairs:
        if not future.done():
            future.set_result(result)


def _set_errors(pairs: list[tuple[asyncio.Future, BaseException]]) -> None:
    for future, error in pairs:
        if not future.done():
            future.set_exception(error)


def _resolve(waiter: Any, result: list[Event] | None, error: BaseException | None) -> None:
    if isinstance(waiter, tuple):
        loop, future = waiter
        if error is not None:
            _call_soon(loop, _set_errors, [(future, error)])
        else:
            _call_soon(loop, _set_results, [(future, result)])
    elif waiter is not None:
        waiter.done(result, error)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], arg: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, arg)
    except RuntimeError:
        pass  # the producer's loop is closed: nobody is waiting any more
