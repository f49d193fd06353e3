"""Preparation: everything that can be wrong with the input is checked before a byte is
written -- the parser compiles, the dataset validates (every record), the runner and the
transport exist, the API key exists for a remote endpoint, the endpoint lists the model,
an existing run's dataset still has its recorded sha256 (then it is not validated again:
it is the dataset the run validated) and what was typed agrees with the run. The result,
``Prepared``, is what a session opens.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import RunStarted, SessionStarted
from llm_ledger.ledger.layout import RunPaths, validate_run_id
from llm_ledger.ledger.reader import iter_events

from .config import HOW_FIELDS, SIMULATOR_MODEL, RunConfig, check_config, compare
from .dataset import DatasetInfo, file_sha256, file_size, known, scan
from .parsers import Parser, make_parser
from .preflight import check_endpoints, list_models
from .prices import lookup
from .registry import check_kinds

__all__ = ["Prepared", "prepare", "prepare_resume", "new_run_id", "secrets_of"]


@dataclass
class Prepared:
    paths: RunPaths
    config: RunConfig
    dataset: DatasetInfo
    parser: Parser
    api_key: str
    resume: bool
    skip_failed: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # HOW_FIELDS this session changes
    notes: list[str] = field(default_factory=list)  # what the user should know before it starts


def new_run_id() -> str:
    import datetime
    import secrets

    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def prepare(dataset: str, config: RunConfig, runs_dir: str, run_id: str | None = None, skip_failed: bool = False, *,
            typed: Collection[str] | None = None, dry_run: bool = False) -> Prepared:
    """Check a new run (or `run --run-id EXISTING`, which resumes) before writing anything.

    ``typed``: the settings the user gave (the others are defaults); for an existing run,
    only those are compared with the run (``None``: all). ``dry_run``: nothing will be sent,
    so neither an API key nor the endpoint is needed."""
    if run_id is not None:
        _check_run_id(run_id)
    _check_runs_dir(runs_dir, run_id)
    if run_id and _has_events(os.path.join(runs_dir, run_id, "events.log")):
        if dry_run:  # it would price the whole dataset and write into a run another process may hold
            raise InputError(f"--dry-run plans a new run; run {run_id} exists: `ledger status {run_id}` says what "
                             "is left, and `ledger resume` sends only that")
        return _rerun(dataset, config, RunPaths(os.path.join(runs_dir, run_id)), typed, skip_failed, dry_run)
    paths = RunPaths(os.path.join(runs_dir, validate_run_id(run_id or new_run_id())))
    _check_writable(runs_dir)
    _check_numbers(config)
    parser = make_parser(config.parser)
    info = scan(dataset, config.template)
    notes = _seed_notes(config, info.items) + _batch_notes(config)
    api_key = "" if dry_run else _api_key(config)
    notes += _resolve_model(config, api_key, dry_run)
    _resolve_prices(config)
    if config.preflight and not config.embedded and not dry_run:
        check_endpoints(config.endpoints(), config.model, api_key, config.timeout)
    return Prepared(paths, config, info, parser, api_key, resume=False, skip_failed=skip_failed, notes=notes)


OPENAI_BATCH_REQUESTS = 50_000  # requests per batch input file at OpenAI (Azure OpenAI allows more)


def _batch_notes(config: RunConfig) -> list[str]:
    """A file limit above OpenAI's is the user's to set (other providers allow more), never unsaid."""
    if config.runner == "batch" and config.batch_max_requests > OPENAI_BATCH_REQUESTS:
        return [f"--batch-max-requests {config.batch_max_requests:,} is above OpenAI's {OPENAI_BATCH_REQUESTS:,} "
                "requests per batch file: a provider that keeps that limit refuses the larger files (failed "
                "validation: their requests are sent again in new files, then failed after --retries)"]
    return []


def _check_run_id(run_id: str) -> None:
    """The whole id must match: ``validate_run_id``'s ``$`` also matches before a trailing
    newline, which let ``"abc\\n"`` through as a directory whose name ends in a newline."""
    if "\n" in run_id:
        raise InputError(f"run id {run_id[:80]!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    validate_run_id(run_id)


def _check_runs_dir(runs_dir: str, run_id: str | None) -> None:
    """The runs directory and the run's directory are directories or do not exist yet: a file
    in their place or above them would fail deep inside the first write, as a traceback."""
    targets = [runs_dir] + ([os.path.join(runs_dir, run_id)] if run_id else [])
    for target in targets:
        existing = os.path.abspath(target)
        while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            where = "" if existing == os.path.abspath(target) else f" ({existing} is not a directory)"
            raise InputError(f"{target}: cannot hold runs: not a directory{where}")
    log = os.path.join(runs_dir, run_id, "events.log") if run_id else ""
    if log and os.path.lexists(log) and not os.path.isfile(log):
        raise InputError(f"{log}: not a file")


def _rerun(dataset: str, config: RunConfig, paths: RunPaths, typed: Collection[str] | None, skip_failed: bool,
           dry_run: bool) -> Prepared:
    """`ledger run --run-id EXISTING`: resume it, if what was typed agrees with the run. A
    setting that defines the run (dataset, model, parser, samples ...) differing is refused,
    naming each; the HOW_FIELDS settings typed apply to this session, as with `ledger resume`."""
    started = _run_started(paths)
    given = msgspec.structs.replace(config)
    _resolve_prices(given)  # as the run stored them (a batch run: the batch price): the same command agrees
    conflicts, overrides = compare(RunConfig.from_dict(started.config), given, typed)
    if os.path.realpath(dataset) != os.path.realpath(started.dataset):
        conflicts.insert(0, f"dataset: {started.dataset} (run) vs {dataset} (given)")
    if conflicts:
        raise InputError(f"run {paths.run_id} exists with other settings: {'; '.join(conflicts)}. Nothing was sent; "
                         f"name a new run with another --run-id, or continue this one with `ledger resume {paths.run_id}`")
    return prepare_resume(paths, skip_failed, overrides, dry_run=dry_run)


def _seed_notes(config: RunConfig, items: int) -> list[str]:
    if config.seed is None:
        return []
    if config.limit is None:
        return [f"--seed {config.seed} has no effect without --limit: every item is sent, in file order"]
    if config.limit >= items:
        return [f"--seed {config.seed} has no effect: --limit {config.limit} covers all {items} items"]
    return []


def _resolve_model(config: RunConfig, api_key: str, dry_run: bool) -> list[str]:
    """No --model: the simulator's model, or the one model a --base-url lists (said so).
    Never a made-up name sent to a real endpoint."""
    if config.model:
        return []
    if config.embedded:
        config.model = SIMULATOR_MODEL
        return []
    url = config.endpoints()[0]
    if dry_run or not config.preflight:
        why = "a dry run asks no endpoint" if dry_run else "with --no-preflight it is not looked up"
        raise InputError(f"--base-url {url} needs --model ({why})")
    ids = list_models(url, api_key, config.timeout)
    if len(ids) != 1:
        shown = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "") if ids else "none"
        raise InputError(f"--base-url {url} needs --model: the endpoint lists {len(ids)} models ({shown})")
    config.model = ids[0]
    return [f"model {ids[0]}: the only model {url} lists (no --model given)"]


def _has_events(log: str) -> bool:
    """A log with at least one event. A run killed before its first event was durable left
    an empty log: it is started afresh, as if it never existed."""
    return os.path.isfile(log) and next(iter_events(log), None) is not None


def _check_writable(runs_dir: str) -> None:
    existing = runs_dir
    while not os.path.isdir(existing):
        parent = os.path.dirname(os.path.abspath(existing))
        if parent == os.path.abspath(existing):
            break
        existing = parent
    if not fs.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{runs_dir}: cannot create runs here ({existing} is not writable)")


def prepare_resume(paths: RunPaths, skip_failed: bool = False, overrides: dict[str, Any] | None = None, *,
                   dry_run: bool = False) -> Prepared:
    """Check a resume. ``overrides``: HOW_FIELDS settings for this session only (recorded in its
    ``session_started``); the run's other settings are fixed by ``run_started``."""
    started = _run_started(paths)
    if started.source == "imported":
        raise InputError(f"run {paths.run_id} was imported from {started.dataset} (`ledger import`): it has nothing to send or resume")
    config = RunConfig.from_dict(started.config)
    check_kinds(config.runner, config.transport, config.base_url)  # a later version's runner: said, not a KeyError
    changed = _overrides(config, overrides or {}, paths.run_id)
    if config.runner == "batch" and ("base_url" in changed or "base_urls" in changed):
        _check_batches_stay(paths, started)
    if changed:
        config = msgspec.structs.replace(config, **changed)
        _check_numbers(config)
    info = _unchanged(started) or scan(started.dataset, config.template)
    if info.sha256 != started.dataset_sha256:
        raise InputError(f"{started.dataset}: the dataset changed since the run started (sha256 differs); "
                         "restore it or start a new run")
    parser = make_parser(config.parser)
    api_key = "" if dry_run else _api_key(config)
    if ("base_url" in changed or "base_urls" in changed) and config.preflight and not dry_run:
        check_endpoints(config.endpoints(), config.model, api_key, config.timeout)
    return Prepared(paths, config, info, parser, api_key, resume=True, skip_failed=skip_failed, overrides=changed)


