"""A reply that arrived, as events the log can always hold.

Once a reply's bytes have arrived it has been paid for. Its events must reach the log --
or its attempt must become a ``failed`` event that says why -- and one bad reply must never
stop the run. The writer refuses a submission it cannot encode (UnencodableEventError; a
refused reply would be requested, and paid for, again on every resume). The engine then
sends the reply through ``reply_events``, which checks its events with the log's own codec
(encode, then decode, as the writer does) and degrades them step by step, keeping what can
be kept (only refused replies pay for this second check):

1. as received;
2. made plain: integers MessagePack cannot hold (beyond 64 bits) become strings, strings
   that are not valid Unicode (lone surrogates) get U+FFFD; usage counts outside
   [0, 2**63) are dropped (such a count is not a count);
3. without the raw body (the text, finish reason and usage stay);
4. with the text made plain too.

If even that fails ``Unloggable`` is raised and the engine records a failed attempt.
"""

from __future__ import annotations

from typing import Any

from llm_ledger.ledger.events import Event, Parsed, Response, Usage, decode_many, encode_many
from llm_ledger.runners.parsers import ParseResult

__all__ = ["Unloggable", "reply_events", "plain", "loggable_result"]

_USAGE_MAX = 2**63  # a token count at or above this is garbage, not usage
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what MessagePack holds
_DEPTH = 200  # deeper values are kept as their repr: the log's decoder stops near 1,000 levels


class Unloggable(Exception):
    """A reply whose events cannot be made encodable even without the raw body."""


def encodable(events: list[Event]) -> bool:
    try:
        decode_many(encode_many(events))
        return True
    except Exception:  # EncodeError, OverflowError, UnicodeEncodeError, RecursionError, ...
        return False


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` with whatever MessagePack cannot hold made into something it can."""
    if isinstance(value, str):
        return _plain_str(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if depth >= _DEPTH:
        return _plain_str(repr(value)[:10_000])
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_plain_str(str(k)): plain(v, depth + 1) for k, v in value.items()}
    return _plain_str(repr(value)[:10_000])


def _plain_str(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def plain_usage(usage: dict[str, Any] | None) -> Usage | None:
    """The reported usage, or None when a count is not a plausible token count."""
    if not usage:
        return None
    values = [usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")]
    if all(isinstance(v, int) and 0 <= v < _USAGE_MAX for v in values):
        return Usage(prompt_tokens=values[0], completion_tokens=values[1], total_tokens=values[2])
    return None


def loggable_result(result: ParseResult) -> ParseResult:
    """A user parser may return anything; the log takes only plain data."""
    probe = Parsed(item_id="", value=result.value, error=result.error)
    if encodable([probe]):
        return result
    return ParseResult(False, None, f"parser returned a {type(result.value).__name__}, not plain data")


def reply_events(response: Response, parsed: Parsed | None) -> list[Event]:
    """``response`` (and its parse) as events the log accepts; see the module docstring."""
    tail: list[Event] = [parsed] if parsed is not None else []
    candidates = (
        lambda r: r,
        lambda r: _replace(r, raw=plain(r.raw), usage=_checked_usage(r.usage)),
        lambda r: _replace(r, raw=None, usage=_checked_usage(r.usage)),
        lambda r: _replace(r, raw=None, usage=_checked_usage(r.usage), text=_plain_str(r.text),
                           finish_reason=None if r.finish_reason is None else _plain_str(r.finish_reason)),
    )
    reasons = []
    for make in candidates:
        try:
            events = [make(response), *tail]
        except Exception as exc:  # a value too deep to walk, ...
            reasons.append(type(exc).__name__)
            continue
        if encodable(events):
            return events
    raise Unloggable("the reply cannot be recorded even without its raw body" + (f" ({', '.join(reasons)})" if reasons else ""))


def _checked_usage(usage: Usage | None) -> Usage | None:
    if usage is None:
        return None
    return plain_usage({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                        "total_tokens": usage.total_tokens})


def _replace(response: Response, **changes: Any) -> Response:
    import msgspec

    return msgspec.structs.replace(response, **changes)
