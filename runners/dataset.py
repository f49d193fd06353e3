"""Datasets in: JSONL, CSV, Parquet and the OpenAI Batch API input format, streamed.

Each record becomes an ``Item``: an ``id`` (the record's ``id``, else ``custom_id``, else
its line number), the conversation it asks for, ``expected`` and the remaining fields as
metadata for ``--template``. The conversation comes from exactly one of:

* ``prompt``: one user message (rendered through ``--template`` when one is given);
* ``messages``: a ready chat (list of ``{"role", "content"}``);
* ``turns``: a list of user prompts, sent one after another, each after the previous replies;
* ``body.messages`` in the Batch API format (``custom_id``, ``body``); the other ``body``
  fields (temperature, max_tokens ...) become per-item request parameters.

``scan`` validates the whole file before any request is sent, and computes its sha256 and
item count, holding only a 64-bit hash per id (to find duplicates) in memory; ``iter_items``
streams it again for scheduling. Bad records are reported as ``file:line: what is wrong``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import string
from collections.abc import Iterator
from typing import Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError

__all__ = ["Item", "DatasetInfo", "scan", "iter_items", "template_fields", "interpret_escapes"]

_RESERVED = {"id", "prompt", "messages", "turns", "expected", "custom_id", "body", "method", "url"}
_json_decode = msgspec.json.Decoder().decode


class Item(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    line: int
    turns: list[list[dict[str, Any]]]  # per turn, the messages that turn adds
    expected: Any = None
    params: dict[str, Any] = {}
    metadata: dict[str, Any] = {}


class DatasetInfo(msgspec.Struct, frozen=True):
    path: str
    sha256: str
    items: int
    format: str


def _format(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".parquet"):
        return "parquet"
    raise InputError(f"{path}: unknown dataset format (use .jsonl, .csv or .parquet)")


MAX_TEMPLATE_WIDTH = 100_000  # characters a format spec may pad or cut to: more is a typo, not a prompt
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def interpret_escapes(template: str) -> str:
    """``\\n`` and ``\\t`` typed in a shell (``--template 'Q: {prompt}\\nA:'``) are a newline and
    a tab; ``\\\\`` is one backslash. Any other backslash is kept as typed."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], template)


