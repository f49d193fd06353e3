"""The circuit breaker of one endpoint: stop sending after repeated failures, probe, resume.

    closed --K consecutive failures--> open --cooldown--> half-open --probe ok--> closed
                                        ^                      |
                                        +---- probe failed ----+  (cooldown doubles)

Failures that count are the endpoint's own (5xx, timeouts, refused or reset connections);
429s are back-pressure, handled by adaptive concurrency instead, and a 4xx is the
request's fault. While open, nothing is sent to the endpoint and no retry is spent; in
half-open exactly one request (the probe) is let through.

Whatever ends a probe moves the breaker on: success closes it, a counted failure opens it
again, and anything else -- an answer that says nothing about the endpoint (a 4xx), or a
probe that never got an answer (an internal error, a cancelled request) -- lets the next
request probe. A probe that ended without a verdict must never leave ``probing`` set: every
later request would wait for it for ever.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Breaker", "COUNTED"]

COUNTED = frozenset({"server_error", "timeout", "connection", "malformed_response"})
THRESHOLD = 5  # consecutive failures: fewer would trip on ordinary flakiness
FIRST_COOLDOWN = 0.5  # seconds before the first probe: a restart is often that quick
MAX_COOLDOWN = 30.0  # never wait longer than this between probes


class Breaker:
    def __init__(self, on_change: Callable[[str, str], None] = lambda state, reason: None,
                 threshold: int = THRESHOLD) -> None:
        self.state = "closed"
        self.threshold = threshold
        self.failures = 0
        self.cooldown = FIRST_COOLDOWN
        self.opened_at = 0.0
        self.down_since: float | None = None  # first opening of the current outage
        self.probing = False
        self._on_change = on_change

    def next_probe(self) -> float:
        return self.opened_at + self.cooldown

    def can_send(self, now: float) -> bool:
        if self.state == "open" and now >= self.next_probe():
            self.state = "half_open"
        return self.state == "closed" or (self.state == "half_open" and not self.probing)

    def sending(self) -> None:
        if self.state == "half_open":
            self.probing = True

    def success(self) -> None:
        self.failures = 0
        if self.state != "closed":
            self.state, self.probing, self.cooldown, self.down_since = "closed", False, FIRST_COOLDOWN, None
            self._on_change("resumed", "probe succeeded")

    def no_verdict(self) -> None:
        """The request ended without telling anything about the endpoint: probe again."""
        if self.state == "half_open":
            self.probing = False

    def failure(self, error_type: str, now: float) -> None:
        if error_type not in COUNTED:
            self.no_verdict()  # the probe got an answer, just not a good one: probe again
            return
        self.failures += 1
        if self.state == "half_open":
            self.cooldown = min(MAX_COOLDOWN, self.cooldown * 2)
            self._open(now, f"probe failed: {error_type}", announce=False)
        elif self.state == "closed" and self.failures >= self.threshold:
            self._open(now, f"{self.failures} consecutive failures, last: {error_type}", announce=True)

    def _open(self, now: float, reason: str, announce: bool) -> None:
        self.state, self.opened_at, self.probing = "open", now, False
        if self.down_since is None:
            self.down_since = now
        if announce:
            self._on_change("paused", reason)
