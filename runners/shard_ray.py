"""``--workers ray[:ADDRESS]``: each shard a Ray task (Ray is an optional extra).

Ray is imported only here, only when asked for; without it the run is refused before
anything is written (``pip install 'llm-ledger[ray]'``). ``ray.init(address)`` joins the
cluster (no address: a Ray already initialized in this process, else a local one). Each
task runs ``shard_worker.work_shard`` and writes its shard straight to the run's directory,
which must therefore be on storage every node sees with working ``fsync`` (NFS mounted
``sync``; an object store cannot hold a live log). ``max_retries``: a task whose node or
worker dies is started again by Ray, and resumes its shard from its log like any resume
(nothing durable is requested twice). The key travels to the tasks as the one variable
named by ``--api-key-env`` in the tasks' ``runtime_env`` (Ray keeps it in its cluster
state): the embedded simulator needs none.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from llm_ledger.ledger.errors import InputError

from .shard_worker import ShardOutcome, ShardSpec

__all__ = ["require_ray", "run_on_ray", "RETRIES"]

RETRIES = 3  # Ray restarts a task whose worker or node died; the shard resumes from its log


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--workers ray needs Ray, an optional extra: pip install 'llm-ledger[ray]'") from None
    return ray


def _work(spec: bytes) -> bytes:
    from .shard_worker import work_shard

    return msgspec.json.encode(work_shard(msgspec.json.decode(spec, type=ShardSpec)))


def run_on_ray(specs: list[ShardSpec], address: str | None, key_env: str | None) -> list[ShardOutcome]:
    ray = require_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    env = {key_env: os.environ[key_env]} if key_env and os.environ.get(key_env) else {}
    task = ray.remote(num_cpus=1, max_retries=RETRIES)(_work)
    if env:
        task = task.options(runtime_env={"env_vars": env})
    refs = [task.remote(msgspec.json.encode(spec)) for spec in specs]
    try:
        _wait(ray, refs)
        return [_outcome(ray, ref, spec) for ref, spec in zip(refs, specs, strict=True)]
    finally:
        if started_here:
            ray.shutdown()


def _wait(ray: Any, refs: list[Any]) -> None:
    """Wait for every task; a Ctrl-C cancels them (each shard's log stays consistent)."""
    try:
        ray.wait(refs, num_returns=len(refs), timeout=None)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        ray.wait(refs, num_returns=len(refs), timeout=60)


def _outcome(ray: Any, ref: Any, spec: ShardSpec) -> ShardOutcome:
    try:
        return msgspec.json.decode(ray.get(ref), type=ShardOutcome)
    except Exception as exc:  # the task died (after its retries) or was cancelled
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return ShardOutcome(index=spec.index, reason="interrupted", error=f"Ray task: {text}", code=1)
