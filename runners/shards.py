"""A sharded run (``--shards N``): N shard sessions at once, then one merged run.

The coordinator (this module, in the `ledger run` / `ledger resume` process) writes the
top level's ``events.log`` -- the run's ``run_started`` (``config.shards = N`` and the
config hash every shard must match) -- and holds its lock for the whole run, so that a
second coordinator, a `ledger merge` or a `ledger replay` is refused meanwhile. It then
starts one worker per shard that has work left (``shard_worker``: local subprocesses, or
Ray tasks with ``shard_ray``); each writes its own run directory under ``shards/<k>``.
When all have stopped, it merges them (``projections/merge.py``) into the top level, which
every reader then reads as one run. A shard that stopped (killed, interrupted, an error)
leaves the run resumable: `ledger resume RUN` resumes exactly the shards not finished.

Nothing here schedules requests: each shard is an ordinary session of the engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from llm_ledger.ledger import __version__, fs
from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.events import RunStarted
from llm_ledger.ledger.fsio import fsync_dir
from llm_ledger.ledger.lock import RunLock
from llm_ledger.projections.merge import MergeReport, merge_locked
from llm_ledger.projections.merge_log import write_log

from .plan import planned_items
from .prepare import Prepared
from .shard_plan import count_keys, identity, shard_config, split_overrides, workers_of
from .shard_worker import ShardOutcome, ShardSpec

__all__ = ["ShardedRun", "run_sharded", "shards_to_run"]

_WORST = {"completed": 0, "interrupted": 1, "error": 2}


@dataclass
class ShardedRun:
    """What a sharded session did: each shard's outcome, and the merge's."""

    reason: str = "completed"  # the worst of the shards' (completed / interrupted / error)
    outcomes: list[ShardOutcome] = field(default_factory=list)
    merged: MergeReport | None = None
    merge_error: str = ""
    skipped: list[int] = field(default_factory=list)  # shards already finished (a resume)


def run_sharded(prepared: Prepared, *, on_started: Callable[[list[ShardSpec]], None] | None = None,
                on_tick: Callable[[], None] | None = None) -> ShardedRun:
    """Run (or resume) every unfinished shard, then merge. Raises before anything is written
    for bad input (Ray asked for and missing, a run held by another process)."""
    kind, address = workers_of(prepared.config)
    if kind == "ray":
        from .shard_ray import require_ray

        require_ray()
    paths = prepared.paths
    lock = RunLock.acquire(paths.lock) if prepared.resume else _create_top(prepared)
    try:
        specs, skipped = shards_to_run(prepared)
        if on_started is not None:
            on_started(specs)
        outcomes = _run_local(specs, on_tick) if kind == "local" else _run_ray(specs, address, prepared)
        result = ShardedRun(reason=_worst(outcomes), outcomes=outcomes, skipped=skipped)
        try:
            result.merged, lock = merge_locked(paths, lock)
        except LedgerError as exc:
            result.merge_error = str(exc)
    finally:
        lock.release()
    return result


def _worst(outcomes: list[ShardOutcome]) -> str:
    return max((o.reason for o in outcomes), key=lambda r: _WORST.get(r, 1), default="completed")


def _create_top(prepared: Prepared) -> RunLock:
    """The top level: its directory, and a log holding the run's run_started (durable)."""
    paths, config, info = prepared.paths, prepared.config, prepared.dataset
    config.shard = identity(config)
    created = not os.path.isdir(paths.dir)
    fs.makedirs(paths.shards, exist_ok=True)
    if created:
        fsync_dir(os.path.dirname(os.path.abspath(paths.dir)))
    started = RunStarted(run_id=paths.run_id, config=config.to_dict(), dataset=info.path, dataset_sha256=info.sha256,
                         items=planned_items(info.items, config.limit), version=__version__,
                         dataset_items=info.items, dataset_size=info.size, ts=time.time())
    write_log(paths.log, [started])
    return RunLock.acquire(paths.lock)


