"""The default transport: one request to an OpenAI-compatible endpoint over aiohttp, the
body encoded and the reply decoded with msgspec. It exists for speed: the ``openai`` SDK's
per-request machinery (request options, httpx's connection pool scan, typed responses)
costs several times the CPU of the request itself, so a client on one core used a fifth of
what a local server can serve. The SDK stays for everything else (``GET /models``, files,
batches) and as ``--transport openai``.

What a user relied on with the SDK is kept, and checked for both by the transport contract
test (tests/test_transport_contract.py):

* the body sent is byte for byte ``msgspec.json.encode`` of the body the ``started`` event
  logs (the SDK transport sends the same bytes);
* errors are classified by completion.py, as for every transport: 408/409/429/5xx retried,
  ``Retry-After``/``x-ratelimit-*`` read, a reply that is not a chat completion is
  ``malformed_response``, a dropped connection ``connection``, no reply in time ``timeout``;
* ``timeout`` bounds the whole request, connect to last byte (a body trickling a byte a
  second never resets it);
* TLS with httpx's default context (the same certificates the SDK used);
* ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY`` from the environment, read
  once per endpoint with the standard library's rules (aiohttp's own ``trust_env`` would
  also read ``~/.netrc`` on every request, in a thread);
* ``Authorization: Bearer KEY`` and nothing of the key in any message: errors are redacted,
  and no part of the request (whose headers hold the key) is read into one.
"""

from __future__ import annotations

import asyncio
import functools
import math
import ssl
import time
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from llm_ledger.ledger import __version__
from llm_ledger.ledger.errors import EndpointError

from .completion import decode_reply, error_message, ratelimit_pause, status_error
from .redaction import redact, redactor
from .transport import Reply, TransportSpec

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HttpTransport", "encode_body", "proxy_for", "tls_context"]

_encode = msgspec.json.Encoder().encode


def encode_body(body: dict[str, Any]) -> bytes:
    """The bytes every HTTP transport sends: ``body`` as JSON, which has no NaN or infinity.
    msgspec writes those as ``null``, which would send something the ``started`` event does
    not say, so they are refused (a ValueError, as the SDK's encoder raised: the item fails
    as an internal error, nothing is sent). Only a body with a ``null`` is walked."""
    data = _encode(body)
    if b"null" in data and _non_finite(body):
        raise ValueError("Out of range float values are not JSON compliant (NaN or infinity in the request)")
    return data


def _non_finite(value: Any) -> bool:
    if type(value) is float:
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


_PATH = "/chat/completions"
_CONNECT = 10.0  # seconds: a connection that is not up by then will not be


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``, with ``NO_PROXY`` honoured (the rules
    of ``urllib`` and httpx: ``HTTPS_PROXY`` for https, ``HTTP_PROXY`` for http, then
    ``ALL_PROXY``)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not proxies or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings (the SDK's), made once: each pool would otherwise load
    the system's certificate store again (about 20 ms each)."""
    import httpx2

    return httpx2.create_ssl_context()


class HttpTransport:
    """One endpoint: one aiohttp session (its connection pool), made on first use inside
    the running loop."""

    def __init__(self, spec: TransportSpec) -> None:
        self.base = spec.url.rstrip("/")
        self.secrets = spec.secrets
        self.concurrency = spec.concurrency
        self.timeout = spec.timeout
        self.proxy = proxy_for(spec.url)
        self.headers = {"Authorization": f"Bearer {spec.api_key}", "Content-Type": "application/json",
                        "Accept": "application/json", "User-Agent": f"llm-ledger/{__version__}"}
        self._red = redactor(spec.secrets, bearer=False)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        # the context even for an http:// base URL: a redirect to https must still be verified
        connector = aiohttp.TCPConnector(limit=self.concurrency + 8, ssl=tls_context())
        self._session = aiohttp.ClientSession(connector=connector, headers=self.headers, trust_env=False,
                                              timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(self.timeout, _CONNECT)),
                                              skip_auto_headers=("User-Agent",))
        return self._session

    async def send(self, body: dict[str, Any], key: str, timeout: float | None) -> Reply:
        start = time.perf_counter()
        status, headers, content = await self.request("POST", _PATH, timeout, data=encode_body(body), headers={"x-ledger-key": key})
        if not 200 <= status < 300:  # any 2xx is a reply, as for the SDK
            raise status_error(status, error_message(status, content), headers, self.secrets)
        reply = decode_reply(content, time.perf_counter() - start, self._red)
        return reply._replace(pause=ratelimit_pause(headers))

    async def request(self, method: str, path: str, timeout: float | None, **options: Any) -> tuple[int, Any, bytes]:
        """One exchange with the endpoint: (status, headers, body), or the ``EndpointError``
        of a timeout or a connection failure. ``send``'s, and preflight's ``GET /models``."""
        import aiohttp

        session = self._session or self._open()
        try:
            async with asyncio.timeout(timeout):
                async with session.request(method, self.base + path, proxy=self.proxy, **options) as response:
                    return response.status, response.headers, await response.read()
        except aiohttp.ServerTimeoutError:  # before TimeoutError, which it also is
            raise EndpointError("timeout", "could not connect in time", retryable=True) from None
        except TimeoutError:
            raise EndpointError("timeout", f"no complete reply within {timeout:g} s", retryable=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise EndpointError("connection", redact(f"connection failed: {_cause(exc)}", self.secrets), retryable=True) from None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _cause(exc: BaseException) -> str:
    """The kind of connection failure, never its full text (which may quote a proxy URL
    with credentials, or the request)."""
    return type(exc).__name__
