"""The seam between a runner and whatever answers a request: a ``Transport``.

A transport sends one request body for one (item, sample, turn) and returns a ``Reply``,
or raises ``EndpointError`` (redacted, typed, marked retryable or not) for anything that
went wrong underneath; nothing else escapes it but cancellation. Retries, breakers, rate
limits and the log are the runner's: a transport makes exactly one attempt.

Implementations: ``http_transport`` (aiohttp and msgspec, the default: any
OpenAI-compatible endpoint, the built-in HTTP simulator included), ``openai_transport``
(the same requests through the ``openai`` SDK) and ``sim_transport`` (the simulator's reply
logic in-process, no socket). Each is built by a factory from a
``TransportSpec``, one transport per endpoint, and named in ``registry.TRANSPORTS``: adding
a transport is one module holding its class and one line there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

__all__ = ["Reply", "Transport", "TransportSpec", "TransportFactory"]


class Reply(NamedTuple):
    text: str
    finish_reason: str | None
    usage: dict[str, int] | None
    raw: dict[str, Any]
    latency: float
    pause: float | None = None  # x-ratelimit-remaining-* hit 0: hold off this long


class TransportSpec(NamedTuple):
    """What a factory needs to build one endpoint's transport."""

    url: str  # "" for a transport that needs none (in-process)
    api_key: str
    secrets: tuple[str, ...]  # redacted from every message and reply
    timeout: float  # seconds; the default deadline of one request
    concurrency: int  # requests this endpoint may have in flight
    simulator: dict[str, Any]  # SimConfig fields, for a simulating transport


class Transport(Protocol):
    async def send(self, body: dict[str, Any], key: str, timeout: float | None) -> Reply:
        """One attempt. ``key`` names the request (``request_key``: ID/SAMPLE/TURN, the id
        percent-encoded); ``timeout`` bounds all of it, connect to last byte."""
        ...

    async def close(self) -> None:
        """Release connections; the transport is not used after."""
        ...


TransportFactory = Callable[[TransportSpec], Transport]