def shards_to_run(prepared: Prepared) -> tuple[list[ShardSpec], list[int]]:
    """A spec per shard with work left; the shards already finished (skipped)."""
    from llm_ledger.projections.runs import run_status

    config, paths, info = prepared.config, prepared.paths, prepared.dataset
    of = config.shards
    counts: list[int] | None = None
    specs, skipped = [], []
    for k in range(of):
        shard = paths.shard(k)
        status = run_status(shard) if _has_events(shard.log) else None
        if status is not None and _finished(status.status, prepared.skip_failed):
            skipped.append(k)
            continue
        own: dict[str, Any] = {}
        if status is None:
            counts = counts or count_keys(prepared)
            own = shard_config(config, paths.run_id, k, counts[k]).to_dict()
        specs.append(ShardSpec(run_dir=os.path.abspath(shard.dir), index=k, config=own,
                               dataset=os.path.abspath(info.path), dataset_sha256=info.sha256,
                               dataset_items=info.items, dataset_size=info.size, skip_failed=prepared.skip_failed,
                               overrides=split_overrides(prepared.overrides, k, of)))
    return specs, skipped


def _finished(status: str, skip_failed: bool) -> bool:
    return status == "completed" or (skip_failed and status == "completed_with_failures")


def _has_events(log: str) -> bool:
    from llm_ledger.ledger.reader import iter_events

    return os.path.isfile(log) and next(iter_events(log), None) is not None


# -- local workers -----------------------------------------------------------------------


def _run_local(specs: list[ShardSpec], on_tick: Callable[[], None] | None) -> list[ShardOutcome]:
    """One subprocess per shard. Ctrl-C reaches them from the terminal (each stops as a run
    does); a SIGTERM to this process is passed on to them."""
    procs = [subprocess.Popen([sys.executable, "-m", "llm_ledger.runners.shard_worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in specs]
    results: list[tuple[bytes, bytes]] = [(b"", b"")] * len(specs)

    def talk(n: int) -> None:
        try:
            results[n] = procs[n].communicate(msgspec.json.encode(specs[n]))
        except BaseException as exc:  # said in the shard's outcome, once the process has ended
            results[n] = (b"", f"{type(exc).__name__}: {exc}".encode())
            procs[n].wait()

    threads = [threading.Thread(target=talk, args=(n,), daemon=True) for n in range(len(specs))]
    for t in threads:
        t.start()
    undo = _pass_sigterm(procs)
    try:
        _wait_all(threads, on_tick)
    finally:
        undo()
    return [_outcome(spec, proc.returncode, *result) for spec, proc, result in zip(specs, procs, results, strict=True)]


def _wait_all(threads: list[threading.Thread], on_tick: Callable[[], None] | None) -> None:
    """Until every worker has ended; a Ctrl-C here waits on (the workers got it too)."""
    while any(t.is_alive() for t in threads):
        try:
            for t in threads:
                t.join(0.5)
                if on_tick is not None:
                    on_tick()
        except KeyboardInterrupt:
            continue


def _pass_sigterm(procs: list[subprocess.Popen]) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)


def _outcome(spec: ShardSpec, code: int | None, out: bytes, err: bytes) -> ShardOutcome:
    lines = out.strip().splitlines()
    if code == 0 and lines:
        try:
            return msgspec.json.decode(lines[-1], type=ShardOutcome)
        except msgspec.DecodeError:
            pass
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return ShardOutcome(index=spec.index, reason="interrupted", error=f"shard {spec.index}: its process was killed ({name})",
                            code=1)
    last = (err.strip().splitlines() or [b"no message"])[-1].decode(errors="replace")[:300]
    return ShardOutcome(index=spec.index, reason="error", error=f"shard {spec.index}: its process exited {code}: {last}", code=1)


def _run_ray(specs: list[ShardSpec], address: str | None, prepared: Prepared) -> list[ShardOutcome]:
    from .shard_ray import run_on_ray

    config = prepared.config
    return run_on_ray(specs, address, None if config.embedded else config.api_key_env)
