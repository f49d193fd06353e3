"""The cross-run cache, as a runner uses it: never pay twice for a reply some run's log holds.

A runner asks before it sends. The small API (the per-request engine uses it; a Batch API
runner calls the same two functions before it puts a request into a batch)::

    cache = context.cache                        # None: no cache for this session
    hit = cache.lookup(body, sample)             # Hit | None; sends nothing, reads one frame
    if hit is not None:
        events = cache.hit_events(hit, item=..., sample=..., turn=..., attempt=..., body=body,
                                  final=..., expected=..., line=..., metadata=...)
        # + the runner's own ``parsed`` of hit.response.text, appended together, awaited
        # until durable like any reply

A hit is events, like every step of a run: a ``started`` whose ``endpoint`` is ``cache``
(the request that was *not* sent, so that the row has its prompt and expected answer) and a
``response`` that copies the original's text, finish reason, usage and raw body with
``cached_from: {run, seq, ts}`` and latency 0 (no time of its own: its row's latency is null); then the ``parsed`` of this run's parser.
A kill -9 between them leaves the item in flight; resume looks it up again: nothing is sent.

Every request is looked up by default. The mission is that a reply that reached a log is
never paid for twice, and a rerun is the commonest way to pay twice (one more item, a new
parser, a crash in a *new* run of the same job): promptfoo caches by default for the same
reason; Inspect AI does not, and its users pay for their reruns. A deterministic request
(temperature 0, ``n`` 1: cache_key.py) is one key for every sample; a sampled one
(temperature above 0, or absent: the endpoint's default, 1.0 at OpenAI) is keyed per sample
index, so ``--samples 3`` after ``--samples 1`` pays for the two new samples only and two
samples of one run are never one draw. What reuse costs is fresh draws: a rerun meant to
measure sampling variance must say ``--no-cache`` (it sends everything; its replies still
become entries for later runs). Every hit is said (the progress line, the summary, the
``cached_from`` of its row), never silent. ``--cache-max-age 30d`` serves only replies
received within that age; ``--cache`` is the default said explicitly.

The store (ledger/cache_store.py) is opened by the session: every run's log caught up, then
kept current by a commit listener on this run's writer. A store that cannot be opened (a
read-only runs directory, a full disk) costs the cache, never the run: the session says so
and sends everything.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from llm_ledger.ledger.cache_store import CacheStore, Entry, RunWalk
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import CACHE_ENDPOINT, CachedFrom, Event, Response, Started
from llm_ledger.ledger.framing import Frame

from . import cache_key

__all__ = ["Cache", "Hit", "KEYER", "CACHE_ENDPOINT", "parse_age", "open_cache", "cache_for"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_age(text: str, option: str = "--cache-max-age") -> float:
    """``30d`` -> seconds. Units: s, m, h, d, w. Anything else is bad input (exit 2)."""
    found = _AGE.match(text or "")
    if not found or float(found.group(1)) <= 0:
        raise InputError(f"{option} {text!r}: expected a positive age like 45s, 90m, 12h, 30d or 2w")
    return float(found.group(1)) * _UNITS[found.group(2)]


class _Keyer:
    """cache_key.py, as the store's ``Keyer``."""

    def identity(self, config: dict[str, Any]) -> str:
        return cache_key.identity(config)

    entry = staticmethod(cache_key.describe)


KEYER = _Keyer()


class Hit(NamedTuple):
    response: Any  # the original ``response`` event (raw body included)
    provenance: CachedFrom
    entry: Entry


@dataclass
class Cache:
    """One session's cache: lookups (when enabled) and the listener keeping the store current."""

    store: CacheStore
    identity: str
    walk: RunWalk
    mode: bool | None = None  # RunConfig.cache: None (the default) and True every request, False none
    max_age: float | None = None
    hits: int = 0
    misses: int = 0
    notes: list[str] = field(default_factory=list)

    def key(self, body: dict[str, Any], sample: int) -> bytes:
        return cache_key.make_key(self.identity, body, sample)

    def lookup(self, body: dict[str, Any], sample: int, now: float | None = None) -> Hit | None:
        """The durable reply to this request, if some run's log holds one (and it is young
        enough); None otherwise, and always when the cache is off (``--no-cache``)."""
        if self.mode is False or self.store.broken is not None:
            return None
        entry = self.store.get(self.key(body, sample))
        if entry is None or (self.max_age is not None and entry.ts < (now or time.time()) - self.max_age):
            self.misses += 1
            return None
        event = self.store.read_event(entry)
        if event is None:
            self.misses += 1
            return None
        self.hits += 1
        return Hit(event, entry.provenance(), entry)

    def hit_events(self, hit: Hit, *, item_id: str, sample: int, turn: int, attempt: int, body: dict[str, Any],
                   final: bool, expected: Any = None, line: int = 0, metadata: dict[str, Any] | None = None) -> list[Event]:
        """The ``started`` and ``response`` that record a hit (the runner adds its ``parsed``)."""
        source = hit.response
        key = {"item_id": item_id, "sample": sample, "turn": turn, "attempt": attempt}
        return [
            Started(**key, request=body, endpoint=CACHE_ENDPOINT, expected=expected, line=line, metadata=metadata or {}),
            Response(**key, text=source.text, finish_reason=source.finish_reason, usage=source.usage, latency=0.0,
                     raw=getattr(source, "raw", None), endpoint=source.endpoint, final=final, cached_from=hit.provenance),
        ]

    def listener(self, frames: list[Frame]) -> None:
        """The writer's commit listener: this run's durable replies become entries at once
        (a later item with the same request, in this run or another, is a hit). A failure
        stops the store's updates for this session, never the run."""
        if self.store.broken is not None:
            return
        try:
            self.store.apply(self.walk, frames)
        except Exception as exc:  # derived state: the next session catches up from the logs
            self.store.broken = exc

    def close(self) -> None:
        self.store.close()


    @property
    def enabled(self) -> bool:
        return self.mode is not False


def open_cache(runs_dir: str, run_id: str, config: dict[str, Any], mode: bool | None, max_age: float | None) -> Cache:
    """Open the store of ``runs_dir`` caught up with every log (this run's included)."""
    store = CacheStore.open(runs_dir, KEYER)
    walk = store.walk_for(run_id)
    if not walk.identity:
        walk.config, walk.identity = dict(config), KEYER.identity(config)
    return Cache(store, KEYER.identity(config), walk, mode, max_age)


def cache_for(run_dir: str, run_id: str, config: Any) -> tuple[Cache | None, str]:
    """The cache a run of ``config`` in ``run_dir`` looks requests up in (the session, and the
    dry run's estimate), and "" -- or None and why it could not be opened. A local shard
    (runs/<run>/shards/<k>) uses the runs directory's store; a Ray shard none (LMDB needs a
    local disk): None and "". A store that cannot be opened costs the cache, never the run."""
    import os

    runs_dir = os.path.dirname(os.path.abspath(run_dir))
    if config.shard:
        if not config.workers.startswith("local"):
            return None, ""
        runs_dir = os.path.dirname(os.path.dirname(runs_dir))
    try:
        return open_cache(runs_dir, run_id, config.to_dict(), config.cache, config.cache_max_age), ""
    except Exception as exc:  # lmdb.Error, OSError, a log another process damaged ...: derived state
        return None, f"{type(exc).__name__}: {exc}"
