"""Which shard of a sharded run owns an (item, sample), and how many keys a run plans.

``ledger run --shards N`` splits the plan by a stable hash: the first 8 bytes of
``sha256(item_id UTF-8, 0x00, sample as decimal)`` as a big-endian integer, modulo N.
Never Python's ``hash`` (salted per process): the owner of a key must be the same in every
process, on every machine and on every resume, since a shard only ever sends its own keys
and the merge refuses a key found in a shard that does not own it.

A shard's ``run_started.config`` carries ``shard = {"index": k, "of": N, "run": R,
"planned": n, "config_sha256": ..}``; ``planned`` is the count of (item, sample) keys the
shard owns (the index, the folds and status read it through ``planned_keys``), which is
not ``items x samples`` for one shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

import msgspec

__all__ = ["shard_of", "planned_keys", "shard_info", "config_sha256"]

_json = msgspec.json.Encoder(order="deterministic")


def shard_of(item_id: str, sample: int, shards: int) -> int:
    """The shard (0 .. shards-1) that owns this (item, sample)."""
    if shards <= 1:
        return 0
    digest = hashlib.sha256(f"{item_id}\x00{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_info(config: dict[str, Any]) -> dict[str, Any]:
    """The ``shard`` part of a run's config: empty for an unsharded run or a sharded run's
    top level (whose config says ``shards`` only)."""
    info = config.get("shard")
    return info if isinstance(info, dict) else {}


def planned_keys(items: int, config: dict[str, Any]) -> int:
    """(item, sample) keys a run plans, from its ``run_started``: a shard's own count, else
    planned items x samples."""
    planned = shard_info(config).get("planned")
    if isinstance(planned, int) and not isinstance(planned, bool):
        return planned
    return items * int(config.get("samples", 1) or 1)


def config_sha256(config: dict[str, Any], ignored: Collection[str]) -> str:
    """What a run sends, hashed: its config without the ``ignored`` settings (how it is
    sent, and which shard it is), so that every shard of a run hashes alike."""
    kept = {k: v for k, v in config.items() if k not in ignored}
    return hashlib.sha256(_json.encode(kept)).hexdigest()
