"""Scheduling: work in, requests out, every attempt recorded as events.

At most ``concurrency`` (item, sample) tasks run at once; the dataset is pulled lazily, so
memory is bounded by concurrency, not by dataset size. Turns of one item run in order;
each request carries the conversation so far. ``started`` and ``failed`` events are handed
to the group-committing writer without waiting (``submit``; order per task is kept by the
queue); a reply and its parse are awaited until durable, so a crash can only cost the
replies that were inside one group commit at that instant.

Every reply goes through one path to the log (durable.py): whatever arrived is recorded,
degraded if the log cannot hold it as is, so that one bad reply fails one item, never the
run. Every task is wrapped: an unexpected exception while working an item becomes a final
``failed`` event with ``error_type: internal`` (type, message and place, redacted) and a
line in ``Progress.internal``; no item is ever left pending silently.

Stopping (first Ctrl-C, SIGTERM, an outage past --give-up-after, a fatal error): nothing new
is scheduled; tasks that are not sending (waiting for an endpoint, a rate limit or a retry's
backoff) are cancelled at once; requests in flight get ``GRACE`` seconds to finish and be
recorded, then they are cancelled too (their attempt becomes a ``failed`` event of type
``interrupted``, not final: resume sends it again). ``abort`` (second Ctrl-C) cancels
everything at once.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from llm_ledger.ledger.errors import EndpointError, GaveUp, LedgerError, LogError, UnencodableEventError
from llm_ledger.ledger.events import Failed, Parsed, Paused, Response, Resumed, Started
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.runners.parsers import ParseResult, Parser

from .config import RunConfig
from .durable import loggable_result, plain_usage, reply_events
from .endpoints import Pool
from .limits import RateLimits, estimate_tokens
from .redaction import redact
from .retry import attempts
from .runner import Progress, Work
from .transport import Reply

__all__ = ["Engine", "GRACE", "request_key"]

GRACE = 2.0  # seconds requests in flight may take to finish after a stop, then they are cancelled
SHOWN_INTERNAL = 5  # internal errors kept for the end-of-run message (all are in the log)


def request_key(item_id: str, sample: int, turn: int) -> str:
    """The ``x-ledger-key`` header: ``ID/SAMPLE/TURN`` with the id percent-encoded (UTF-8,
    nothing kept but letters, digits and ``_.-~``), so that any id is a valid header value
    and ``/`` in an id cannot be confused with the separators."""
    return f"{quote(item_id, safe='')}/{sample}/{turn}"


@dataclass
class _Cursor:
    """Where a task is, for the event of an unexpected error."""

    turn: int
    attempt: int
    endpoint: str = ""
    answered: bool = False  # the last turn's reply is durable: the item is done in the log


@dataclass
class Engine:
    config: RunConfig
    writer: LogWriter
    pool: Pool
    parser: Parser
    secrets: tuple[str, ...]
    limits: RateLimits
    progress: Progress = field(default_factory=Progress)
    names: dict[str, str] = field(default_factory=dict)  # endpoint url -> name recorded in events
    cache: Any = None  # runners.cache.Cache: each request is looked up before it is sent
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    error: LedgerError | None = None  # a log that cannot be written stops the run
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _sending: set[asyncio.Task[None] | None] = field(default_factory=set)  # tasks with a request out
    _stopped_at: float | None = None  # time.monotonic() of the first stop
    _aborted_after: float = GRACE  # seconds from the first stop to the abort (the grace, or a second Ctrl-C sooner)

    def breaker_changed(self, state: str, url: str, reason: str) -> None:
        """Breaker callback: record the decision in the log and on the progress bar."""
        name = self.names.get(url, url)
        self.writer.submit([Paused(endpoint=name, reason=reason) if state == "paused" else Resumed(endpoint=name)])
        self.progress.paused = self.pool.down()

    async def run(self, works: Iterator[Work | None]) -> None:
        """Schedule every work, then wait for the tasks. If reading the works fails (the
        dataset became unreadable mid-run), the run stops like an interrupt -- what is in
        flight is recorded -- and the error is raised after."""
        slots = asyncio.Semaphore(self.config.concurrency)
        try:
            for work in works:
                if work is None:  # the plan read a batch (plan.resume_works): the loop's turn
                    await asyncio.sleep(0)
                    continue
                await slots.acquire()
                if self.progress.stopping:
                    slots.release()
                    break
                task = asyncio.create_task(self._one(work))
                self._tasks.add(task)
                task.add_done_callback(lambda t: (self._tasks.discard(t), slots.release()))
                if self.error is not None:
                    break
        except Exception as exc:
            self.stop(f"error: {exc}")
            raise
        finally:
            while self._tasks:
                for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
                    self._escaped(outcome)
        if self.error is not None:
            raise self.error

    def _escaped(self, outcome: object) -> None:
        """A task's exception that ``_one`` could not turn into an event (its own handler
        failed): never swallowed -- the user is told, and the item shows as pending, which
        the end of the run counts and resume sends. A cancellation is a stop's, not an error."""
        if isinstance(outcome, Exception):
            self.progress.errors["internal"] = self.progress.errors.get("internal", 0) + 1
            if len(self.progress.internal) < SHOWN_INTERNAL:
                message = redact(f"{type(outcome).__name__}: {outcome}"[:500], self.secrets)
                self.progress.internal.append(f"internal error while recording an item: {message}")

    def stop(self, reason: str = "interrupted") -> None:
        """Stop sending: cancel what waits at once, give requests in flight ``GRACE`` seconds."""
        first = not self.progress.stopping
        self.progress.stopping = True
        self.progress.stop_reason = self.progress.stop_reason or reason
        self._stopped.set()
        if first:
            self._stopped_at = time.monotonic()
            self._cancel(lambda task: task not in self._sending)
            asyncio.get_running_loop().call_later(GRACE, self.abort)

    def abort(self) -> None:
        """Stop now (the second Ctrl-C, or the end of the grace): cancel every task."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self._aborted_after = time.monotonic() - self._stopped_at
        self.progress.stopping = True
        self.progress.stop_reason = self.progress.stop_reason or "interrupted"
        self._stopped.set()
        self._cancel(lambda task: True)

    def _cancel(self, which: Any) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current and not task.done() and which(task):
                task.cancel()

    async def _one(self, work: Work) -> None:
        item, progress = work.item, self.progress
        cursor = _Cursor(work.start_turn, work.attempts)
        try:
            messages = list(work.history) if work.start_turn else self._system()
            for turn in range(work.start_turn, len(item.turns)):
                if self.progress.stopping and turn > work.start_turn:
                    return  # stopping: no new turn; the item continues from here on resume
                cursor.turn = turn
                messages = messages + item.turns[turn]
                body = {"model": self.config.model, "messages": messages, **self.config.params(), **item.params}
                if self._too_long(work, turn, body):
                    return
                reply = await self._from_cache(work, body, cursor) if self.cache is not None else None
                if reply is None:
                    reply = await self._attempts(work, body, cursor)
                if reply is None:
                    return
                messages = messages + [{"role": "assistant", "content": reply.text}]
            progress.done += 1
        except LogError as exc:  # the writer died (disk full, I/O error): stop everything once
            self._fatal(exc)
        except Exception as exc:  # a bug, or input nobody foresaw: this item fails, the run goes on
            self._internal(work, cursor, exc)

    def _fatal(self, exc: LogError) -> None:
        if self.error is None:
            self.error = exc
            self.stop(f"error: {exc}")

    def _internal(self, work: Work, cursor: _Cursor, exc: Exception) -> None:
        """An unexpected exception: a final ``failed`` event of type ``internal`` that says
        what and where, and a line for the user; the item is never left pending silently."""
        frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" (at {os.path.basename(frame[0].filename)}:{frame[0].lineno})" if frame else ""
        message = redact(f"{type(exc).__name__}: {exc}"[:500] + where, self.secrets)
        self.progress.errors["internal"] = self.progress.errors.get("internal", 0) + 1
        if len(self.progress.internal) < SHOWN_INTERNAL:  # the count is in errors["internal"]
            after = " (after its reply was recorded: the item is done)" if cursor.answered else ""
            self.progress.internal.append(f"item {work.item.id!r} sample {work.sample}: internal error{after}: {message}")
        if cursor.answered:  # a failed event now would make a resume buy the durable reply again
            self.progress.done += 1
            return
        self.progress.failed += 1
        try:
            self.writer.submit([Failed(
                item_id=work.item.id, sample=work.sample, turn=cursor.turn, attempt=max(1, cursor.attempt),
                error_type="internal", message=message, retryable=False, final=True, endpoint=cursor.endpoint,
                expected=work.item.expected, line=work.item.line, metadata=work.item.metadata,
            )])
        except LogError as log_error:
            self._fatal(log_error)

    def _too_long(self, work: Work, turn: int, body: dict[str, Any]) -> bool:
        """Fail an item whose conversation cannot fit --max-context, instead of paying for a 400."""
        limit = self.config.max_context
        if not limit:
            return False
        need = estimate_tokens(body["messages"], body.get("max_tokens"))
        if need <= limit:
            return False
        self.writer.submit([Failed(
            item_id=work.item.id, sample=work.sample, turn=turn, attempt=work.attempts,
            error_type="context_overflow", final=True, retryable=False, expected=work.item.expected,
            line=work.item.line, metadata=work.item.metadata,
            message=f"conversation needs ~{need} tokens (with max_tokens), over --max-context {limit}; not sent",
        )])
        self.progress.failed += 1
        return True

    async def _from_cache(self, work: Work, body: dict[str, Any], cursor: _Cursor) -> Reply | None:
        """A durable reply to this very request from some run's log (runners/cache.py): its
        events are recorded (awaited until durable, like a paid reply) and nothing is sent.
        None: a miss, send it."""
        hit = self.cache.lookup(body, work.sample)
        if hit is None:
            return None
        item, turn = work.item, cursor.turn
        final = turn == len(item.turns) - 1
        cursor.attempt += 1
        events = self.cache.hit_events(hit, item_id=item.id, sample=work.sample, turn=turn, attempt=cursor.attempt,
                                       body=body, final=final, expected=item.expected, line=item.line,
                                       metadata=item.metadata)
        result = self.parser(hit.response.text) if final else None
        parsed = [self._parsed(work, turn, result)] if result is not None else []
        try:
            await self.writer.append_many_async(events + parsed)
        except UnencodableEventError:
            again = self._parsed(work, turn, loggable_result(result)) if result is not None else None
            await self.writer.append_many_async([events[0], *reply_events(events[1], again)])
        usage, progress = hit.response.usage, self.progress
        progress.cached += 1
        if usage is not None:
            progress.cached_prompt_tokens += usage.prompt_tokens
            progress.cached_completion_tokens += usage.completion_tokens
        cursor.answered = final
        return Reply(hit.response.text, hit.response.finish_reason, None, {}, 0.0)

    async def _backoff(self, seconds: float) -> None:
        """A retry's wait, cut short by a stop (the retry then sees `stopping` and gives up)."""
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)
        except TimeoutError:
            pass

    def _system(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.config.system}] if self.config.system else []

    async def _attempts(self, work: Work, body: dict[str, Any], cursor: _Cursor) -> Reply | None:
        """Try until a reply, a final failure (None), or a stop (None, item left unfinished)."""

        async def once(number: int, last: bool) -> Reply:
            cursor.attempt += 1
            return await self._attempt(work, body, cursor, last)

        try:
            return await attempts(once, self.config.retries, sleep=self._backoff, stopping=lambda: self.progress.stopping)
        except EndpointError:
            self.progress.failed += 1
        except GaveUp as exc:
            self.stop(f"endpoint down: {exc}")
        return None

    async def _attempt(self, work: Work, body: dict[str, Any], cursor: _Cursor, last: bool) -> Reply:
        """One request: wait for an endpoint that may send and for the rate limits, then send."""
        endpoint = await self.pool.acquire()
        reply, error = None, None
        task = asyncio.current_task()
        slot = False  # a slot of the provider's limits shared by an experiment's runs (limits.py)
        try:
            tokens = estimate_tokens(body["messages"], body.get("max_tokens")) if self.limits.counts_tokens else 0
            slot = await self.limits.acquire(tokens)
            name = cursor.endpoint = self.names.get(endpoint.url, endpoint.url)
            item, turn = work.item, cursor.turn
            key = {"item_id": item.id, "sample": work.sample, "turn": turn, "attempt": cursor.attempt}
            self._sending.add(task)
            self.progress.in_flight += 1  # sent, awaiting its reply (not: waiting for a limit or a backoff)
            self.writer.submit([Started(**key, request=body, endpoint=name, expected=item.expected,
                                        line=item.line, metadata=item.metadata)])
            try:
                reply = await endpoint.transport.send(body, request_key(item.id, work.sample, turn), self.config.timeout)
            except EndpointError as exc:
                error = exc
                final = not exc.retryable or last
                self._note_failure(exc, final)
                self.writer.submit([Failed(
                    **key, error_type=exc.error_type, message=exc.message, status=exc.status,
                    retryable=exc.retryable, final=final, endpoint=name,
                )])
                raise
            except asyncio.CancelledError:
                if self.progress.stopping:
                    self.writer.submit([Failed(
                        **key, error_type="interrupted", retryable=True, final=False, endpoint=name,
                        message=f"request abandoned: still in flight {self._aborted_after:.1f} s after the run was "
                                "told to stop" + (" (stopped at once: Ctrl-C twice)" if self._aborted_after < GRACE else ""),
                    )])
                raise
            usage = plain_usage(reply.usage)
            if usage is not None:
                self.limits.correct(tokens, usage.total_tokens)
            await self._record(work, turn, key, body, reply, name)
            cursor.answered = turn == len(item.turns) - 1
            return reply
        finally:
            if slot:
                self.limits.release()
            if task in self._sending:
                self._sending.discard(task)
                self.progress.in_flight -= 1
            await self.pool.release(endpoint, reply, error)
            self.progress.limit = self.pool.limit
            self.progress.paused = self.pool.down()

    def _note_failure(self, exc: EndpointError, final: bool) -> None:
        errors = self.progress.errors
        errors[exc.error_type] = errors.get(exc.error_type, 0) + 1
        if not final:
            self.progress.retrying += 1

    def _parsed(self, work: Work, turn: int, result: ParseResult) -> Parsed:
        return Parsed(item_id=work.item.id, sample=work.sample, turn=turn, parser=self.parser.spec,
                      parser_version=self.parser.version, ok=result.ok, value=result.value, error=result.error)

    async def _record(self, work: Work, turn: int, key: dict[str, Any], body: dict[str, Any], reply: Reply, endpoint: str) -> None:
        """Log the reply (and its parse) and wait until it is durable: a paid-for reply is
        acknowledged before the item counts as done or its next turn is sent. The writer
        checks every event it frames; one it refuses is degraded by ``reply_events`` and
        sent again (the rare path: no reply pays for a second check on the way)."""
        final = turn == len(work.item.turns) - 1
        response = Response(
            **key, text=reply.text, finish_reason=reply.finish_reason, usage=plain_usage(reply.usage),
            latency=round(reply.latency, 6), raw=reply.raw, endpoint=endpoint, final=final,
        )
        result = self.parser(reply.text) if final else None
        events = [response, *([self._parsed(work, turn, result)] if result is not None else [])]
        try:
            await self.writer.append_many_async(events)
        except UnencodableEventError:
            parsed = self._parsed(work, turn, loggable_result(result)) if result is not None else None
            events = reply_events(response, parsed)
            await self.writer.append_many_async(events)
        progress, usage = self.progress, events[0].usage
        if usage is not None:
            progress.prompt_tokens += usage.prompt_tokens
            progress.completion_tokens += usage.completion_tokens
        if progress.first_reply is None:
            progress.first_reply = (body, events[0].text)
