"""Request-rate and token-rate limits, and adaptive concurrency.

``RateLimits`` wraps aiolimiter (a leaky bucket). aiolimiter starts with a full bucket, so
a bucket as large as the per-minute limit would burst a whole minute's worth at start; we
size the request bucket to one request (``AsyncLimiter(1, 60 / rpm)``), which spaces requests
evenly and can never exceed ``rpm`` in any window. Tokens use a ten-second bucket (a request
larger than the bucket is clamped to it), are estimated from the request before sending
(characters / 4) and corrected by the usage the reply reports (extra tokens are taken from
the bucket afterwards; aiolimiter has no refunds, so an overestimate is not given back).

``AdaptiveLimit`` is AIMD on the in-flight limit of one endpoint: halve on a 429 (at most
once per second, so one burst of 429s counts once), add 1/limit per success (+1 per
limit-worth of successes), never above the configured concurrency nor below 1.
"""

from __future__ import annotations

import asyncio
import time

from aiolimiter import AsyncLimiter

__all__ = ["RateLimits", "SharedLimits", "AdaptiveLimit", "estimate_tokens"]


def estimate_tokens(messages: list[dict], max_tokens: int | None = None) -> int:
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 4 + 4 * len(messages) + (max_tokens or 0)


class RateLimits:
    """A run's own limits, and (``shared``) its provider's, which the runs of an experiment
    that use the same provider hold in common (one event loop: runners/experiment.py)."""

    def __init__(self, rpm: int | None, tpm: int | None, shared: "SharedLimits | None" = None) -> None:
        self.rpm = AsyncLimiter(1, 60.0 / rpm) if rpm else None
        self.tpm = AsyncLimiter(tpm / 6.0, 10.0) if tpm else None
        self.shared = shared
        self._corrections: set[asyncio.Task[None]] = set()

    @property
    def counts_tokens(self) -> bool:
        """Whether a request's tokens must be estimated (a token limit here or shared)."""
        return self.tpm is not None or (self.shared is not None and self.shared.counts_tokens)

    async def acquire(self, tokens: int) -> bool:
        """Wait for the rate limits; True when a shared slot is now held (``release`` it)."""
        if self.tpm is not None:
            await self.tpm.acquire(min(max(1, tokens), self.tpm.max_rate))
        if self.rpm is not None:
            await self.rpm.acquire()
        return await self.shared.acquire(tokens) if self.shared is not None else False

    def release(self) -> None:
        if self.shared is not None:
            self.shared.release()

    def correct(self, estimated: int, actual: int) -> None:
        """Take what the estimate missed from the token bucket, without blocking the caller."""
        if self.tpm is not None and actual > estimated:
            task = asyncio.create_task(self.tpm.acquire(min(actual - estimated, self.tpm.max_rate)))
            self._corrections.add(task)
            task.add_done_callback(self._corrections.discard)
        if self.shared is not None:
            self.shared.correct(estimated, actual)


class SharedLimits(RateLimits):
    """A provider's limits over every run of an experiment that uses it: its request and
    token rates, and at most ``concurrency`` requests sent at once by all of them together
    (a slot is taken after the rate limits, just before ``started``, and released when the
    request ends). Lives on one event loop."""

    def __init__(self, concurrency: int | None, rpm: int | None, tpm: int | None) -> None:
        super().__init__(rpm, tpm)
        self.concurrency = concurrency
        self.slots = asyncio.Semaphore(concurrency) if concurrency else None
        self.sending = 0  # requests out now, over every run sharing these limits
        self.most_sending = 0

    async def acquire(self, tokens: int) -> bool:
        await super().acquire(tokens)
        if self.slots is not None:
            await self.slots.acquire()
        self.sending += 1
        self.most_sending = max(self.most_sending, self.sending)
        return True

    def release(self) -> None:
        self.sending -= 1
        if self.slots is not None:
            self.slots.release()


class AdaptiveLimit:
    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.value = float(ceiling)
        self._last_decrease = 0.0

    @property
    def current(self) -> int:
        return max(1, int(self.value))

    def on_success(self) -> None:
        self.value = min(float(self.ceiling), self.value + 1.0 / self.value)

    def on_rate_limited(self) -> None:
        now = time.monotonic()
        if now - self._last_decrease >= 1.0:
            self.value = max(1.0, self.value / 2)
            self._last_decrease = now