def _check_batches_stay(paths: RunPaths, started: RunStarted) -> None:
    """A batch run resumed with another --base-url: refused while a chunk may be at the old
    endpoint (uploaded: its batch may have been created there; submitted: it runs there).
    The new endpoint knows neither its file nor its batch: its requests would be failed, then
    bought again, while the old endpoint completes and bills them. A chunk given up by
    `ledger cancel` no longer holds the run there."""
    from llm_ledger.projections.batches import fold

    url = started.config.get("base_url") or ""
    for event in iter_events(paths.log):
        if isinstance(event, SessionStarted) and event.overrides.get("base_url"):
            url = event.overrides["base_url"]
    held = [c.chunk for c in fold(iter_events(paths.log)).chunks.values()
            if c.status not in ("done", "planned") and not c.cancel_requested]
    if held:
        raise InputError(f"run {paths.run_id} has {len(held)} batch chunk(s) uploaded or running at {url}: resume with "
                         f"that endpoint to collect them (or `ledger cancel {paths.run_id}` first, then resume with "
                         "the new one); nothing was sent")


def _unchanged(started: RunStarted) -> DatasetInfo | None:
    """The run's dataset as validated when the run started, if it still has the same size and
    sha256: then it is not validated again (a million records cost seconds; hashing them a
    tenth of one). None for anything else -- a log from before the count was recorded, a
    changed or missing file -- which is scanned and compared as always (the same errors).
    The modification time is not trusted either way: a copy changes it, an edit may not."""
    if started.dataset_items <= 0:
        return None
    try:
        if file_size(started.dataset) != started.dataset_size:
            return None
        digest = file_sha256(started.dataset)
    except OSError:
        return None
    if digest != started.dataset_sha256:
        return None
    return known(started.dataset, digest, started.dataset_items, started.dataset_size)


