"""A batch's output and error files into the per-request runner's events.

Each line (``custom_id``, ``response: {status_code, body}``, ``error``) becomes exactly what
the per-request runner records for one attempt: a 200 with a chat completion -> ``response``
(+ ``parsed`` on the item's last turn), decoded, checked and redacted by the same
``completion.decode_reply``; anything else -> ``failed``, typed and marked retryable by the
same ``completion.status_error`` (a 429 or 5xx is sent again in the next round). Lines are
matched by ``custom_id`` (the provider does not keep the input's order).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec

from llm_ledger.ledger.errors import EndpointError
from llm_ledger.ledger.events import Event, Failed, Parsed, Response

from .batch_chunks import Request
from .completion import decode_reply, error_message, status_error
from .durable import plain_usage
from .parsers import Parser
from .redaction import Redactor
from .runner import Work
from .transport import Reply

__all__ = ["Line", "Outcome", "lines_of", "outcome_of"]


class _Response(msgspec.Struct):
    status_code: int = 0
    body: msgspec.Raw = msgspec.Raw(b"null")


class Line(msgspec.Struct):
    custom_id: str
    response: _Response | None = None
    error: Any = None


_decode_line = msgspec.json.Decoder(Line).decode


class Outcome(NamedTuple):
    events: list[Event]
    reply: Reply | None  # the reply recorded, if any
    error: EndpointError | None  # else the failure recorded


def lines_of(data: bytes, unreadable: list[int] | None = None) -> Iterator[Line]:
    """The file's lines; one that is not a result line is skipped (its request, left without
    a result, is sent again like every unanswered one) and its number (1-based) appended to
    ``unreadable``, so that the runner says how many there were."""
    for n, raw in enumerate(data.splitlines(), 1):
        if raw.strip():
            try:
                yield _decode_line(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                if unreadable is not None:
                    unreadable.append(n)


def outcome_of(line: Line, request: Request, *, parser: Parser, red: Redactor, secrets: tuple[str, ...],
               endpoint: str, latency: float, last_try: bool) -> Outcome:
    work, turn = request.work, request.turn
    key = {"item_id": work.item.id, "sample": work.sample, "turn": turn, "attempt": request.attempt}
    try:
        reply = _reply(line, red, secrets, latency)
    except EndpointError as exc:
        final = not exc.retryable or last_try
        return Outcome([Failed(**key, error_type=exc.error_type, message=exc.message, status=exc.status,
                               retryable=exc.retryable, final=final, endpoint=endpoint)], None, exc)
    final = turn == len(work.item.turns) - 1
    response = Response(**key, text=reply.text, finish_reason=reply.finish_reason, usage=plain_usage(reply.usage),
                        latency=round(latency, 6), raw=reply.raw, endpoint=endpoint, final=final)
    events: list[Event] = [response]
    if final:
        events.append(parsed_event(work, turn, parser, reply.text))
    return Outcome(events, reply, None)


def parsed_event(work: Work, turn: int, parser: Parser, text: str) -> Parsed:
    result = parser(text)
    return Parsed(item_id=work.item.id, sample=work.sample, turn=turn, parser=parser.spec,
                  parser_version=parser.version, ok=result.ok, value=result.value, error=result.error)


def _reply(line: Line, red: Redactor, secrets: tuple[str, ...], latency: float) -> Reply:
    response = line.response
    if line.error or response is None or response.status_code != 200:
        status = response.status_code if response is not None and response.status_code else 500
        body = bytes(response.body) if response is not None else b""
        if line.error and not (response and response.status_code):
            error = line.error if isinstance(line.error, dict) else {"message": str(line.error)}
            body = msgspec.json.encode({"error": error})
        return _raise(status_error(status, error_message(status, body), {}, secrets))
    return decode_reply(bytes(response.body), latency, red)


def _raise(exc: EndpointError) -> Reply:
    raise exc
