"""Look before paying: every endpoint answers ``GET /models`` and lists the model.

Runs before anything is written; any problem is an InputError (one line, exit 2). Servers
without ``/models`` are accepted with ``--no-preflight``. The key never appears in the
message (only the endpoint URL and the server's own words, redacted).
"""

from __future__ import annotations

import asyncio

import openai

from ledger.errors import InputError

from .client import make_client, redact

__all__ = ["check_endpoints"]


def check_endpoints(urls: list[str], model: str, api_key: str, timeout: float) -> None:
    asyncio.run(_check_all(urls, model, api_key, min(timeout, 15.0)))


async def _check_all(urls: list[str], model: str, api_key: str, timeout: float) -> None:
    for url in urls:
        await _check(url, model, api_key, timeout)


async def _check(url: str, model: str, api_key: str, timeout: float) -> None:
    client = make_client(url, api_key, timeout, 1)
    try:
        page = await client.models.list()
        ids = [m.id for m in page.data]
    except openai.APIStatusError as exc:
        hint = " (use --no-preflight for servers without /models)" if exc.status_code == 404 else ""
        raise InputError(f"{url}: GET /models failed with HTTP {exc.status_code}: {redact(str(exc.message), (api_key,))}{hint}") from None
    except openai.APIConnectionError as exc:
        raise InputError(f"{url}: cannot reach the endpoint ({type(exc.__cause__ or exc).__name__}); "
                         "check --base-url, or use --no-preflight") from None
    finally:
        await client.close()
    if ids and model not in ids:
        shown = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
        raise InputError(f"{url}: model {model!r} is not served here (available: {shown})")
