"""The one retry policy: which failures are retried, and how long to wait.

Retried: 429, 408, 409, 5xx, timeouts, connection errors and malformed replies (a server
that answered garbage may answer properly next time). Not retried: other 4xx (a bad request,
a wrong key or model will not get better). The wait is exponential with full jitter, but
never shorter than the server's ``Retry-After``.

``attempts`` makes the first attempt itself and hands the rest to tenacity only after a
retryable failure: nearly every request succeeds the first time, and tenacity's machinery
per attempt (its state object and action chain) cost a fifth of the engine's CPU per
request. The failure is then replayed as tenacity's first attempt, so that waits, stops and
attempt numbers are exactly those of the one policy below.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from llm_ledger.ledger.errors import EndpointError

__all__ = ["retrying", "attempts"]

T = TypeVar("T")

BASE_WAIT = 0.25  # seconds before the first retry: a blip is usually over by then
MAX_WAIT = 30.0  # cap of one backoff: long outages are the circuit breaker's job
MAX_RETRY_AFTER = 120.0  # a Retry-After longer than this is capped, not obeyed blindly


class wait_backoff(wait_base):
    """Full-jitter exponential backoff, floored by the server's Retry-After."""

    def __call__(self, state: RetryCallState) -> float:
        backoff = random.uniform(0, min(MAX_WAIT, BASE_WAIT * 2 ** (state.attempt_number - 1)))
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None) or 0.0
        return max(backoff, min(retry_after, MAX_RETRY_AFTER))


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, EndpointError) and exc.retryable


def retrying(retries: int, sleep: Callable[[float], Awaitable[None]] | None = None) -> AsyncRetrying:
    """``retries`` retries after the first attempt; the last error is re-raised. ``sleep``
    replaces asyncio.sleep for the backoff (the engine's can be interrupted by a stop)."""
    extra = {"sleep": sleep} if sleep is not None else {}
    return AsyncRetrying(
        **extra,
        stop=stop_after_attempt(retries + 1),
        wait=wait_backoff(),
        retry=retry_if_exception(_retryable),
        reraise=True,
    )


async def attempts(call: Callable[[int, bool], Awaitable[T]], retries: int, *,
                   sleep: Callable[[float], Awaitable[None]] | None = None,
                   stopping: Callable[[], bool] = lambda: False) -> T | None:
    """``call(number, last)`` until it returns, raises what is not retried, or runs out of
    retries (its last error is raised). ``None`` when ``stopping()`` says so before a retry."""
    try:
        return await call(1, retries == 0)
    except EndpointError as exc:
        if not exc.retryable or retries == 0:
            raise
        first = exc
    async for attempt in retrying(retries, sleep=sleep):
        with attempt:
            number = attempt.retry_state.attempt_number
            if number == 1:
                raise first  # replayed: tenacity waits and counts as if it had made it
            if stopping():
                return None
            return await call(number, number > retries)
    return None  # not reached: tenacity returns or raises
