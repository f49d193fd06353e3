"""One shard of a sharded run, in its own process: a local subprocess or a Ray task.

A shard is a whole run directory (``runs/<run>/shards/<k>/``: its own log, lock, index and
projections): a new shard is a new run whose ``run_started`` config says which shard of
which run it is (``shard_plan.shard_config``), a shard with events is resumed like any run
(``prepare_resume``: its dataset's sha256 checked, only its unfinished keys sent). So every
guarantee of one run -- a durable reply is never requested again -- holds per shard, and a
shard killed (``kill -9``, a lost Ray node) is resumed on its own.

``python -m llm_ledger.runners.shard_worker`` reads a ``ShardSpec`` (JSON) on stdin and
writes one ``ShardOutcome`` (JSON) line on stdout; the local coordinator starts N of them.
The key is read from the worker's own environment (``--api-key-env``), never passed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from llm_ledger.ledger.errors import InputError, LedgerError
from llm_ledger.ledger.layout import RunPaths

from .runner import Runner

__all__ = ["ShardSpec", "ShardOutcome", "work_shard", "main"]


class ShardSpec(msgspec.Struct, kw_only=True):
    """What a worker needs to run shard ``index`` (nothing secret)."""

    run_dir: str
    index: int
    config: dict[str, Any]  # the shard's config, for a shard not started yet
    dataset: str
    dataset_sha256: str
    dataset_items: int
    dataset_size: int
    skip_failed: bool = False
    overrides: dict[str, Any] = {}  # this session's HOW settings, already split for the shard


class ShardOutcome(msgspec.Struct, kw_only=True):
    index: int
    reason: str  # completed / interrupted / error
    stop_reason: str = ""
    error: str = ""  # the one line of an error that stopped the shard
    code: int = 0  # that error's exit code
    internal: list[str] = []  # internal errors met by the runner (each also a failed event)
    sent: int = 0


def work_shard(spec: ShardSpec) -> ShardOutcome:
    """Run (or resume) the shard; never raises: an error is the outcome's one line."""
    from .session import run_prepared

    try:
        prepared = _prepare(spec)
        session, reason = run_prepared(prepared, on_running=_interrupts)
    except KeyboardInterrupt:  # a Ctrl-C before the run's own handlers (opening, or closing the log)
        return ShardOutcome(index=spec.index, reason="interrupted", error="interrupted", code=130)
    except LedgerError as exc:
        return ShardOutcome(index=spec.index, reason="error", error=str(exc), code=exc.exit_code)
    except OSError as exc:
        return ShardOutcome(index=spec.index, reason="error", error=f"{exc.filename or ''}: {exc.strerror or exc}", code=1)
    except Exception as exc:  # a bug: one line, never a traceback
        text = " ".join(f"internal error: {type(exc).__name__}: {exc}".split())[:500]
        return ShardOutcome(index=spec.index, reason="error", error=text, code=1)
    progress = session.runner.progress if session.runner else None
    return ShardOutcome(index=spec.index, reason=reason, stop_reason=progress.stop_reason if progress else "",
                        internal=list(progress.internal) if progress else [],
                        sent=progress.done + progress.failed if progress else 0)


def _prepare(spec: ShardSpec) -> Any:
    from .prepare import prepare_resume

    paths = RunPaths(spec.run_dir)
    if _has_events(paths.log):
        return prepare_resume(paths, spec.skip_failed, spec.overrides)
    return _new_shard(spec, paths)


def _has_events(log: str) -> bool:
    from llm_ledger.ledger.reader import iter_events

    return os.path.isfile(log) and next(iter_events(log), None) is not None


def _new_shard(spec: ShardSpec, paths: RunPaths) -> Any:
    """A shard not started yet: the run was checked whole by the coordinator; here only
    that this machine sees the same dataset (a Ray node reads it from shared storage)."""
    from llm_ledger.ledger import fs

    from .config import RunConfig
    from .dataset import file_sha256, known
    from .parsers import make_parser
    from .prepare import Prepared, _api_key

    config = msgspec.structs.replace(RunConfig.from_dict(spec.config), **spec.overrides)
    if file_sha256(spec.dataset) != spec.dataset_sha256:
        raise InputError(f"{spec.dataset}: not the dataset run {_run_of(spec)} started with (sha256 differs)")
    fs.makedirs(os.path.dirname(paths.dir), exist_ok=True)
    info = known(spec.dataset, spec.dataset_sha256, spec.dataset_items, spec.dataset_size)
    return Prepared(paths, config, info, make_parser(config.parser), _api_key(config), resume=False,
                    skip_failed=spec.skip_failed, overrides=dict(spec.overrides))


def _run_of(spec: ShardSpec) -> str:
    return str(spec.config.get("shard", {}).get("run", ""))


def _interrupts(runner: Runner) -> Callable[[], None]:
    """Ctrl-C or SIGTERM: stop scheduling (in-flight requests finish); a second: abort.
    In a Ray task, which may not run on the main thread, nothing is installed."""
    loop = asyncio.get_running_loop()

    def handler() -> None:
        if runner.progress.stopping:
            runner.abort()
        else:
            runner.stop()

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, handler)
    except (ValueError, RuntimeError):
        return lambda: None

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove


def main() -> None:
    spec = msgspec.json.decode(sys.stdin.buffer.read(), type=ShardSpec)
    outcome = work_shard(spec)
    try:
        sys.stdout.buffer.write(msgspec.json.encode(outcome) + b"\n")
        sys.stdout.flush()
    except OSError:  # the coordinator is gone (killed): the shard's log says it all
        pass


if __name__ == "__main__":
    main()