def _run_started(paths: RunPaths) -> RunStarted:
    started = next(iter_events(paths.log), None)
    if not isinstance(started, RunStarted):
        raise InputError(f"{paths.log}: the log does not begin with run_started")
    return started


def _overrides(config: RunConfig, overrides: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The overrides that change something; only HOW_FIELDS, and never away from the simulator."""
    wrong = sorted(set(overrides) - set(HOW_FIELDS))
    if wrong:
        raise InputError(f"a resume cannot change {', '.join(wrong)}: it defines what run {run_id} sends")
    changed = {k: v for k, v in overrides.items() if getattr(config, k) != v}
    if config.embedded and (changed.get("base_url") or changed.get("base_urls")):
        raise InputError(f"run {run_id} uses the built-in simulator (model {config.model}); "
                         "--base-url cannot send it to another endpoint")
    return changed


def _resolve_prices(config: RunConfig) -> None:
    """Fix the price in force now into the config, so summaries never depend on the table.
    A Batch API run (runner ``batch``) stores the batch price: the per-request price (the
    table's, or --price-in/--price-out) less ``batch_discount`` (0.5: half), applied here once,
    so the dry run's estimate, the progress line and the summary all show what is paid."""
    if config.price_in is None and config.price_out is None:
        known = lookup(config.model)
        if known is not None:
            config.price_in, config.price_out = known
    if config.runner == "batch":
        share = 1.0 - config.batch_discount
        config.price_in = None if config.price_in is None else round(config.price_in * share, 9)
        config.price_out = None if config.price_out is None else round(config.price_out * share, 9)


def _check_numbers(config: RunConfig) -> None:
    """Every number and the embedded simulator's settings, before anything is written."""
    check_config(config)
    for url in config.endpoints():
        _check_url(url)


def _check_url(url: str) -> None:
    """A URL is stored in the run's config and in events: it must carry no secret."""
    from urllib.parse import parse_qs, urlparse

    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--base-url {url!r}: expected http(s)://host[:port]/path")
    secret_query = {k for k in parse_qs(parts.query) if any(w in k.lower() for w in ("key", "token", "secret", "sig"))}
    if parts.username or parts.password or secret_query:
        raise InputError("--base-url must not carry credentials (they would be stored in the run); "
                         "put the key in an environment variable named by --api-key-env")


def _api_key(config: RunConfig) -> str:
    if config.embedded:
        return "sk-simulator"
    key = os.environ.get(config.api_key_env, "")
    if key:
        return key
    if _is_loopback(config.base_url):
        return "EMPTY"  # local servers (vLLM, Ollama, llama.cpp, `ledger simulate`) need none
    raise InputError(f"no API key: environment variable {config.api_key_env} is not set (see --api-key-env)")


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


_PLACEHOLDER_KEYS = frozenset({"sk-simulator", "EMPTY"})  # not secrets: redacting them would edit replies


def secrets_of(api_key: str, config: RunConfig) -> tuple[str, ...]:
    return () if config.embedded or api_key in _PLACEHOLDER_KEYS else (api_key,)
