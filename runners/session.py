"""One process's session on a run: validate, open, plan, execute, close.

Everything that can be wrong with the input is checked in ``prepare`` *before* a byte is
written: the parser compiles, the dataset validates (every record), the API key exists for
a remote endpoint, an existing run's dataset still has its recorded sha256. Then ``Session``
opens the log (taking the lock), the index and the projector, appends ``session_started``
(and ``run_started`` for a new run), plans the unfinished work from the index, runs the
engine, appends ``session_ended`` and closes everything in order: writer (all queued events
durable), then projections (their last summary and checkpoint).

Resume plan per (item, sample), from the index: done -> skipped; finally failed ->
skipped with ``skip_failed``, else retried; in flight -> re-sent from the turn after the
last completed one, with the conversation rebuilt from the replies in the log; never
started -> sent.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from llm_ledger.ledger import __version__
from llm_ledger.ledger.errors import IndexError_, InputError, LedgerError, ProjectionError
from llm_ledger.ledger.events import RunStarted, SessionEnded, SessionStarted
from llm_ledger.ledger.fsio import fsync_dir, os_error
from llm_ledger.ledger.index import DONE, FAILED, IN_FLIGHT, RunIndex
from llm_ledger.ledger.layout import RunPaths, validate_run_id
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.conversations import Conversation
from llm_ledger.projections.fold import key_of
from llm_ledger.runners.parsers import Parser, make_parser
from llm_ledger.runners.prices import lookup
from llm_ledger.projections.projector import Projector

from .breaker import Breaker
from .client import make_clients
from .config import HOW_FIELDS, SIMULATOR_MODEL, RunConfig, check_config, compare
from .dataset import DatasetInfo, Item, iter_items, scan
from .endpoints import Endpoint, Pool
from .engine import Engine, Progress, Work
from .limits import AdaptiveLimit, RateLimits
from .preflight import check_endpoints, list_models
from .simulator import SimConfig, Simulator

PROJECT_EVERY = 0.05  # seconds the projector thread lets commit groups gather before a batch

__all__ = ["run_prepared", "Prepared", "Found", "prepare", "prepare_resume", "Session", "new_run_id", "plan_only"]


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


@dataclass
class Found:
    """What a resume found before sending anything."""

    done: int = 0
    failed: int = 0
    in_flight: int = 0
    in_flight_tokens: int = 0
    never_started: int = 0
    to_send: int = 0


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
    notes = _seed_notes(config, info.items)
    api_key = "" if dry_run else _api_key(config)
    notes += _resolve_model(config, api_key, dry_run)
    _resolve_prices(config)
    if config.preflight and not config.embedded and not dry_run:
        check_endpoints(config.endpoints(), config.model, api_key, config.timeout)
    return Prepared(paths, config, info, parser, api_key, resume=False, skip_failed=skip_failed, notes=notes)


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
    conflicts, overrides = compare(RunConfig.from_dict(started.config), config, typed)
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
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{runs_dir}: cannot create runs here ({existing} is not writable)")


def prepare_resume(paths: RunPaths, skip_failed: bool = False, overrides: dict[str, Any] | None = None, *,
                   dry_run: bool = False) -> Prepared:
    """Check a resume. ``overrides``: HOW_FIELDS settings for this session only (recorded in its
    ``session_started``); the run's other settings are fixed by ``run_started``."""
    started = _run_started(paths)
    config = RunConfig.from_dict(started.config)
    changed = _overrides(config, overrides or {}, paths.run_id)
    if changed:
        config = msgspec.structs.replace(config, **changed)
        _check_numbers(config)
    info = scan(started.dataset, config.template)
    if info.sha256 != started.dataset_sha256:
        raise InputError(f"{started.dataset}: the dataset changed since the run started (sha256 differs); "
                         "restore it or start a new run")
    parser = make_parser(config.parser)
    api_key = "" if dry_run else _api_key(config)
    if ("base_url" in changed or "base_urls" in changed) and config.preflight and not dry_run:
        check_endpoints(config.endpoints(), config.model, api_key, config.timeout)
    return Prepared(paths, config, info, parser, api_key, resume=True, skip_failed=skip_failed, overrides=changed)


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
    """Fix the price in force now into the config, so summaries never depend on the table."""
    if config.price_in is None and config.price_out is None:
        known = lookup(config.model)
        if known is not None:
            config.price_in, config.price_out = known


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


