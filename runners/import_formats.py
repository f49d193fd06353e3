"""The files ``ledger import`` reads, one reader per format, each yielding ``Record``s.

``responses-jsonl``: one JSON object per line (blank lines skipped):

* the item's id: ``id`` or ``item_id`` (a string or an integer);
* the prompt: ``prompt`` (a string, or a list of content parts: sent as one user message) or
  ``messages`` (a chat: a list of ``{"role", "content"}``); a failed line needs none (ledger
  writes a row refused before any request, e.g. by ``--max-context``, with a null prompt);
* the reply: ``response`` (a string). A line whose ``response`` is null or missing and that
  has an ``error`` (a string, or an object with a ``message``) is a failed item;
* optionally ``expected``, ``sample`` (an integer >= 0; default 0), ``model`` (a string),
  ``usage`` (``prompt_tokens``, ``completion_tokens``, ``total_tokens``; or ``input_tokens``,
  ``output_tokens``) or the same three counts as fields of their own (an export's columns),
  ``latency`` (seconds, a number >= 0);
* a string ``expected`` that is the JSON text of a list or an object (an export writes a
  non-string ``expected`` as its JSON text) is read as that list or object: a list means any
  of its values counts, as in a dataset. Other such text (``true``, ``42``) stays text -- a
  number scores the same either way, but a boolean for ``--parser yesno`` does not: with
  ``--dataset``, an ``expected`` that is the export's text of the item's value is that value;
  ``responses.jsonl`` keeps every value's type;
* ``conversation`` (a multi-turn row's every message, its last reply included, as ledger
  writes it) is the request when there are no ``messages``: it is all of it, where ``prompt``
  is only the last user message;
* an ``error`` string of the form ``type: message`` or ``type: message (HTTP n)`` (as ledger
  writes a failure) keeps its type and status; any other error text is the message;
* anything else becomes the item's metadata (a ``metadata`` object's fields too, and an
  export's ``metadata.<name>`` column -- a field named like one of its own columns -- as
  ``<name>``), except what ledger derives from the reply and the log and would work out anew
  for the imported run: ``parsed`` (re-parsed by ``--parser``), ``correct``,
  ``correct_reviewed``, ``attempts``, ``finished_at``, ``seq``, ``line``, ``run_id``,
  ``imported``, and ``error`` beside a reply; ``cached_from`` (``cached_from_run``/
  ``cached_from_seq`` in an export) is kept as the reply's provenance: the original copied it
  from the cache, and the imported run does not count it as paid either. So ledger's own ``responses.jsonl`` and its exports (``ledger export RUN
  jsonl|csv``) import as they are, every column read as what it is, none as metadata.

``csv``: a header row and the same columns; ``messages``, ``usage``, ``metadata`` and
``conversation`` cells hold JSON; an empty cell is no value. Line numbers count the header as
line 1; a quoted value that is never closed, or text after a closing quote, is an error (the
csv module's strict mode), not a value that swallows the rest of the file.

``openai-batch-output``: the Batch API's output file: ``custom_id``, ``response``
(``status_code``, ``body``: a chat completion) and ``error``. A line with an ``error``, or a
status other than 200, is a failed item. The prompts and expected answers are not in this
file: ``--dataset`` (the batch's input file, or any dataset with the same ids) gives them;
``custom_id`` is the dataset's id, or ``ID#sN`` for sample N (as ``ledger export
openai-batch`` writes it).

With ``--dataset``, every format takes from the dataset's item of the same id what a line
lacks: the prompt, ``expected``, metadata; the item's dataset line orders the run's rows.
Every problem is ``file:line: what is wrong`` (``InputError``, exit 2).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import CachedFrom, Usage

from .dataset import Item

__all__ = ["Record", "READERS", "FORMATS"]

_decode = msgspec.json.Decoder().decode
_probe = msgspec.msgpack.Encoder().encode
_as_text = msgspec.json.Encoder(order="deterministic").encode  # as the export writes a non-string value
_TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")
_OWN = {"id", "item_id", "prompt", "messages", "conversation", "response", "expected", "sample", "model", "usage",
        *_TOKENS, "latency", "error", "metadata"}
# What ledger works out itself from the reply and the log (responses.jsonl's keys, the export's
# columns): the imported run's own are worked out anew, so these are neither kept nor metadata.
_DERIVED = {"parsed", "correct", "correct_reviewed", "attempts", "finished_at", "seq", "line", "run_id",
            "cached_from", "cached_from_run", "cached_from_seq", "imported"}
_RENAMED = "metadata."  # the export's column for a metadata field named like one of its own columns
_FAILURE = re.compile(r"^([A-Za-z_][\w.-]*): (.+?)(?: \(HTTP (\d{3})\))?$", re.DOTALL)  # as fold.failure_text writes it
_SAMPLE_SUFFIX = re.compile(r"^(.*)#s(\d+)$")


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """One imported (item, sample): its request, and its reply or its failure."""

    line: int  # in the imported file
    item_id: str
    sample: int = 0
    messages: list[dict[str, Any]] | None = None  # None: not known (a batch output without --dataset)
    response: str | None = None  # None: a failure
    expected: Any = None
    model: str = ""
    usage: Usage | None = None
    latency: float = 0.0
    metadata: dict[str, Any] = {}
    order: int = 0  # the dataset line when --dataset has the item, else ``line``: the rows' order
    finish_reason: str | None = None
    raw: dict[str, Any] | None = None  # the reply body (openai-batch-output)
    error_type: str = ""
    message: str = ""
    status: int | None = None
    turn: int = 0  # the replies before this one in ``messages`` (a multi-turn conversation's last turn)
    cached_from: CachedFrom | None = None  # the original copied this reply from the cross-run cache: not paid


Items = dict[str, Item]


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    try:
        with fs.open_file(path, "rb") as f:
            yield from enumerate(f, 1)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a directory") from exc


def _objects(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            value = _decode(raw)
        except msgspec.DecodeError as exc:
            raise InputError(f"{path}:{n}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise InputError(f"{path}:{n}: expected a JSON object, got {type(value).__name__}")
        yield n, value


def read_jsonl(path: str, items: Items | None) -> Iterator[Record]:
    for n, record in _objects(path):
        yield _record(f"{path}:{n}", n, record, items)


def read_csv(path: str, items: Items | None) -> Iterator[Record]:
    fed = 0  # the last line handed to the csv module: where its error is

    def text() -> Iterator[str]:
        nonlocal fed
        for n, raw in _lines(path):
            fed = n
            try:
                yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{n}: invalid UTF-8 ({exc.reason})") from None

    # strict: an unclosed quote is an error, not a value that runs to the end of the file
    reader = csv.DictReader(text(), strict=True)
    while True:
        begun = reader.line_num + 1  # the line the next row (or the header) starts on
        try:
            if reader.fieldnames is None:  # an empty file: no header, no rows
                return
            begun = reader.line_num + 1  # the header read, a row's
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "end of data" in str(exc):
                raise InputError(f"{path}:{begun}: a quoted value opened here is never closed "
                                 "(the file ends inside it)") from None
            raise InputError(f"{path}:{fed}: malformed CSV: {exc}") from None
        where = f"{path}:{reader.line_num}"
        if None in row:
            raise InputError(f"{where}: more values than header columns")
        yield _record(where, reader.line_num, _typed(where, row), items)


def _typed(where: str, row: dict[str, str | None]) -> dict[str, Any]:
    """A CSV row's cells as the JSON line would hold them: empty cells left out, JSON cells
    decoded, numbers read."""
    record: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
    for name in ("messages", "usage", "metadata", "conversation"):
        if name in record:
            try:
                record[name] = _decode(record[name])
            except msgspec.DecodeError:
                raise InputError(f"{where}: column '{name}' must hold JSON") from None
    for name, kind in (("sample", int), ("latency", float), *((t, int) for t in _TOKENS)):
        if name in record:
            try:
                record[name] = kind(record[name])
            except ValueError:
                raise InputError(f"{where}: column '{name}' must be a number (got {record[name]!r})") from None
    return record


def _record(where: str, line: int, record: dict[str, Any], items: Items | None) -> Record:
    item_id = _item_id(where, record)
    item = items.get(item_id) if items is not None else None
    response, failure = _reply(where, record)
    messages = _request(where, record, item, items is not None, response is None)
    metadata = {**(item.metadata if item else {}), **_metadata(where, record)}
    expected = _expected(record["expected"], item) if "expected" in record else (item.expected if item else None)
    usage = _usage(where, record.get("usage")) if record.get("usage") is not None else _flat_usage(where, record)
    fields = dict(line=line, item_id=item_id, sample=_sample(where, record.get("sample", 0)), messages=messages,
                  response=response, expected=expected, model=_model(where, record.get("model")), usage=usage,
                  latency=_latency(where, record.get("latency")), metadata=metadata,
                  order=item.line if item else line, turn=sum(m["role"] == "assistant" for m in messages or ()),
                  cached_from=_cached_from(where, record) if response is not None else None, **failure)
    return _storable(where, Record(**fields))


def _item_id(where: str, record: dict[str, Any]) -> str:
    value = record.get("id")
    if value is None or value == "":
        value = record.get("item_id")
    if value is None or value == "":
        raise InputError(f"{where}: needs an id ('id' or 'item_id')")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where}: the id must be a string or an integer, got {type(value).__name__}")
    return str(value)


def _request(where: str, record: dict[str, Any], item: Item | None, searched: bool,
             failed: bool) -> list[dict[str, Any]] | None:
    """The request's messages; None for a failure without them (ledger writes a row refused
    before any request, e.g. by ``--max-context``, with a null prompt)."""
    if record.get("messages") in (None, "") and record.get("conversation") not in (None, ""):
        return _conversation(where, record["conversation"], record.get("response"))
    present = [k for k in ("prompt", "messages") if record.get(k) not in (None, "")]
    if len(present) == 2:
        raise InputError(f"{where}: has both 'prompt' and 'messages'; keep one")
    if not present:
        if item is not None:
            return [m for turn in item.turns for m in turn]
        if failed:  # e.g. refused before any request was made
            return None
        hint = " (and --dataset has no item with this id)" if searched else ""
        raise InputError(f"{where}: needs the prompt ('prompt' or 'messages'){hint}")
    if present[0] == "prompt":
        prompt = record["prompt"]
        if not isinstance(prompt, str) and not (isinstance(prompt, list) and all(isinstance(p, dict) for p in prompt)):
            raise InputError(f"{where}: 'prompt' must be a string (or a list of content parts), got {type(prompt).__name__}")
        return [{"role": "user", "content": prompt}]
    return _messages(where, record["messages"])


def _conversation(where: str, value: Any, response: Any) -> list[dict[str, Any]]:
    """The request of a row ledger wrote: its conversation without the reply that ends it."""
    messages = _messages(where, value, "conversation")
    last = messages[-1]
    if last["role"] == "assistant" and last["content"] == response and len(messages) > 1:
        messages = messages[:-1]
    return messages


def _messages(where: str, value: Any, name: str = "messages") -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: '{name}' must be a non-empty list")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InputError(f"{where}: {name}[{i}] needs 'role' (a string) and 'content'")
    return value


def _reply(where: str, record: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The reply text, or None and the failure's fields."""
    response = record.get("response")
    if isinstance(response, str):
        return response, {}
    if response is not None:
        raise InputError(f"{where}: 'response' must be a string (the reply's text), got {type(response).__name__}")
    error = record.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        raise InputError(f"{where}: needs 'response' (the reply's text), or an 'error' for an item that failed")
    if isinstance(error, dict):
        kind = error.get("code") or error.get("type")
        return None, {"error_type": str(kind or "imported_error"), "message": message}
    written = _FAILURE.match(message)  # ledger's own failure text: the same text again
    if written:
        kind, text, status = written.groups()
        return None, {"error_type": kind, "message": text, "status": int(status) if status else None}
    return None, {"error_type": "imported_error", "message": message}


