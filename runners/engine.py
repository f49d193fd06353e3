"""Scheduling: work in, requests out, every attempt recorded as events.

At most ``concurrency`` (item, sample) tasks run at once; the dataset is pulled lazily, so
memory is bounded by concurrency, not by dataset size. Turns of one item run in order;
each request carries the conversation so far. ``started`` and ``failed`` events are handed
to the group-committing writer without waiting (``submit``; order per task is kept by the
queue); a reply and its parse are awaited until durable, so a crash can only cost the
replies that were inside one group commit at that instant.

Stopping (first Ctrl-C): nothing new is scheduled, no new turn and no retry starts (a retry's
backoff is cut short); requests in flight finish (bounded by the timeout) and are recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from ledger.errors import LedgerError, LogError
from ledger.events import Failed, Parsed, Paused, Response, Resumed, Started, Usage
from ledger.writer import LogWriter
from projections.parsers import ParseResult, Parser

from .client import EndpointError, Reply, send
from .config import RunConfig
from .dataset import Item
from .endpoints import GaveUp, Pool
from .limits import RateLimits, estimate_tokens
from .retry import retrying

__all__ = ["Work", "Progress", "Engine"]

_probe = msgspec.msgpack.Encoder().encode


class Work(NamedTuple):
    item: Item
    sample: int
    start_turn: int = 0
    history: list[dict[str, Any]] = []  # messages of the turns already completed
    attempts: int = 0  # attempts made by earlier sessions


@dataclass
class Progress:
    total: int = 0
    done: int = 0
    failed: int = 0
    retrying: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopping: bool = False
    stop_reason: str = ""
    paused: bool = False
    limit: int = 0
    first_reply: tuple[dict[str, Any], str] | None = None
    errors: dict[str, int] = field(default_factory=dict)


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
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    error: LedgerError | None = None  # a log that cannot be written stops the run

    def breaker_changed(self, state: str, url: str, reason: str) -> None:
        """Breaker callback: record the decision in the log and on the progress bar."""
        name = self.names.get(url, url)
        self.writer.submit([Paused(endpoint=name, reason=reason) if state == "paused" else Resumed(endpoint=name)])
        self.progress.paused = self.pool.down()

    async def run(self, works: Iterator[Work]) -> None:
        slots = asyncio.Semaphore(self.config.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        for work in works:
            await slots.acquire()
            if self.progress.stopping:
                slots.release()
                break
            task = asyncio.create_task(self._one(work))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
            if self.error is not None:
                break
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.error is not None:
            raise self.error

    def stop(self, reason: str = "interrupted") -> None:
        self.progress.stopping = True
        self.progress.stop_reason = self.progress.stop_reason or reason
        self._stopped.set()

    async def _one(self, work: Work) -> None:
        item, progress = work.item, self.progress
        messages = list(work.history) if work.start_turn else self._system()
        attempts = work.attempts
        progress.in_flight += 1
        try:
            for turn in range(work.start_turn, len(item.turns)):
                if self.progress.stopping and turn > work.start_turn:
                    return  # stopping: no new turn; the item continues from here on resume
                messages = messages + item.turns[turn]
                body = {"model": self.config.model, "messages": messages, **self.config.params(), **item.params}
                if self._too_long(work, turn, body):
                    return
                outcome = await self._attempts(work, turn, body, attempts)
                if outcome is None:
                    return
                reply, attempts = outcome
                messages = messages + [{"role": "assistant", "content": reply.text}]
            progress.done += 1
        except LogError as exc:  # the writer died (disk full, I/O error): stop everything once
            if self.error is None:
                self.error = exc
                self.stop(f"error: {exc}")
        finally:
            progress.in_flight -= 1

    def _too_long(self, work: Work, turn: int, body: dict[str, Any]) -> bool:
        """Fail an item whose conversation cannot fit --max-context, instead of paying for a 400."""
        limit = self.config.max_context
        need = estimate_tokens(body["messages"], body.get("max_tokens"))
        if not limit or need <= limit:
            return False
        self.writer.submit([Failed(
            item_id=work.item.id, sample=work.sample, turn=turn, attempt=work.attempts,
            error_type="context_overflow", final=True, retryable=False,
            message=f"conversation needs ~{need} tokens (with max_tokens), over --max-context {limit}; not sent",
        )])
        self.progress.failed += 1
        return True

    async def _backoff(self, seconds: float) -> None:
        """A retry's wait, cut short by a stop (the retry then sees `stopping` and gives up)."""
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)
        except TimeoutError:
            pass

    def _system(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.config.system}] if self.config.system else []

    async def _attempts(self, work: Work, turn: int, body: dict[str, Any], attempts: int) -> tuple[Reply, int] | None:
        """Try until a reply, a final failure (None), or a stop (None, item left unfinished)."""
        try:
            async for attempt in retrying(self.config.retries, sleep=self._backoff):
                with attempt:
                    if self.progress.stopping and attempt.retry_state.attempt_number > 1:
                        return None
                    attempts += 1
                    number = attempt.retry_state.attempt_number
                    reply = await self._attempt(work, turn, body, attempts, last=number > self.config.retries)
                    return reply, attempts
        except EndpointError:
            self.progress.failed += 1
        except GaveUp as exc:
            self.stop(f"endpoint down: {exc}")
        return None

    async def _attempt(self, work: Work, turn: int, body: dict[str, Any], attempt: int, last: bool) -> Reply:
        """One request: wait for an endpoint that may send and for the rate limits, then send."""
        endpoint = await self.pool.acquire()
        reply, error = None, None
        try:
            tokens = estimate_tokens(body["messages"], body.get("max_tokens"))
            await self.limits.acquire(tokens)
            name = self.names.get(endpoint.url, endpoint.url)
            item, key = work.item, {"item_id": work.item.id, "sample": work.sample, "turn": turn, "attempt": attempt}
            self.writer.submit([Started(**key, request=body, endpoint=name, expected=item.expected)])
            try:
                reply = await send(endpoint.client(), body, self.secrets, {"x-ledger-key": f"{item.id}/{work.sample}/{turn}"})
            except EndpointError as exc:
                error = exc
                final = not exc.retryable or last
                self._note_failure(exc, final)
                self.writer.submit([Failed(
                    **key, error_type=exc.error_type, message=exc.message, status=exc.status,
                    retryable=exc.retryable, final=final, endpoint=name,
                )])
                raise
            if reply.usage:
                self.limits.correct(tokens, reply.usage.get("total_tokens", 0))
            await self._record(work, turn, key, body, reply, name)
            return reply
        finally:
            await self.pool.release(endpoint, reply, error)
            self.progress.limit = self.pool.limit
            self.progress.paused = self.pool.down()

    def _note_failure(self, exc: EndpointError, final: bool) -> None:
        errors = self.progress.errors
        errors[exc.error_type] = errors.get(exc.error_type, 0) + 1
        if not final:
            self.progress.retrying += 1

    async def _record(self, work: Work, turn: int, key: dict[str, Any], body: dict[str, Any], reply: Reply, endpoint: str) -> None:
        """Log the reply (and its parse) and wait until it is durable: a paid-for reply is
        acknowledged before the item counts as done or its next turn is sent."""
        final = turn == len(work.item.turns) - 1
        usage = Usage(**reply.usage) if reply.usage else None
        events: list[Any] = [Response(
            **key, text=reply.text, finish_reason=reply.finish_reason, usage=usage,
            latency=round(reply.latency, 6), raw=_loggable_raw(reply.raw), endpoint=endpoint, final=final,
        )]
        if final:
            result = _loggable(self.parser(reply.text))
            events.append(Parsed(
                item_id=work.item.id, sample=work.sample, turn=turn, parser=self.parser.spec,
                parser_version=self.parser.version, ok=result.ok, value=result.value, error=result.error,
            ))
        await self.writer.append_many_async(events)
        progress = self.progress
        if reply.usage:
            progress.prompt_tokens += reply.usage["prompt_tokens"]
            progress.completion_tokens += reply.usage["completion_tokens"]
        if progress.first_reply is None:
            progress.first_reply = (body, reply.text)


def _loggable_raw(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The reply's JSON as received, unless MessagePack cannot hold it (an integer over 64
    bits): then the text, usage and finish reason are kept, the raw body is not."""
    try:
        _probe(raw)
        return raw
    except (TypeError, msgspec.EncodeError, OverflowError):
        return None


def _loggable(result: ParseResult) -> ParseResult:
    """A user parser may return anything; the log takes only plain data."""
    try:
        _probe(result.value)
        return result
    except (TypeError, msgspec.EncodeError, OverflowError):
        return ParseResult(False, None, f"parser returned a {type(result.value).__name__}, not plain data")
