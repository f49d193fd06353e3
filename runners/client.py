"""One request to an OpenAI-compatible endpoint through the ``openai`` SDK's async client.

The SDK's own retries are off (``max_retries=0``): retries are ours (retry.py), so that
every attempt becomes events. The request goes through the client's generic ``post`` with
the body exactly as the ``started`` event logs it (``chat.completions.create`` would first
run its typed-parameter transform over every message, a no-op for a JSON body that cost
about a quarter of the client's CPU per request). The reply body is decoded by us from the
raw HTTP response: we keep the exact JSON for the log and notice malformed replies, which
the SDK would otherwise hand back as garbage objects or plain strings. Status, timeout and
connection errors are the SDK's, as with ``create``.

Every failure becomes an ``EndpointError`` whose message has been redacted: the API key
(in every form redaction.py knows) and any ``Bearer`` token are replaced, and nothing from
the request (whose headers hold the key) is ever read into a message. A reply is redacted
twice: its bytes before decoding, and every string of the decoded JSON after (escapes such
as PHP's ``\\/`` only turn into the key once decoded).

``timeout`` bounds the whole request, connect to last byte: httpx's own timeouts are per
operation (a body that trickles a byte a second never trips a read timeout of 60 s).
A reply that cannot be decoded at all (malformed, or nested deeper than the decoder
allows) is a ``malformed_response``, retried like any broken reply.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from llm_ledger.ledger.errors import EndpointError

from .redaction import Redactor, redactor

if TYPE_CHECKING:  # the SDK takes ~0.5 s to import: only a session that sends pays for it
    import openai

__all__ = ["Reply", "make_client", "make_clients", "send", "redact"]

_decode = msgspec.json.Decoder().decode
_PATH = "/chat/completions"



class Reply(NamedTuple):
    text: str
    finish_reason: str | None
    usage: dict[str, int] | None
    raw: dict[str, Any]
    latency: float
    pause: float | None = None  # x-ratelimit-remaining-* hit 0: hold off this long


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` without the secrets in any form, nor any Bearer token."""
    return redactor(secrets).text(text)


# httpcore's pool looks at every pooled connection on each request, so its cost per request
# grows with the pool; several small pools (clients) keep that scan short at high concurrency.
CONNECTIONS_PER_CLIENT = 8


def make_clients(base_url: str, api_key: str, timeout: float, concurrency: int) -> list[openai.AsyncOpenAI]:
    shards = max(1, -(-concurrency // CONNECTIONS_PER_CLIENT))
    per = -(-concurrency // shards)
    return [make_client(base_url, api_key, timeout, per) for _ in range(shards)]


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings, made once: each client would otherwise load the
    system's certificate store again (about 20 ms per client and shard)."""
    import httpx2

    return httpx2.create_ssl_context()


def make_client(base_url: str, api_key: str, timeout: float, concurrency: int) -> openai.AsyncOpenAI:
    import httpx2
    import openai

    limits = httpx2.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    http = openai.DefaultAsyncHttpxClient(limits=limits, timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
                                          verify=_tls_context())
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
            response = await client.post(_PATH, cast_to=httpx2.Response, body=body, options=options)
        content = response.content
        pause = ratelimit_pause(response.headers)
    except TimeoutError:
        raise EndpointError("timeout", f"no complete reply within {timeout:g} s", retryable=True) from None
    except openai.APIStatusError as exc:
        raise _status_error(exc, secrets) from None
    except openai.APITimeoutError:
        raise EndpointError("timeout", "request timed out", retryable=True) from None
    except openai.APIConnectionError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
        raise EndpointError("connection", redact(f"connection failed: {cause}", secrets), retryable=True) from None
    latency = time.perf_counter() - start
    return _reply(content, latency, redactor(secrets, bearer=False))._replace(pause=pause)


def _status_error(exc: openai.APIStatusError, secrets: tuple[str, ...]) -> EndpointError:
    status = exc.status_code
    retryable = status in (408, 409, 429) or status >= 500
    error_type = "rate_limit" if status == 429 else "server_error" if status >= 500 else "http_error"
    return EndpointError(error_type, redact(str(exc.message), secrets), status=status, retryable=retryable,
                         retry_after=_retry_after(exc.response), pause=ratelimit_pause(exc.response.headers))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """'6m0s', '1.5s', '20ms' or plain seconds, as OpenAI's x-ratelimit-reset-* send them."""
    try:
        return float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        return sum(float(n) * _UNIT[u] for n, u in parts) if parts else None


def ratelimit_pause(headers: Any) -> float | None:
    """Seconds to hold off when the reply says a request or token budget is used up."""
    pause = None
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if remaining is not None and reset and remaining.strip() == "0":
            seconds = parse_duration(reset.strip())
            if seconds is not None:
                pause = max(pause or 0.0, min(seconds, 120.0))
    return pause


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                when = _http_date(value)
                if when is not None:
                    return when
    return None


def _http_date(value: str) -> float | None:
    """Seconds until an HTTP-date Retry-After ("Wed, 21 Oct 2026 07:28:00 GMT")."""
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _Completion(msgspec.Struct):
    """The fields we use, with their types: anything else in a 200 is a malformed reply."""

    choices: list[_Choice]
    usage: _Usage | None = None


def _reply(content: bytes, latency: float, red: Redactor) -> Reply:
    """Decode, check and redact a 200's body. What cannot be decoded is a malformed reply;
    what can is redacted string by string (the key may hide behind JSON escapes)."""
    try:
        content = red.bytes(content)
        data = _decode(content)
        if red.body_may_hold(content):
            data = red.value(data)
        completion = msgspec.convert(data, _Completion)
        choice = completion.choices[0]
    except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
        raise EndpointError("malformed_response", f"reply is not a chat completion: {_first_line(exc)}", retryable=True) from None
    except RecursionError:
        raise EndpointError("malformed_response", "reply is not a chat completion: JSON nested too deeply to decode",
                            retryable=True) from None
    usage = msgspec.to_builtins(completion.usage) if completion.usage else None
    return Reply(choice.message.content or "", choice.finish_reason, usage, data, latency)


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