def _expected(value: Any, item: Item | None) -> Any:
    """An export's text of a list or an object is that list or object again (a list: any of
    its values counts); the export's text of the ``--dataset`` item's value is that value (a
    ``true`` that was a boolean, for ``--parser yesno``); any other value is kept as it is."""
    if item is not None and isinstance(value, str) and not isinstance(item.expected, str) and item.expected is not None:
        if value == _as_text(item.expected).decode():
            return item.expected
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            decoded = _decode(value)
        except msgspec.DecodeError:
            return value
        if isinstance(decoded, (list, dict)):
            return decoded
    return value


def _metadata(where: str, record: dict[str, Any]) -> dict[str, Any]:
    nested = record.get("metadata", {})
    if not isinstance(nested, dict):
        raise InputError(f"{where}: 'metadata' must be an object")
    rest: dict[str, Any] = {}
    for key, value in record.items():
        if key in _OWN or key in _DERIVED:
            continue
        if key.startswith(_RENAMED) and (key[len(_RENAMED):] in _OWN or key[len(_RENAMED):] in _DERIVED):
            key = key[len(_RENAMED):]  # the export's name for a field named like one of its columns
        rest[key] = value
    return {**nested, **rest}


def _sample(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 31:
        raise InputError(f"{where}: 'sample' must be an integer >= 0, got {value!r}")
    return value


def _model(where: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{where}: 'model' must be a string, got {type(value).__name__}")
    return value


def _usage(where: str, value: Any) -> Usage | None:
    if value is None:
        return None
    if isinstance(value, dict) and not any(k in value for k in _TOKENS):  # the Responses API's names
        value = {"prompt_tokens": value.get("input_tokens", 0), "completion_tokens": value.get("output_tokens", 0),
                 "total_tokens": value.get("total_tokens", 0)}
    counts = [value.get(k, 0) if isinstance(value, dict) else None for k in _TOKENS]
    if not isinstance(value, dict) or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 62
                                              for c in counts):
        raise InputError(f"{where}: 'usage' must be an object of token counts "
                         f"({', '.join(_TOKENS)}: integers >= 0)")
    prompt, completion, total = counts
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total or prompt + completion)