class Session:
    """An open run: log writer, index and projector wired together."""

    def __init__(self, prepared: Prepared) -> None:
        """Open the run. A new run's ``run_started`` is the first thing made durable after
        the log is created, so that a start-up stopped by anything later (a full disk at the
        index or the projections) leaves a run that `ledger resume` continues; one stopped
        before it leaves nothing behind (no empty log for resume to reject). For an existing
        run, the index proves the log sound up to its end before anything is appended
        (index.py): a log damaged in the middle is refused, never appended to."""
        self.prepared = prepared
        self.paths = prepared.paths
        created = self._make_run_dir()
        try:
            self.writer = LogWriter.open(self.paths.log, lambda: RunIndex.durable_end(self.paths.index))
        except BaseException:
            if created:  # nothing of the run exists: leave nothing behind
                shutil.rmtree(self.paths.dir, ignore_errors=True)
            raise
        try:
            if not prepared.resume:
                self._append_run_started()
            self.index = RunIndex.open_for_log(self.paths.index, self.paths.log)
            self._opened_end = self.writer.end  # what the plan must be made from
            self.projector = _open_projector(self.paths)
        except BaseException:
            if getattr(self, "index", None) is not None:
                self.index.close()
            if not prepared.resume:  # while the lock is still held: no other writer in between
                _forget_unstarted(self.paths, created)
            self.writer.close()
            raise
        self._frames: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.index_error: Exception | None = None
        self.writer.add_listener(self._apply_to_index)
        self.writer.add_listener(self._frames.put)
        self._projecting = threading.Thread(target=self._project, name="ledger-projector", daemon=True)
        self._projecting.start()
        self.engine: Engine | None = None
        self.found = Found()
        self.projection_error: Exception | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _make_run_dir(self) -> bool:
        """Create the run's directory durably; True if this session created it."""
        if os.path.isdir(self.paths.dir):
            return False
        try:
            os.makedirs(self.paths.dir)
            fsync_dir(os.path.dirname(os.path.abspath(self.paths.dir)))  # the run's own entry, durably
        except OSError as exc:
            raise os_error(self.paths.dir, exc, "cannot create the run directory") from exc
        return True

    def _append_run_started(self) -> None:
        prepared, info = self.prepared, self.prepared.dataset
        self.writer.append(RunStarted(
            run_id=self.paths.run_id, config=prepared.config.to_dict(), dataset=info.path,
            dataset_sha256=info.sha256, items=_planned_items(info.items, prepared.config.limit), version=__version__,
        ))

    def _apply_to_index(self, frames: Any) -> None:
        """The index's commit listener. An index that cannot apply a group (a full disk ...)
        stops the run with its error: it must never fall silently behind the log (the next
        session catches it up or rebuilds it)."""
        try:
            self.index.apply(frames)
        except Exception as exc:
            if self.index_error is None:
                self.index_error = exc
                self._stop_engine(f"error: {exc}")
            raise

    def _project(self) -> None:
        """The projector thread. It wakes at most every ``PROJECT_EVERY`` seconds and applies
        every commit group queued meanwhile at once: one wake-up, one ``responses.jsonl``
        write and one write per conversation file per batch instead of per group (waking per
        group cost more CPU in thread switches than the fold itself).

        An error stops the run: outputs that silently stop growing are worse than a run that
        stops and says why (the log has everything; a resume or `ledger replay --rebuild`
        redoes the projections)."""
        done = False
        while not done:
            first = self._frames.get()
            if first is None:
                break
            time.sleep(PROJECT_EVERY)
            frames = list(first)
            while True:
                try:
                    more = self._frames.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                frames += more
            if self.projection_error is not None:
                continue
            try:
                self.projector.apply_frames(frames)
            except Exception as exc:
                self.projection_error = exc
                self.projector.broken = True
                self._stop_engine(f"error: projections failed: {exc}")

    def _stop_engine(self, reason: str) -> None:
        """Stop the engine from another thread, if it still runs (after ``execute`` its loop
        is closed: the error is reported by ``close``)."""
        loop = self._loop
        if self.engine is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(self.engine.stop, reason)
            except RuntimeError:  # the loop closed meanwhile
                pass

    # -- planning ------------------------------------------------------------------------

    def begin(self) -> None:
        """Mark this process's session in the log (a new run's run_started is already there)."""
        self.writer.append(SessionStarted(pid=os.getpid(), host=socket.gethostname(), version=__version__,
                                          reason="resume" if self.prepared.resume else "new",
                                          overrides=self.prepared.overrides))

    def plan(self) -> list[Work] | Iterator[Work]:
        """The works to send. For a resume, counted up front so that it can be reported.
        Refuses (IndexError_) to plan from an index that did not apply the whole log as it
        was when the session opened: a lagging index would re-send durable replies."""
        self._check_index_level()
        works = self._works()
        if not self.prepared.resume:
            return works
        planned = list(works)
        self.found.to_send = len(planned)
        return planned

    def _check_index_level(self) -> None:
        applied = self.index.applied()[0]
        if self.index_error is not None or self.index.stale is not None or applied < self._opened_end:
            cause = self.index_error or self.index.stale or f"it applied the log up to offset {applied}"
            raise IndexError_(f"{self.paths.index}: index is behind the log ({cause}); not planning from it: "
                              f"run `ledger resume` again to rebuild it")

    def _works(self) -> Iterator[Work]:
        config, found = self.prepared.config, self.found
        chosen = _subset(self.prepared.dataset.items, config.limit, config.seed)
        items = iter_items(self.prepared.dataset.path, config.template)
        for n, item in enumerate(items):
            if config.limit is not None and chosen is None and n >= config.limit:
                return
            if chosen is not None and n not in chosen:
                continue
            for sample in range(config.samples):
                state = self.index.get(item.id, sample)
                if state is None:
                    found.never_started += 1
                    yield Work(item, sample)
                elif state.state == DONE:
                    found.done += 1
                elif state.state == FAILED:
                    found.failed += 1
                    if not self.prepared.skip_failed:
                        yield self._continue(item, sample, state.attempts)
                else:
                    found.in_flight += state.state == IN_FLIGHT
                    found.in_flight_tokens += _estimate_tokens(item)
                    yield self._continue(item, sample, state.attempts)

    def _continue(self, item: Item, sample: int, attempts: int) -> Work:
        """Continue a multi-turn item after its last completed turn, history from the log:
        the projector's conversation state is the log's fold, either from offset zero or from
        a checkpoint that proved itself (CRC, log position) when it was opened, never from
        unchecked bytes."""
        key = key_of(item.id, sample)
        replies = _last_reply_per_turn(self.projector.conversation(key))
        done_turns = 0
        while done_turns in replies and done_turns < len(item.turns) - 1:
            done_turns += 1
        if not done_turns:
            return Work(item, sample, attempts=attempts)
        system = [{"role": "system", "content": self.prepared.config.system}] if self.prepared.config.system else []
        history = system + [m for t in range(done_turns) for m in (*item.turns[t], {"role": "assistant", "content": replies[t]})]
        return Work(item, sample, start_turn=done_turns, history=history, attempts=attempts)

    # -- running -------------------------------------------------------------------------

    def execute(self, works: Iterator[Work] | list[Work], on_tick: Callable[[Progress], None] | None = None) -> str:
        """Run the works; returns the session's end reason."""
        try:
            return asyncio.run(self._execute(works, on_tick))
        finally:
            self._loop = None

    async def _execute(self, works: Any, on_tick: Callable[[Progress], None] | None) -> str:
        config = self.prepared.config
        self._loop = asyncio.get_running_loop()
        simulator = Simulator(SimConfig(**config.simulator)).start() if config.embedded else None
        urls = [simulator.base_url] if simulator else config.endpoints()
        names = {simulator.base_url: "embedded-simulator"} if simulator else {u: u for u in urls}
        pool = Pool([Endpoint(u, make_clients(u, self.prepared.api_key, config.timeout, config.concurrency),
                              AdaptiveLimit(config.concurrency)) for u in urls], config.give_up_after)
        self.engine = Engine(config, self.writer, pool, self.prepared.parser, _secrets(self.prepared.api_key, config),
                             RateLimits(config.rpm, config.tpm), names=names)
        for endpoint in pool.endpoints:
            endpoint.breaker = Breaker(Pool.watch(endpoint.url, self.engine.breaker_changed))
        self.engine.progress.total = self.found.to_send if self.prepared.resume else _planned_items(
            self.prepared.dataset.items, config.limit) * config.samples
        stop = _install_interrupts(self.engine)
        ticker = asyncio.create_task(_tick(self.engine.progress, on_tick)) if on_tick else None
        try:
            await self.engine.run(iter(works))
        finally:
            if ticker:
                ticker.cancel()
                on_tick(self.engine.progress)
            stop()
            for endpoint in pool.endpoints:
                for client in endpoint.clients:
                    await client.close()
            if simulator:
                simulator.stop()
        progress = self.engine.progress
        if progress.stop_reason.startswith("error"):
            return "error"
        if progress.stop_reason.startswith("endpoint down"):
            return "interrupted"  # an outage: resumable like an interrupt (exit 75 says why)
        return "interrupted" if progress.stopping else "completed"

    def exit_code(self, reason: str, summary: dict[str, Any]) -> int:
        """0 all done; 1 failures, or work left pending by a completed session; 2 never here
        (bad input stops before a session); 75 endpoints down; 130 interrupted."""
        stop_reason = self.engine.progress.stop_reason if self.engine else ""
        if reason == "error" or self.projection_error is not None:
            return 1
        if stop_reason.startswith("endpoint down"):
            return 75
        if reason == "interrupted":
            return 130
        counts = summary.get("counts", {})
        return 1 if counts.get("failed") or counts.get("pending") else 0

    def close(self, reason: str) -> None:
        """End the session: make everything durable, finish projections, release the lock.

        A writer that died of a write error gets no session_ended (the log is as the error
        left it; the next session recovers it) and its error is the one raised. Otherwise one
        error is raised, the most telling first: projections, index, then anything met here
        (each one line, saying what to do)."""
        error: BaseException | None = None
        died_before = self.writer.dead is not None  # its error is already on its way up
        try:
            if not died_before:
                failed = self.projection_error or self.index_error
                self.writer.append(SessionEnded(reason="error" if failed else reason))
        except LedgerError as exc:
            error = exc
        finally:
            self.writer.close()
            self._frames.put(None)
            self._projecting.join()
            try:
                self.projector.close()
            except OSError as exc:
                error = error or ProjectionError(f"projections stopped: {_described(exc, self.paths)}; "
                                                 f"the log is complete: fix the cause, then `ledger resume`")
            self.index.close()
        if died_before:
            raise self.writer.dead  # type: ignore[misc]  # the same error the producers got
        if self.projection_error is not None:
            raise ProjectionError(f"projections stopped: {_described(self.projection_error, self.paths)}; the log is "
                                  f"complete: fix the cause, then `ledger resume` or `ledger replay --rebuild`") from self.projection_error
        if self.index_error is not None:
            raise self.index_error
        if error is not None:
            raise error