def template_fields(template: str) -> set[str]:
    """The item fields a template names. Refuses what would fail or explode on every item:
    a malformed template, a field inside a format spec, a width beyond MAX_TEMPLATE_WIDTH."""
    try:
        parts = [(name, spec) for _, name, spec, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise InputError(f"--template: {exc}") from exc
    for name, spec in parts:
        _check_spec(name, spec or "")
    return {name.split(".")[0].split("[")[0] for name, _ in parts if name}


def _check_spec(name: str, spec: str) -> None:
    if not name:
        raise InputError("--template: '{}' names no field; write the field, e.g. {prompt}")
    if "{" in spec:
        raise InputError(f"--template: {{{name}:{spec}}}: fields inside a format spec are not supported")
    widths = [int(n) for n in re.findall(r"\d+", spec)]
    if widths and max(widths) > MAX_TEMPLATE_WIDTH:
        raise InputError(f"--template: {{{name}:{spec[:40]}}}: width {max(widths):,} is too large "
                         f"(at most {MAX_TEMPLATE_WIDTH:,} characters)")


def scan(path: str, template: str | None = None) -> DatasetInfo:
    """Validate every record; return sha256 and count. Raises InputError at the first bad one."""
    fmt = _format(path)
    seen: set[int] = set()
    count = 0
    for item in iter_items(path, template):
        _check_storable(path, item)
        h = int.from_bytes(hashlib.blake2b(item.id.encode(), digest_size=8).digest(), "little")
        if h in seen:
            raise InputError(f"{path}:{item.line}: duplicate id {item.id!r}")
        seen.add(h)
        count += 1
    if count == 0:
        raise InputError(f"{path}: the dataset has no items")
    return DatasetInfo(os.path.abspath(path), file_sha256(path), count, fmt)


_probe = msgspec.msgpack.Encoder().encode


def _check_storable(path: str, item: Item) -> None:
    """Everything of an item goes into the log (MessagePack): refuse what it cannot hold."""
    try:
        _probe((item.expected, item.params, item.turns, item.metadata))
    except (msgspec.EncodeError, OverflowError, TypeError) as exc:
        raise InputError(f"{path}:{item.line}: a value cannot be stored in the log ({exc}; "
                         "integers must fit in 64 bits)") from None


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with fs.open_file(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def iter_items(path: str, template: str | None = None) -> Iterator[Item]:
    """Stream the dataset's items in file order."""
    fields = template_fields(template) if template else set()
    for line, record in _records(path):
        yield _item(path, line, record, template, fields)


def _records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    fmt = _format(path)
    try:
        if fmt == "jsonl":
            yield from _jsonl(path)
        elif fmt == "csv":
            yield from _csv(path)
        else:
            yield from _parquet(path)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a directory") from exc


def _jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with fs.open_file(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = _json_decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}:{n}: not valid JSON ({_utf8_hint(raw, exc)})") from exc
            if not isinstance(record, dict):
                raise InputError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            yield n, record


def _utf8_hint(raw: bytes, exc: Exception) -> str:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return "invalid UTF-8"
    return str(exc)


def _csv(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """CSV with a header row, UTF-8 (a byte-order mark, as Excel writes it, is dropped)."""
    try:
        with fs.open_file(path, "rb") as f:
            reader = csv.DictReader(_decoded_lines(path, f))
            if not reader.fieldnames:
                return
            for record in reader:
                if None in record:
                    raise InputError(f"{path}:{reader.line_num}: more values than header columns")
                yield reader.line_num, {k: v for k, v in record.items() if v is not None}
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV: {exc}") from exc


def _decoded_lines(path: str, f: Any) -> Iterator[str]:
    """Lines as text, so that a bad byte is reported with the line it is on."""
    for n, raw in enumerate(f, 1):
        try:
            yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}:{n}: invalid UTF-8 ({exc.reason} at byte {exc.start} of the line)") from exc


def _parquet(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        with fs.open_file(path, "rb") as f:
            reader = pq.ParquetFile(f)
            n = 1
            for batch in reader.iter_batches(batch_size=4096):
                for record in batch.to_pylist():
                    n += 1  # line numbers count a header row, like CSV: row r is "line" r+1
                    yield n, record
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        if isinstance(exc, FileNotFoundError):
            raise
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc


def _item(path: str, line: int, record: dict[str, Any], template: str | None, fields: set[str]) -> Item:
    where = f"{path}:{line}"
    params: dict[str, Any] = {}
    if "body" in record:
        body = record["body"]
        if not isinstance(body, dict):
            raise InputError(f"{where}: field 'body' must be an object")
        params = {k: v for k, v in body.items() if k not in ("messages", "model")}
        record = {**record, "messages": body.get("messages")}
    item_id = _item_id(where, record, line)
    metadata = {k: v for k, v in record.items() if k not in _RESERVED}
    turns = _turns(where, record, template, fields, {**metadata, "id": item_id})
    return Item(id=item_id, line=line, turns=turns, expected=record.get("expected"), params=params, metadata=metadata)


def _item_id(where: str, record: dict[str, Any], line: int) -> str:
    raw = record.get("id", record.get("custom_id"))
    if raw is None or raw == "":
        return str(line)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InputError(f"{where}: field 'id' must be a string or an integer, got {type(raw).__name__}")
    return _check_id(where, str(raw))


def _check_id(where: str, item_id: str) -> str:
    """Any id works, as the dataset spells it: accents, CJK, emoji, spaces (leading ones too),
    tabs, newlines, NUL. The request header percent-encodes it, the index hashes long ones,
    conversation file names are made safe; nothing else needs it to be tame."""
    return item_id


def _turns(where: str, record: dict[str, Any], template: str | None, fields: set[str], metadata: dict[str, Any]) -> list[list[dict[str, Any]]]:
    present = [k for k in ("prompt", "messages", "turns") if record.get(k) not in (None, "")]
    if len(present) != 1:
        what = "none" if not present else " and ".join(present)
        raise InputError(f"{where}: needs exactly one of 'prompt', 'messages', 'turns' (found {what})")
    kind = present[0]
    value = record[kind]
    if kind == "messages":
        return [_messages(where, value)]
    prompts = [value] if kind == "prompt" else value
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise InputError(f"{where}: field '{kind}' must be a non-empty string" + (" list" if kind == "turns" else ""))
    return [[{"role": "user", "content": _render(where, template, fields, p, metadata)}] for p in prompts]


def _messages(where: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: field 'messages' must be a non-empty list")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InputError(f"{where}: messages[{i}] needs 'role' (string) and 'content'")
    return value


def _render(where: str, template: str | None, fields: set[str], prompt: str, metadata: dict[str, Any]) -> str:
    if not template:
        return prompt
    values = {**metadata, "prompt": prompt}
    missing = sorted(fields - values.keys())
    if missing:
        raise InputError(f"{where}: --template uses field '{missing[0]}' which this item does not have")
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError, OverflowError, MemoryError) as exc:
        raise InputError(f"{where}: --template cannot be rendered: {type(exc).__name__}: {exc}") from None

