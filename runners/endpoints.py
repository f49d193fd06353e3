"""Endpoints and the pool that spreads requests over them.

Each endpoint has its own transport, circuit breaker, adaptive in-flight limit and a pause
set by ``x-ratelimit-remaining-*: 0`` replies. ``Pool.acquire`` waits for an endpoint that
may send (breaker closed or probing, under its limit, not paused) and picks the one with the
fewest requests in flight. When every endpoint has been down for ``give_up_after`` seconds
it raises ``GaveUp`` and the run ends as interrupted, resumable later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llm_ledger.ledger.errors import EndpointError, GaveUp

from .breaker import Breaker
from .limits import AdaptiveLimit
from .transport import Reply, Transport

__all__ = ["Endpoint", "Pool"]


@dataclass
class Endpoint:
    url: str
    transport: Transport
    limit: AdaptiveLimit
    breaker: Breaker = field(default_factory=Breaker)
    in_flight: int = 0
    paused_until: float = 0.0

    def ready(self, now: float) -> bool:
        return self.paused_until <= now and self.in_flight < self.limit.current and self.breaker.can_send(now)

    def wake_at(self, now: float) -> float:
        candidates = [self.paused_until] if self.paused_until > now else []
        if self.breaker.state == "open":
            candidates.append(self.breaker.next_probe())
        return min(candidates, default=now + 0.5)


class Pool:
    def __init__(self, endpoints: list[Endpoint], give_up_after: float | None = None) -> None:
        self.endpoints = endpoints
        self.give_up_after = give_up_after
        self._wakeup: asyncio.Event | None = None  # set (and replaced) by every release

    @staticmethod
    def watch(endpoint_url: str, notify: Callable[[str, str, str], None]) -> Callable[[str, str], None]:
        """A breaker callback that reports (state, endpoint, reason)."""
        return lambda state, reason: notify(state, endpoint_url, reason)

    @property
    def limit(self) -> int:
        return sum(e.limit.current for e in self.endpoints if e.breaker.state == "closed")

    def down(self) -> bool:
        return all(e.breaker.state != "closed" for e in self.endpoints)

    async def acquire(self) -> Endpoint:
        """Wait for an endpoint that may send. Choosing and taking it happen without an await
        in between, so no lock is needed; waiting is on an event, which a cancellation (a
        stop) leaves in no half state (a Condition's lock, cancelled while wait_for re-takes
        it, could be released by a task that no longer held it)."""
        while True:
            now = time.monotonic()
            ready = [e for e in self.endpoints if e.ready(now)]
            if ready:
                chosen = min(ready, key=lambda e: e.in_flight)
                chosen.in_flight += 1
                chosen.breaker.sending()
                return chosen
            self._check_give_up(now)
            wake = min(e.wake_at(now) for e in self.endpoints)
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.01, min(wake - now, 0.5)))
            except TimeoutError:
                pass

    def _check_give_up(self, now: float) -> None:
        if self.give_up_after is None:
            return
        since = [e.breaker.down_since for e in self.endpoints]
        if all(s is not None for s in since) and now - max(s for s in since if s is not None) >= self.give_up_after:
            raise GaveUp(f"every endpoint down for {self.give_up_after:g}s")

    async def release(self, endpoint: Endpoint, reply: Reply | None, error: EndpointError | None) -> None:
        """Every acquire ends here, whatever ended the request (a reply, an endpoint error, or
        neither: an exception of ours or a cancellation), so that the breaker moves on."""
        now = time.monotonic()
        endpoint.in_flight -= 1
        if reply is not None:
            endpoint.breaker.success()
            endpoint.limit.on_success()
            if reply.pause:
                endpoint.paused_until = max(endpoint.paused_until, now + reply.pause)
        elif error is None:  # no verdict: an internal error or a cancelled request
            endpoint.breaker.no_verdict()
        else:
            endpoint.breaker.failure(error.error_type, now)
            if error.status == 429:
                endpoint.limit.on_rate_limited()
            # Retry-After on a 429 speaks for the endpoint, not just this request: hold everyone.
            hold = max(error.pause or 0.0, (error.retry_after or 0.0) if error.status == 429 else 0.0)
            if hold:
                endpoint.paused_until = max(endpoint.paused_until, now + min(hold, 120.0))
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
