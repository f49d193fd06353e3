"""Look before paying: every endpoint answers ``GET /models`` and lists the model.

Runs before anything is written; any problem is an InputError (one line, exit 2). Servers
without ``/models`` are accepted with ``--no-preflight``. The key never appears in the
message (only the endpoint URL and the server's own words, redacted).

The request goes through the default transport's HTTP stack (the same TLS, proxy and auth
header as the run's requests, and no SDK to import). The reply is read by us: a 200 that is not an OpenAI model
list (``{}``, ``[]``, ``{"data": null}``, an HTML page) is refused in one line that says what
came back, instead of crashing on it or passing it as "no models".
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from llm_ledger.ledger.errors import EndpointError, InputError

from .completion import error_message
from .http_transport import HttpTransport
from .redaction import redact
from .transport import TransportSpec

__all__ = ["check_endpoints", "list_models"]

_SKIP = "use --no-preflight to skip this check"


def check_endpoints(urls: list[str], model: str, api_key: str, timeout: float) -> None:
    asyncio.run(_check_all(urls, model, api_key, min(timeout, 15.0)))


def list_models(url: str, api_key: str, timeout: float) -> list[str]:
    """The model ids ``url`` serves, from ``GET /models``."""
    return asyncio.run(_models(url, api_key, min(timeout, 15.0)))


async def _check_all(urls: list[str], model: str, api_key: str, timeout: float) -> None:
    for url in urls:
        ids = await _models(url, api_key, timeout)
        if ids and model not in ids:
            shown = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
            raise InputError(f"{url}: model {model!r} is not served here (available: {shown})")


async def _models(url: str, api_key: str, timeout: float) -> list[str]:
    endpoint = HttpTransport(TransportSpec(url, api_key, (api_key,), timeout, 1, {}))
    try:
        status, headers, body = await endpoint.request("GET", "/models", timeout)
    except EndpointError as exc:
        raise InputError(f"{url}: cannot reach the endpoint ({exc.message}); check --base-url, or use --no-preflight") from None
    finally:
        await endpoint.close()
    if status != 200:
        hint = f" ({_SKIP}: servers without /models)" if status == 404 else ""
        message = redact(error_message(status, body), (api_key,))
        raise InputError(f"{url}: GET /models failed with HTTP {status}: {message}{hint}")
    return _model_ids(url, body, headers.get("content-type", ""))


def _model_ids(url: str, body: bytes, content_type: str) -> list[str]:
    """``{"data": [{"id": ...}, ...]}`` -> the ids; anything else is an InputError saying what it was."""
    try:
        page: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        page = msgspec.UNSET
    data = page.get("data") if isinstance(page, dict) else None
    if isinstance(data, list) and all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
        return [m["id"] for m in data]
    raise InputError(f"{url}: GET /models answered HTTP 200 with {_described(page, body, content_type)}, "
                     f"not a model list; check --base-url, or {_SKIP}")


def _described(page: Any, body: bytes, content_type: str) -> str:
    if page is msgspec.UNSET:
        kind = content_type.split(";")[0].strip() or "no content type"
        return f"{len(body):,} bytes that are not JSON ({kind})" if body else "an empty body"
    if isinstance(page, dict):
        if "data" not in page:
            return "a JSON object without 'data'"
        data = page["data"]
        if not isinstance(data, list):
            return f"'data' = {'null' if data is None else type(data).__name__}"
        return "'data' entries without a string 'id'"
    return f"a JSON {_json_type(page)}"


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")
