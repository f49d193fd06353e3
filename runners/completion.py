"""The OpenAI-compatible wire format of a reply, shared by every transport that speaks it:
a 200's body decoded into a ``Reply``, an error status turned into an ``EndpointError``,
and the hold-off headers (``Retry-After``, ``x-ratelimit-*``) read.

A reply body is decoded by us, not by an SDK: the exact JSON is kept for the log and a
malformed reply is noticed (an SDK would hand back garbage objects or plain strings). It is
redacted twice: its bytes before decoding, and every string of the decoded JSON after
(escapes such as PHP's ``\\/`` only turn into the key once decoded). A reply that cannot be
decoded at all (malformed, or nested deeper than the decoder allows) is a
``malformed_response``, retried like any broken reply.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from llm_ledger.ledger.errors import EndpointError

from .redaction import Redactor, redact
from .transport import Reply

__all__ = ["decode_reply", "error_message", "status_error", "ratelimit_pause", "retry_after", "parse_duration"]

_decode = msgspec.json.Decoder().decode


def status_error(status: int, message: str, headers: Mapping[str, str], secrets: tuple[str, ...]) -> EndpointError:
    """An HTTP error status as the failure it is: 408, 409, 429 and 5xx are retried."""
    retryable = status in (408, 409, 429) or status >= 500
    error_type = "rate_limit" if status == 429 else "server_error" if status >= 500 else "http_error"
    return EndpointError(error_type, redact(message, secrets), status=status, retryable=retryable,
                         retry_after=retry_after(headers), pause=ratelimit_pause(headers))


def error_message(status: int, body: bytes) -> str:
    """An error reply's message as the SDK words it: the status, then the ``message`` of the
    body's ``error`` object; a body without one is quoted as text (cut to 300 characters).
    Redacted by ``status_error`` like every message."""
    try:
        data = _decode(body)
    except msgspec.DecodeError:
        data = None
    error = data.get("error", data) if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = " ".join(body.decode(errors="replace").split())[:300]
    return f"Error code: {status} - {message}" if message else f"Error code: {status}"


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


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (``Retry-After[-Ms]``: seconds or an HTTP-date)."""
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


def decode_reply(content: bytes, latency: float, red: Redactor) -> Reply:
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
