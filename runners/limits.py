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

__all__ = ["RateLimits", "AdaptiveLimit", "estimate_tokens"]


def estimate_tokens(messages: list[dict], max_tokens: int | None = None) -> int:
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 4 + 4 * len(messages) + (max_tokens or 0)


class RateLimits:
    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = AsyncLimiter(1, 60.0 / rpm) if rpm else None
        self.tpm = AsyncLimiter(tpm / 6.0, 10.0) if tpm else None
        self._corrections: set[asyncio.Task[None]] = set()

    async def acquire(self, tokens: int) -> None:
        if self.tpm is not None:
            await self.tpm.acquire(min(max(1, tokens), self.tpm.max_rate))
        if self.rpm is not None:
            await self.rpm.acquire()

    def correct(self, estimated: int, actual: int) -> None:
        """Take what the estimate missed from the token bucket, without blocking the caller."""
        if self.tpm is not None and actual > estimated:
            task = asyncio.create_task(self.tpm.acquire(min(actual - estimated, self.tpm.max_rate)))
            self._corrections.add(task)
            task.add_done_callback(self._corrections.discard)


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
