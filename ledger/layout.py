"""Where a run's files live. One place, so no module spells a path twice.

    <runs_dir>/<run_id>/events.log        the log (the truth); its writer holds a flock on it
    <runs_dir>/<run_id>/events.log.lock   a note naming the writer's pid (lock.py: not the lock)
    <runs_dir>/<run_id>/events.log.broken bytes cut off by recovery or repair
    <runs_dir>/<run_id>/index.lmdb/       the derived LMDB index
    <runs_dir>/<run_id>/responses.jsonl   projections (see the projections package)
    <runs_dir>/<run_id>/conversations/
    <runs_dir>/<run_id>/summary.json
    <runs_dir>/<run_id>/shards/<k>/       a sharded run's shard k: a whole run directory of its own
    <runs_dir>/<run_id>/shards/merged.json what the top level's merged log was made from
    <runs_dir>/<run_id>/shards/own.log    events the top level appended itself (reviews,
                                          re-parses): every merge keeps them (own_log.py)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import InputError, RunNotFoundError

__all__ = ["RunPaths", "find_run", "validate_run_id"]

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class RunPaths:
    dir: str

    @property
    def run_id(self) -> str:
        return os.path.basename(os.path.normpath(self.dir))

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "events.log")

    @property
    def lock(self) -> str:
        return self.log + ".lock"

    @property
    def index(self) -> str:
        return os.path.join(self.dir, "index.lmdb")

    @property
    def responses(self) -> str:
        return os.path.join(self.dir, "responses.jsonl")

    @property
    def conversations(self) -> str:
        return os.path.join(self.dir, "conversations")

    @property
    def summary(self) -> str:
        return os.path.join(self.dir, "summary.json")

    @property
    def checkpoint(self) -> str:
        return os.path.join(self.dir, "projections.ckpt")

    @property
    def shards(self) -> str:
        return os.path.join(self.dir, "shards")

    def shard(self, index: int) -> "RunPaths":
        return RunPaths(os.path.join(self.shards, str(index)))

    @property
    def merged(self) -> str:
        return os.path.join(self.shards, "merged.json")

    @property
    def own_log(self) -> str:
        return os.path.join(self.shards, "own.log")


# names the runs directory keeps for itself (the cross-run cache: ledger/cache_store.py)
RESERVED = frozenset({"cache.lmdb", "cache.lmdb-lock", "cache.lock", "cache.cleared"})


def validate_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    if run_id in RESERVED or run_id.startswith("cache.lmdb"):
        raise InputError(f"run id {run_id!r}: the runs directory keeps that name for the cross-run cache; choose another")
    return run_id


def find_run(runs_dir: str, run: str) -> RunPaths:
    """A run named by id under ``runs_dir``, or by the path of its directory."""
    for candidate in (os.path.join(runs_dir, run), run):
        if os.path.isfile(os.path.join(candidate, "events.log")):
            return RunPaths(candidate)
    raise RunNotFoundError(f"no run {run!r} under {runs_dir} (no events.log there)")
