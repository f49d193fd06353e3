"""``--transport openai``: one request to an OpenAI-compatible endpoint through the
``openai`` SDK's async client. The default is http_transport.py (aiohttp and msgspec, the
same bytes on the wire, about four times less CPU per request); this one is kept for an
endpoint that only the SDK's HTTP stack reaches. With preflight.py (``GET /models`` before
a run), the only module that imports the SDK.

The SDK's own retries are off (``max_retries=0``): retries are the runner's (retry.py), so
that every attempt becomes events. The request goes through the client's generic ``post``
with the body exactly as the ``started`` event logs it, encoded by msgspec as the default
transport encodes it (``chat.completions.create`` would
first run its typed-parameter transform over every message, a no-op for a JSON body that
cost about a quarter of the client's CPU per request). The reply body is decoded by
completion.py from the raw HTTP response. Status, timeout and connection errors are the
SDK's, as with ``create``.

Every failure becomes an ``EndpointError`` whose message has been redacted: the API key
(in every form redaction.py knows) and any ``Bearer`` token are replaced, and nothing from
the request (whose headers hold the key) is ever read into a message.

``timeout`` bounds the whole request, connect to last byte: httpx's own timeouts are per
operation (a body that trickles a byte a second never trips a read timeout of 60 s).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from llm_ledger.ledger.errors import EndpointError

from .completion import decode_reply, ratelimit_pause, status_error
from .http_transport import encode_body, tls_context
from .redaction import redact, redactor
from .transport import Reply, TransportSpec

if TYPE_CHECKING:  # the SDK takes ~0.5 s to import: only a session that sends pays for it
    import openai

__all__ = ["OpenAITransport", "make_client", "make_clients", "send"]

_PATH = "/chat/completions"

# httpcore's pool looks at every pooled connection on each request, so its cost per request
# grows with the pool; several small pools (clients) keep that scan short at high concurrency.
CONNECTIONS_PER_CLIENT = 8


class OpenAITransport:
    """One endpoint's connection pool, in shards (clients) taken in turn."""

    def __init__(self, spec: TransportSpec) -> None:
        self.clients = make_clients(spec.url, spec.api_key, spec.timeout, spec.concurrency)
        self.secrets = spec.secrets
        self._turn = 0

    async def send(self, body: dict[str, Any], key: str, timeout: float | None) -> Reply:
        self._turn = (self._turn + 1) % len(self.clients)
        return await send(self.clients[self._turn], body, self.secrets, {"x-ledger-key": key}, timeout)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def make_clients(base_url: str, api_key: str, timeout: float, concurrency: int) -> list[openai.AsyncOpenAI]:
    shards = max(1, -(-concurrency // CONNECTIONS_PER_CLIENT))
    per = -(-concurrency // shards)
    return [make_client(base_url, api_key, timeout, per) for _ in range(shards)]


def make_client(base_url: str, api_key: str, timeout: float, concurrency: int) -> openai.AsyncOpenAI:
    import httpx2
    import openai

    limits = httpx2.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    http = openai.DefaultAsyncHttpxClient(limits=limits, timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
                                          verify=tls_context())
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout, http_client=http)


async def send(client: openai.AsyncOpenAI, body: dict[str, Any], secrets: tuple[str, ...],
               headers: dict[str, str] | None = None, timeout: float | None = None) -> Reply:
    """One request; ``timeout`` (seconds) is a deadline for all of it, connect to last byte."""
    import httpx2
    import openai

    start = time.perf_counter()
    options = {"headers": headers} if headers else {}
    try:
        async with asyncio.timeout(timeout):
            response = await client.post(_PATH, cast_to=httpx2.Response, content=encode_body(body), options=options)
        content = response.content
        pause = ratelimit_pause(response.headers)
    except TimeoutError:
        raise EndpointError("timeout", f"no complete reply within {timeout:g} s", retryable=True) from None
    except openai.APIStatusError as exc:
        raise status_error(exc.status_code, str(exc.message), exc.response.headers, secrets) from None
    except openai.APITimeoutError:
        raise EndpointError("timeout", "request timed out", retryable=True) from None
    except openai.APIConnectionError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
        raise EndpointError("connection", redact(f"connection failed: {cause}", secrets), retryable=True) from None
    latency = time.perf_counter() - start
    return decode_reply(content, latency, redactor(secrets, bearer=False))._replace(pause=pause)
