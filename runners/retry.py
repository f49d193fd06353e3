"""The one retry policy: which failures are retried, and how long to wait.

Retried: 429, 408, 409, 5xx, timeouts, connection errors and malformed replies (a server
that answered garbage may answer properly next time). Not retried: other 4xx (a bad request,
a wrong key or model will not get better). The wait is exponential with full jitter, but
never shorter than the server's ``Retry-After``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from llm_ledger.ledger.errors import EndpointError

__all__ = ["retrying"]

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