def _described(exc: BaseException, paths: RunPaths) -> str:
    """An OSError as "path: what: cause". A write to an open file carries no file name: then
    the projections' directory whose file system is full is named (else the run's)."""
    if not isinstance(exc, OSError):
        return str(exc)
    path = exc.filename or next((d for d in (paths.conversations, paths.dir) if _full(d)), paths.dir)
    return str(os_error(path, exc))


def _full(directory: str) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 << 10


def _open_projector(paths: RunPaths) -> Projector:
    try:
        return Projector.open(paths)
    except OSError as exc:  # a full disk under the projections at start-up
        raise ProjectionError(f"projections cannot be opened: {_described(exc, paths)}; "
                              f"the log is complete: fix the cause, then `ledger resume`") from exc


def _forget_unstarted(paths: RunPaths, created: bool) -> None:
    """A new run whose run_started never became durable holds nothing: remove what this
    session made, so the run id can simply be run again (resume could not: no config)."""
    try:
        if next(iter_events(paths.log), None) is not None:
            return
    except LedgerError:
        return
    if created:
        shutil.rmtree(paths.dir, ignore_errors=True)
        return
    for path in (paths.log, paths.lock):
        try:
            os.unlink(path)
        except OSError:
            pass


def plan_only(prepared: Prepared) -> dict[str, Any]:
    """--dry-run: expand every request into plan.jsonl; send nothing, log nothing."""
    from .plan import dry_run

    config = prepared.config
    return dry_run(prepared.dataset.path, config, prepared.paths.dir, _subset(prepared.dataset.items, config.limit, config.seed))


