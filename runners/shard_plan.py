"""How a sharded run is cut: which keys each shard owns, its share of the limits, its config.

Keys: ``ledger/shard_keys.py`` (sha256 of (item, sample), modulo N). Limits: each of
``--concurrency``, ``--rpm`` and ``--tpm`` is split into N integer shares that add up to
exactly the limit (``total // N``, plus one for the first ``total % N`` shards), so the
shards together never exceed what was asked; a limit below N is refused (a shard with a
share of 0 could never send). The split is static: a shard that finishes early leaves its
share unused (a shared limiter would need a service every shard talks to; we have none).

A shard's config is the run's with its shares and ``shard = {index, of, run, planned,
config_sha256, ignored}``. ``config_sha256`` is a hash of the run's config without the
settings that may differ between shards or sessions (``ignored``: how the work is sent,
never what): the top level records the same hash, and ``ledger merge`` refuses a shard
whose config hashes otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.shard_keys import config_sha256, shard_of

from .config import HOW_FIELDS, RunConfig

if TYPE_CHECKING:
    from .prepare import Prepared

__all__ = ["SPLIT", "MAX_SHARDS", "check_sharding", "share", "split_overrides", "identity",
           "shard_config", "count_keys", "workers_of"]

SPLIT = ("concurrency", "rpm", "tpm")  # limits divided between the shards
MAX_SHARDS = 1024  # each shard is a process, a log, a lock and an LMDB index
_IGNORED = tuple(sorted({*HOW_FIELDS, *SPLIT, "shard", "preflight"}))


def workers_of(config: RunConfig) -> tuple[str, str | None]:
    """``local`` -> ("local", None); ``ray`` -> ("ray", None); ``ray:ADDRESS`` -> ("ray", ADDRESS)."""
    kind, _, address = config.workers.partition(":")
    if kind == "local" and not address:
        return "local", None
    if kind == "ray":
        return "ray", address or None
    raise InputError(f"--workers {config.workers!r}: expected local, ray or ray:ADDRESS")


def check_sharding(config: RunConfig) -> None:
    """Before anything is written: a number of shards we can run, shares of at least 1."""
    if config.shards > MAX_SHARDS:
        raise InputError(f"--shards {config.shards}: at most {MAX_SHARDS}")
    if config.runner == "batch":  # one run's batches at the provider, one log to reconcile them with
        raise InputError(f"--batch with --shards {config.shards}: the Batch API runs a file's requests in parallel at "
                         "the provider already; run --batch without --shards")
    for name in SPLIT:
        value = getattr(config, name)
        if value is not None and value < config.shards:
            raise InputError(f"--{name} {value} with --shards {config.shards}: the limit is split between the "
                             f"shards, each needs at least 1")
    workers_of(config)


def share(total: int | None, index: int, of: int) -> int | None:
    """Shard ``index``'s share of a limit: the N shares add up to ``total`` exactly."""
    if total is None:
        return None
    return total // of + (1 if index < total % of else 0)


def split_overrides(overrides: dict[str, Any], index: int, of: int) -> dict[str, Any]:
    """A session's overrides for one shard: the limits among them split like the run's."""
    return {k: share(v, index, of) if k in SPLIT else v for k, v in overrides.items()}


def identity(config: RunConfig) -> dict[str, Any]:
    """The ``shard`` part of the top level's config: the hash every shard must match."""
    return {"config_sha256": config_sha256(config.to_dict(), _IGNORED), "ignored": list(_IGNORED)}


def shard_config(run: RunConfig, run_id: str, index: int, planned: int) -> RunConfig:
    """Shard ``index``'s config: the run's, with its shares of the limits and who it is."""
    of = run.shards
    info = {**identity(run), "index": index, "of": of, "run": run_id, "planned": planned}
    shares = {name: share(getattr(run, name), index, of) for name in SPLIT}
    return msgspec.structs.replace(run, shard=info, **shares)


def count_keys(prepared: Prepared) -> list[int]:
    """(item, sample) keys per shard, in one pass over the planned items."""
    from .plan import planned_records

    of, samples = prepared.config.shards, prepared.config.samples
    counts = [0] * of
    for item_id in _ids(planned_records(prepared)):
        for sample in range(samples):
            counts[shard_of(item_id, sample, of)] += 1
    return counts


def _ids(records: Iterator[tuple[str, int, dict[str, Any]]]) -> Iterator[str]:
    for item_id, _line, _record in records:
        yield item_id