def _flat_usage(where: str, record: dict[str, Any]) -> Usage | None:
    """Usage from the token counts as fields of their own (an export's columns); None when
    there are none (a failed row's are null)."""
    counts = {t: record.get(t) for t in _TOKENS}
    if all(c is None for c in counts.values()):
        return None
    for name, count in counts.items():
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 1 << 62):
            raise InputError(f"{where}: '{name}' must be an integer >= 0, got {count!r}")
    return _usage(where, {t: c for t, c in counts.items() if c is not None})


def _cached_from(where: str, record: dict[str, Any]) -> CachedFrom | None:
    """A reply the original run copied from the cache (``responses.jsonl``'s ``cached_from``,
    the export's ``cached_from_run``/``cached_from_seq``): kept as such, so that the imported
    run does not count its tokens as paid. An export has no time for it: 0 (the oldest, so
    that ``--cache-max-age`` never serves it as younger than it is)."""
    origin = record.get("cached_from")
    run, seq, ts = (origin.get("run"), origin.get("seq"), origin.get("ts", 0.0)) if isinstance(origin, dict) else (
        record.get("cached_from_run"), record.get("cached_from_seq"), 0.0)
    if run in (None, ""):
        return None
    try:
        return CachedFrom(run=str(run), seq=int(seq or 0), ts=float(ts or 0.0))
    except (TypeError, ValueError):
        raise InputError(f"{where}: 'cached_from' must name a run and the seq of its reply, got {run!r}, {seq!r}") from None