def _subset(items: int, limit: int | None, seed: int | None) -> set[int] | None:
    """With --limit and --seed: the same random N item positions on every resume."""
    if limit is None or seed is None or limit >= items:
        return None
    import random

    return set(random.Random(seed).sample(range(items), limit))


def run_prepared(prepared: Prepared, *, on_planned: Callable[[Session], None] | None = None,
                 on_tick: Callable[[Progress], None] | None = None) -> tuple[Session, str]:
    """A whole session: open, plan, send, close (always, whatever happens in between).
    Returns the closed session and its end reason (completed / interrupted / error)."""
    session = Session(prepared)
    reason = "error"
    try:
        session.begin()
        works = session.plan()
        if on_planned is not None:
            on_planned(session)
        reason = session.execute(works, on_tick)
    finally:
        session.close(reason)
    return session, reason


def _planned_items(items: int, limit: int | None) -> int:
    return min(items, limit) if limit else items


def _estimate_tokens(item: Item) -> int:
    return sum(len(str(m.get("content", ""))) for turn in item.turns for m in turn) // 4 + 1


def _last_reply_per_turn(conversation: Conversation | None) -> dict[int, str]:
    return {t.turn: t.response for t in conversation.turns} if conversation else {}


async def _tick(progress: Progress, on_tick: Callable[[Progress], None]) -> None:
    while True:
        on_tick(progress)
        await asyncio.sleep(0.1)


def _install_interrupts(engine: Engine) -> Callable[[], None]:
    """First Ctrl-C (or SIGTERM): stop scheduling; what waits is cancelled, requests in flight
    get ``GRACE`` seconds. Second: cancel everything now. Either way the session then closes
    normally (the log ends with ``session_ended``), and the CLI exits 130."""
    loop = asyncio.get_running_loop()

    def handler() -> None:
        if engine.progress.stopping:
            engine.abort()
        else:
            engine.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove


_PLACEHOLDER_KEYS = frozenset({"sk-simulator", "EMPTY"})  # not secrets: redacting them would edit replies


def _secrets(api_key: str, config: RunConfig) -> tuple[str, ...]:
    return () if config.embedded or api_key in _PLACEHOLDER_KEYS else (api_key,)
