"""One process's session on a run: open, plan, execute, close.

``Session`` opens the log (taking the lock), the index and the projector, appends
``session_started`` (and ``run_started`` for a new run), plans the unfinished work from the
index (plan.py), has the run's runner work it (registry.RUNNERS, with the run's transport),
appends ``session_ended`` and closes everything in order: writer (all queued events
durable), then projections (their last summary and checkpoint).

Library code: it returns an end reason (completed / interrupted / error) and never exits
nor touches signals. The CLI installs the Ctrl-C handlers through ``on_running`` and maps
the reason to an exit code (cli/interrupts.py, cli/exit_codes.py). Preparation and
validation before any of this: prepare.py.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from llm_ledger.ledger import __version__, fs
from llm_ledger.ledger.errors import IndexStateError, LedgerError, ProjectionError
from llm_ledger.ledger.events import RunStarted, SessionEnded, SessionStarted
from llm_ledger.ledger.fsio import fsync_dir, os_error
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.shard_keys import planned_keys
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.projections.projector import Projector

from .engine import SHOWN_INTERNAL
from .limits import SharedLimits
from .plan import Found, planned_items, resume_found, resume_works
from .prepare import Prepared, secrets_of
from .registry import RUNNERS, TRANSPORTS
from .runner import Progress, RunContext, Runner, Work

# Threads that create the live conversation files beside the projector. None: measured on
# ext4 (bench/run.py), two such threads cost more kernel CPU per file (they contend for the
# directory) than they saved in waiting.
LIVE_WRITERS = 0
PROJECT_EVERY = 0.05  # seconds the projector thread lets commit groups gather before a batch

__all__ = ["run_prepared", "Session"]


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
                fs.rmtree(self.paths.dir, ignore_errors=True)
            raise
        try:
            if not prepared.resume:
                self._append_run_started()
            self.index = RunIndex.open_for_log(self.paths.index, self.paths.log)
            self._opened_end = self.writer.end  # what the plan must be made from
            self.projector = _open_projector(self.paths)
            self.notes: list[str] = []  # what the user should know at the end (a cache that could not open)
            self.cache = self._open_cache()
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
        if self.cache is not None and not prepared.config.shard:
            self.writer.add_listener(self.cache.listener)
        self.projector_cpu = 0.0  # the projector thread's CPU time, once it has ended (bench/run.py)
        self._projecting = threading.Thread(target=self._project, name="ledger-projector", daemon=True)
        self._projecting.start()
        self.runner: Runner | None = None
        self.found = Found()
        self.projection_error: Exception | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open_cache(self) -> Any:
        """The cross-run cache (runners/cache.py), its store caught up with every run's log.
        A store that cannot be opened costs the cache, never the run: said at the end. A
        shard's replies reach the store through the merged log (no listener: see __init__)."""
        from llm_ledger.runners.cache import cache_for

        cache, error = cache_for(self.paths.dir, self.paths.run_id, self.prepared.config)
        if error:
            self.notes.append(f"the cross-run cache is unavailable this session ({error}); every request was sent")
        return cache

    def _make_run_dir(self) -> bool:
        """Create the run's directory durably; True if this session created it."""
        if os.path.isdir(self.paths.dir):
            return False
        try:
            fs.makedirs(self.paths.dir)
            fsync_dir(os.path.dirname(os.path.abspath(self.paths.dir)))  # the run's own entry, durably
        except OSError as exc:
            raise os_error(self.paths.dir, exc, "cannot create the run directory") from exc
        return True

    def _append_run_started(self) -> None:
        prepared, info = self.prepared, self.prepared.dataset
        self.writer.append(RunStarted(
            run_id=self.paths.run_id, config=prepared.config.to_dict(), dataset=info.path,
            dataset_sha256=info.sha256, items=planned_items(info.items, prepared.config.limit), version=__version__,
            dataset_items=info.items, dataset_size=info.size,
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
                self._stop_runner(f"error: {exc}")
            raise

    def _project(self) -> None:
        """The projector thread. It wakes at most every ``PROJECT_EVERY`` seconds and applies
        every commit group queued meanwhile at once: one wake-up, one ``responses.jsonl``
        write and one write per conversation file per batch instead of per group (waking per
        group cost more CPU in thread switches than the fold itself).

        An error stops the run: outputs that silently stop growing are worse than a run that
        stops and says why (the log has everything; a resume or `ledger replay --rebuild`
        redoes the projections)."""
        try:
            self._project_batches()
        finally:
            self.projector_cpu = time.thread_time()

    def _project_batches(self) -> None:
        done = False
        while not done:
            try:
                first = self._frames.get(timeout=self.projector.refresh)
            except queue.Empty:  # idle: the rewritten files catch up with the frames applied last
                self._project_step(self.projector.flush_if_idle)
                continue
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
            self._project_step(lambda: self.projector.apply_frames(frames))

    def _project_step(self, step: Callable[[], None]) -> None:
        """One step of the projector thread; its error stops the run (once)."""
        if self.projection_error is not None:
            return
        try:
            step()
        except Exception as exc:
            self.projection_error = exc
            self.projector.broken = True
            self._stop_runner(f"error: projections failed: {exc}")

    def _stop_runner(self, reason: str) -> None:
        """Stop the runner from another thread, if it still runs (after ``execute`` its loop
        is closed: the error is reported by ``close``)."""
        loop = self._loop
        if self.runner is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(self.runner.stop, reason)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _report_refused(self) -> None:
        """Events the writer refused with nobody waiting for them (``LogWriter.refused``) are
        said at the end like internal errors: such an item may be left unfinished, never
        silently."""
        if self.runner is None or not self.writer.refused:
            return
        progress = self.runner.progress
        progress.errors["internal"] = progress.errors.get("internal", 0) + len(self.writer.refused)
        for error in self.writer.refused[: max(0, SHOWN_INTERNAL - len(progress.internal))]:
            progress.internal.append(f"an event was not recorded: {error}")

    # -- planning ------------------------------------------------------------------------

    def begin(self) -> None:
        """Mark this process's session in the log (a new run's run_started is already there)."""
        self.writer.append(SessionStarted(pid=os.getpid(), host=socket.gethostname(), version=__version__,
                                          reason="resume" if self.prepared.resume else "new",
                                          overrides=self.prepared.overrides))

    def plan(self) -> Iterator[Work | None]:
        """The works to send, streamed. For a resume, what it found is counted first (from the
        index) so that it can be reported. Refuses (IndexStateError) to plan from an index that
        did not apply the whole log as it was when the session opened: a lagging index would
        re-send durable replies."""
        self._check_index_level()
        if self.prepared.resume:
            self.found = resume_found(self.prepared, self.index.records())
        return self._works()

    def _check_index_level(self) -> None:
        applied = self.index.applied()[0]
        if self.index_error is not None or self.index.stale is not None or applied < self._opened_end:
            cause = self.index_error or self.index.stale or f"it applied the log up to offset {applied}"
            raise IndexStateError(f"{self.paths.index}: index is behind the log ({cause}); not planning from it: "
                              f"run `ledger resume` again to rebuild it")

    def _works(self) -> Iterator[Work | None]:
        # A new run has no states to look up -- unless another process ran the same new run id
        # between our checks and our lock: then its durable replies must not be bought again.
        counts = self.index.counts()
        fresh = not self.prepared.resume and counts["done"] + counts["failed"] + counts["in_flight"] == 0
        return resume_works(self.prepared, None if fresh else self.index.get_many, self.projector.conversation)

    # -- running -------------------------------------------------------------------------

    def execute(self, works: Iterator[Work | None] | list[Work], on_tick: Callable[[Progress], None] | None = None,
                on_running: Callable[[Runner], Callable[[], None]] | None = None) -> str:
        """Run the works; returns the session's end reason. ``on_running(runner)`` is called
        on the event loop once the runner exists (the CLI installs its signal handlers
        there) and returns what undoes it."""
        try:
            return asyncio.run(self.execute_async(works, on_tick, on_running))
        finally:
            self._loop = None

    async def execute_async(self, works: Any, on_tick: Callable[[Progress], None] | None,
                       on_running: Callable[[Runner], Callable[[], None]] | None, shared: SharedLimits | None = None) -> str:
        """``execute`` on a running loop; an experiment runs its arms' sessions together on
        one loop, each given its provider's ``shared`` limits (runners/experiment.py)."""
        prepared, config = self.prepared, self.prepared.config
        self._loop = asyncio.get_running_loop()
        transport = TRANSPORTS[config.transport]
        self.runner = RUNNERS[config.runner](RunContext(config, self.writer, prepared.parser, prepared.api_key,
                                                        secrets_of(prepared.api_key, config), transport.make,
                                                        transport.remote,
                                                        self.cache if self.cache is not None and self.cache.enabled else None,
                                                        shared))
        progress = self.runner.progress
        progress.total = self.found.to_send if prepared.resume else planned_keys(
            planned_items(prepared.dataset.items, config.limit), {"shard": config.shard, "samples": config.samples})
        undo = on_running(self.runner) if on_running else None
        ticker = asyncio.create_task(_tick(progress, on_tick)) if on_tick else None
        try:
            await self.runner.run(iter(works))
        finally:
            if ticker:
                ticker.cancel()
                on_tick(progress)
            if undo:
                undo()
        if progress.stop_reason.startswith("error"):
            return "error"
        if progress.stop_reason.startswith("endpoint down"):
            return "interrupted"  # an outage: resumable like an interrupt (exit 75 says why)
        return "interrupted" if progress.stopping else "completed"


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
            self._report_refused()
            self._frames.put(None)
            self._projecting.join()
            try:
                self.projector.close()
            except OSError as exc:
                error = error or ProjectionError(f"projections stopped: {_described(exc, self.paths)}; "
                                                 f"the log is complete: fix the cause, then `ledger resume`")
            self.index.close()
            if self.cache is not None:
                broken = self.cache.store.broken
                if broken is not None:  # it stopped serving mid-session: what followed was sent (and paid)
                    self.notes.append(f"the cross-run cache stopped during this session ({type(broken).__name__}: "
                                      f"{' '.join(str(broken).split())[:300]}); the requests after that were sent")
                self.cache.close()
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
        st = fs.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 << 10


def _open_projector(paths: RunPaths) -> Projector:
    try:
        return Projector.open(paths, writers=LIVE_WRITERS)
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
        fs.rmtree(paths.dir, ignore_errors=True)
        return
    for path in (paths.log, paths.lock):
        try:
            fs.unlink(path)
        except OSError:
            pass


def run_prepared(prepared: Prepared, *, on_planned: Callable[[Session], None] | None = None,
                 on_tick: Callable[[Progress], None] | None = None,
                 on_running: Callable[[Runner], Callable[[], None]] | None = None) -> tuple[Session, str]:
    """A whole session: open, plan, send, close (always, whatever happens in between).
    Returns the closed session and its end reason (completed / interrupted / error)."""
    session = Session(prepared)
    reason = "error"
    try:
        session.begin()
        works = session.plan()
        if on_planned is not None:
            on_planned(session)
        reason = session.execute(works, on_tick, on_running)
    finally:
        session.close(reason)
    return session, reason


async def _tick(progress: Progress, on_tick: Callable[[Progress], None]) -> None:
    while True:
        on_tick(progress)
        await asyncio.sleep(0.1)