def _latency(where: str, value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InputError(f"{where}: 'latency' must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _storable(where: str, record: Record) -> Record:
    """Everything of a record goes into the log (MessagePack): refuse what it cannot hold."""
    try:
        _probe((record.expected, record.metadata, record.messages, record.raw))
    except (msgspec.EncodeError, OverflowError, TypeError) as exc:
        raise InputError(f"{where}: a value cannot be stored in the log ({exc}; integers must fit in 64 bits)") from None
    return record


# -- the Batch API's output file ----------------------------------------------------------


def read_batch_output(path: str, items: Items | None) -> Iterator[Record]:
    for n, line in _objects(path):
        where = f"{path}:{n}"
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise InputError(f"{where}: needs 'custom_id' (a string): is this a Batch API output file?")
        item_id, sample, item = _batch_key(where, custom_id, items)
        response = line.get("response")
        if response is not None and not isinstance(response, dict):
            raise InputError(f"{where}: 'response' must be an object")
        reply = _batch_reply(where, line.get("error"), response)
        messages = [m for turn in item.turns for m in turn] if item is not None else None
        yield _storable(where, Record(line=n, item_id=item_id, sample=sample, messages=messages,
                                      expected=item.expected if item else None,
                                      metadata=dict(item.metadata) if item else {}, order=item.line if item else n,
                                      **reply))


def _batch_key(where: str, custom_id: str, items: Items | None) -> tuple[str, int, Item | None]:
    if items is None:
        return custom_id, 0, None
    if custom_id in items:
        return custom_id, 0, items[custom_id]
    match = _SAMPLE_SUFFIX.match(custom_id)
    if match and match.group(1) in items:
        return match.group(1), int(match.group(2)), items[match.group(1)]
    raise InputError(f"{where}: custom_id {custom_id!r} is not an id of --dataset")


def _batch_reply(where: str, error: Any, response: dict[str, Any] | None) -> dict[str, Any]:
    """A line's reply fields (text, usage, model ...) or its failure's."""
    status = response.get("status_code") if response else None
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise InputError(f"{where}: 'response.status_code' must be an integer")
    body = response.get("body") if response else None
    if error is not None:
        if not isinstance(error, dict):
            raise InputError(f"{where}: 'error' must be an object or null")
        return {"error_type": str(error.get("code") or "batch_error"), "message": str(error.get("message") or ""),
                "status": status}
    if response is None:
        raise InputError(f"{where}: needs 'response' or 'error'")
    if status != 200:
        detail = body.get("error") if isinstance(body, dict) else None
        message = detail.get("message") if isinstance(detail, dict) else None
        return {"error_type": "http_error", "message": str(message or f"HTTP {status}"), "status": status}
    return _completion(where, body)


def _completion(where: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InputError(f"{where}: 'response.body' must be a chat completion object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise InputError(f"{where}: 'response.body.choices' must be a non-empty list")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if content is not None and not isinstance(content, str):
        raise InputError(f"{where}: 'response.body.choices[0].message.content' must be a string or null")
    usage = body.get("usage")
    usage = {k: usage[k] for k in _TOKENS if k in usage} if isinstance(usage, dict) else None
    reason = choices[0].get("finish_reason")
    return {"response": content or "", "usage": _usage(where, usage), "model": _model(where, body.get("model")),
            "finish_reason": reason if isinstance(reason, str) else None, "raw": body}


READERS: dict[str, Callable[[str, Items | None], Iterator[Record]]] = {
    "responses-jsonl": read_jsonl,
    "csv": read_csv,
    "openai-batch-output": read_batch_output,
}
FORMATS = tuple(READERS)
