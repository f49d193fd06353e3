"""Simulated power loss at the Nth sync, looping over N (oshim.PowerLossDisk).

Real ``LogWriter`` appends from several producers (threads, asyncio tasks, fire-and-forget
submits); at the Nth fsync/fdatasync the disk model throws away, keeps or garbles (per
512-byte sector) what was written since each file's last sync and forgets directory entries
never synced. The "rebooted" directory is then opened with ``LogWriter.open``:

* every event acknowledged before the cut is there, unchanged, at its seq;
* seqs are gapless, and any event past the acknowledged ones is one that was really
  submitted (nothing else is mistaken for a record);
* ``verify`` finds the log clean (the cut left a tail, never corruption in the middle), and
  the log takes new appends and reopens.

A second round crashes again while the rebooted log is being recovered (the tail copied to
``events.log.broken``, truncated, synced) and appended to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import threading
from pathlib import Path

import msgspec
import pytest

from chaos.oshim import PowerLossDisk, installed
from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.events import Failed, Parsed, Response, Started
from llm_ledger.ledger.maintenance import verify_log
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter

MODES = ("drop", "keep", "sectors", "first_sector_lost")


@contextlib.contextmanager
def powered_by(disk: PowerLossDisk):
    """Every file-system call (through ``llm_ledger.ledger.fs``) goes to ``disk`` inside the block."""
    with installed(disk):
        yield disk


def _event(rng: random.Random, item_id: str):
    size = rng.choice((0, 40, 700, 3000, 20000))
    kind = rng.randrange(4)
    if kind == 0:
        return Started(item_id=item_id, request={"messages": [{"role": "user", "content": "q" * size}]})
    if kind == 1:
        return Response(item_id=item_id, text="é" * size, latency=0.25)
    if kind == 2:
        return Parsed(item_id=item_id, value={"v": size})
    return Failed(item_id=item_id, message="x" * size, status=429, retryable=True)


class Producers:
    """Several producers appending to one writer until they are done or the writer dies."""

    def __init__(self, seed: int, prefix: str) -> None:
        self.seed, self.prefix = seed, prefix
        self.acked: dict[int, object] = {}  # seq -> event as acknowledged
        self.submitted: dict[str, object] = {}  # item_id -> event as submitted
        self._lock = threading.Lock()

    def _new(self, rng: random.Random, tag: str):
        event = _event(rng, f"{self.prefix}{tag}")
        with self._lock:
            self.submitted[event.item_id] = event
        return event

    def _ack(self, events) -> None:
        with self._lock:
            for e in events:
                self.acked[e.seq] = e

    def thread(self, writer: LogWriter, t: int, ops: int) -> None:
        rng = random.Random(self.seed * 100 + t)
        try:
            for i in range(ops):
                roll = rng.random()
                if roll < 0.45:
                    self._ack([writer.append(self._new(rng, f"t{t}-{i}"))])
                elif roll < 0.8:
                    self._ack(writer.append_many([self._new(rng, f"t{t}-{i}-{k}") for k in range(rng.randint(1, 4))]))
                else:
                    writer.submit([self._new(rng, f"t{t}-{i}-s")])
        except LedgerError:
            return

    async def task(self, writer: LogWriter, t: int, ops: int) -> None:
        rng = random.Random(self.seed * 100 + 50 + t)
        try:
            for i in range(ops):
                if rng.random() < 0.7:
                    self._ack([await writer.append_async(self._new(rng, f"a{t}-{i}"))])
                else:
                    self._ack(await writer.append_many_async([self._new(rng, f"a{t}-{i}-{k}") for k in range(3)]))
        except LedgerError:
            return

    def run(self, writer: LogWriter, threads: int = 3, tasks: int = 3, ops: int = 10) -> None:
        async def loop() -> None:
            await asyncio.gather(*(self.task(writer, t, ops) for t in range(tasks)))

        workers = [threading.Thread(target=self.thread, args=(writer, t, ops)) for t in range(threads)]
        workers.append(threading.Thread(target=asyncio.run, args=(loop(),)))
        for w in workers:
            w.start()
        for w in workers:
            w.join()


def session(directory: Path, disk: PowerLossDisk, producers: Producers, **kw) -> None:
    """Open the log (creating or recovering it) and append from every producer, under ``disk``."""
    with powered_by(disk):
        try:
            writer = LogWriter.open(str(directory / "events.log"))
        except (OSError, LedgerError):
            assert disk.crashed, "opening failed without a crash"
            return
        try:
            producers.run(writer, **kw)
        finally:
            writer.close()


def check_rebooted(directory: Path, acked: dict[int, object], submitted: dict[str, object], where: str) -> list:
    """Open the rebooted log and check the promises; returns its events."""
    log = str(directory / "events.log")
    if not os.path.exists(log):
        assert not acked, f"{where}: the log vanished with {len(acked)} events acknowledged"
        return []
    with LogWriter.open(log) as writer:
        events = list(iter_events(log))
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), f"{where}: seqs not gapless"
        for seq, event in acked.items():
            assert seq <= len(events), f"{where}: acknowledged seq {seq} lost (log has {len(events)})"
            assert events[seq - 1] == event, f"{where}: acknowledged seq {seq} changed"
        for event in events:
            if event.seq not in acked:
                bare = msgspec.structs.replace(event, seq=0, ts=0.0)
                assert submitted.get(event.item_id) == bare, f"{where}: seq {event.seq} was never submitted: {event!r:.200}"
        report = verify_log(log)
        assert report.ok and report.tail_bytes == 0, f"{where}: verify after recovery: {report.problems}"
        writer.append(Started(item_id="after-reboot"))
    again = list(iter_events(log))
    assert len(again) == len(events) + 1 and again[:-1] == events, f"{where}: reopen after append"
    return events


def count_syncs(tmp_path: Path, seed: int) -> int:
    directory = tmp_path / "count"
    directory.mkdir()
    disk = PowerLossDisk(str(directory), crash_at=None)
    session(directory, disk, Producers(seed, "c"))
    return disk.syncs


@pytest.mark.parametrize("seed", [11, 12])
def test_power_loss_at_every_sync_keeps_every_acknowledged_event(tmp_path, seed):
    total = count_syncs(tmp_path, seed)
    assert total > 10, f"seed={seed}: only {total} syncs"
    torn_images, lost_entries = [], 0
    for n in range(1, total + 3):  # producers race, so a run may sync a little more or less
        mode = MODES[n % len(MODES)]
        where = f"seed={seed} crash at sync {n} ({mode})"
        before, after = tmp_path / f"n{n}", tmp_path / f"n{n}-rebooted"
        before.mkdir()
        disk = PowerLossDisk(str(before), crash_at=n, mode=mode, seed=seed * 1000 + n)
        producers = Producers(seed, f"n{n}-")
        session(before, disk, producers)
        if not disk.crashed:
            continue
        disk.write_image(str(after))
        lost_entries += not (after / "events.log").exists()  # created, but its directory never synced
        size = os.path.getsize(after / "events.log") if (after / "events.log").exists() else 0
        events = check_rebooted(after, producers.acked, producers.submitted, where)
        if size and len(events) < len(producers.submitted):
            torn_images.append((n, producers))
        shutil.rmtree(before)
    assert torn_images, f"seed={seed}: no crash left anything to recover"
    assert lost_entries, f"seed={seed}: no crash lost the log's directory entry"


@pytest.mark.parametrize("seed", [21])
def test_power_loss_during_recovery_and_the_appends_after_it(tmp_path, seed):
    """Crash once mid-run with a torn, garbled tail; reboot; crash again at every sync of the
    recovering session (saving the tail, truncating, syncing, appending)."""
    first = tmp_path / "first"
    first.mkdir()
    rng = random.Random(seed)
    # a mid-run crash whose image has bytes past the last valid frame
    for attempt in range(40):
        disk = PowerLossDisk(str(first), crash_at=rng.randint(6, 20), mode="keep" if attempt % 2 else "sectors",
                             seed=seed + attempt)
        producers = Producers(seed + attempt, "p1-")
        session(first, disk, producers)
        image = tmp_path / f"image{attempt}"
        if disk.crashed:
            disk.write_image(str(image))
            log = image / "events.log"
            if log.exists() and log.stat().st_size > _clean_end(log):
                break
        shutil.rmtree(first)
        first.mkdir()
    else:
        pytest.fail(f"seed={seed}: never got a torn tail to recover")
    acked1, submitted1 = producers.acked, producers.submitted

    total = None
    m = 1
    while total is None or m <= total + 1:
        work = tmp_path / f"m{m}"
        shutil.copytree(image, work)
        disk = PowerLossDisk(str(work), crash_at=m, mode=MODES[m % len(MODES)], seed=seed * 7 + m)
        producers = Producers(seed + m, f"p2-{m}-")
        session(work, disk, producers, threads=2, tasks=1, ops=3)
        if not disk.crashed:
            total = disk.syncs if total is None else total
            m += 1
            continue
        rebooted = tmp_path / f"m{m}-rebooted"
        disk.write_image(str(rebooted))
        acked = {**acked1, **producers.acked}
        check_rebooted(rebooted, acked, {**submitted1, **producers.submitted}, f"seed={seed} second crash at sync {m}")
        m += 1
        if m > 40:
            break


def _clean_end(log: Path) -> int:
    from llm_ledger.ledger.reader import log_end

    return log_end(str(log))


def test_a_group_split_into_several_frames_survives_power_loss_at_its_sync(tmp_path):
    """A commit group over MAX_FRAME is written as several frames. If they share one write and
    one fdatasync, a disk may keep the second frame and lose a sector of the first: the log
    then opens (its end looks clean) but reading stops at a corrupt frame in the middle, and
    `verify --repair` would cut everything appended after. Each frame must be durable before
    the next is written, so that only the last one can ever be torn."""
    payload = "z" * (2_300_000)
    for n in range(1, 8):
        directory = tmp_path / f"n{n}"
        directory.mkdir()
        disk = PowerLossDisk(str(directory), crash_at=n, mode="first_sector_lost")
        acked: dict[int, object] = {}
        with powered_by(disk):
            try:
                writer = LogWriter.open(str(directory / "events.log"))
            except (OSError, LedgerError):
                continue
            try:
                for e in writer.append_many([Started(item_id="before")]):
                    acked[e.seq] = e
                writer.linger = 0.2  # the two big submits and the append form one batch
                writer.submit([Response(item_id="big1", text=payload)])
                writer.submit([Response(item_id="big2", text=payload)])
                for e in writer.append_many([Parsed(item_id="small")]):
                    acked[e.seq] = e
            except LedgerError:
                pass
            finally:
                writer.close()
        if not disk.crashed:
            break
        rebooted = tmp_path / f"n{n}-rebooted"
        disk.write_image(str(rebooted))
        submitted = {"before": Started(item_id="before"), "big1": Response(item_id="big1", text=payload),
                     "big2": Response(item_id="big2", text=payload), "small": Parsed(item_id="small")}
        check_rebooted(rebooted, acked, submitted, f"crash at sync {n}")
