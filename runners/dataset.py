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

A million records must validate in about a second, so a JSONL file without ``--template`` is
checked in blocks of lines at msgspec speed: a block whose every line is one record of the
plain shape (``prompt``, an ``id``, ``expected``; other fields too) is decoded line by line
straight into a typed struct (or, with other fields, by the record reader's own decoder and
then converted), with no Python work per record beyond its id; any other block (messages,
turns, the Batch format, a blank or bad line) goes through the record by record checks,
which name the first bad line exactly as before (tests/test_startup.py holds both to the
same answer on tricky files). ``iter_keyed`` streams a
file as (id, line, record) without building items: a resume skips what is done at that cost.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import string
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError

__all__ = ["Item", "DatasetInfo", "scan", "iter_items", "iter_keyed", "make_item", "known", "file_sha256", "file_size",
           "template_fields", "interpret_escapes"]

_RESERVED = {"id", "prompt", "messages", "turns", "expected", "custom_id", "body", "method", "url"}
_json_decoder = msgspec.json.Decoder()
_json_decode = _json_decoder.decode


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
    size: int = 0  # bytes, when scanned: recorded in run_started with the sha256 and the count


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
    try:
        count, digest, size = _scan_jsonl(path, set()) if fmt == "jsonl" and not template else _scan_items(path, template)
    except _Duplicate:  # said by the record by record checks, with its line
        count, digest, size = _scan_items(path, template)
    if count == 0:
        raise InputError(f"{path}: the dataset has no items")
    return DatasetInfo(os.path.abspath(path), digest, count, fmt, size)


def _scan_items(path: str, template: str | None) -> tuple[int, str, int]:
    """Validate record by record: (items, sha256, size)."""
    seen: set[int] = set()
    count = sum(_checked(path, item, seen) for item in iter_items(path, template))
    return count, file_sha256(path), file_size(path)


def _checked(path: str, item: Item, seen: set[int]) -> int:
    """One item's checks beyond its own fields: storable, and its id not seen before."""
    _check_storable(path, item)
    h = _id_hash(item.id)
    if h in seen:
        raise InputError(f"{path}:{item.line}: duplicate id {item.id!r}")
    seen.add(h)
    return 1


_id_hash = hash  # 64 bits of the id (within this process): what finds duplicates without holding the ids

_BLOCK = 4 << 20
_KEYED_BLOCK = 256 << 10
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _Plain(msgspec.Struct):
    """The plain record shape, as ``_item`` accepts it without a template: a non-empty
    ``prompt``; ``id`` (else ``custom_id``, else the line number) a non-empty string or an
    integer; no ``messages``, ``turns`` or ``body`` key at all. Anything else is checked
    record by record."""

    prompt: _NonEmpty
    id: _NonEmpty | int | msgspec.UnsetType = msgspec.UNSET
    custom_id: _NonEmpty | int | msgspec.UnsetType = msgspec.UNSET
    expected: Any = None
    messages: msgspec.UnsetType = msgspec.UNSET
    turns: msgspec.UnsetType = msgspec.UNSET
    body: msgspec.UnsetType = msgspec.UNSET


class _PlainOnly(_Plain, forbid_unknown_fields=True):
    """``_Plain`` and no other field: nothing in the line is skipped unchecked."""


_plain_list = list[_Plain]
_plain_only_decode = msgspec.json.Decoder(_PlainOnly).decode


class _Duplicate(Exception):
    """A block repeats an id (or two ids share a hash): the file is checked again record by
    record, which names the line (an error, so its cost does not matter)."""


def _scan_jsonl(path: str, seen: set[int]) -> tuple[int, str, int]:
    """Validate a JSONL file block by block, hashing it on the way: (items, sha256, size)."""
    sha, count, size = hashlib.sha256(), 0, 0
    for first_line, block in _blocks(path, sha):
        size += len(block)
        ids = _plain_ids(block, first_line)
        if ids is not None:
            before = len(seen)
            seen.update(map(_id_hash, ids))
            if len(seen) - before != len(ids):
                raise _Duplicate
            count += len(ids)
            continue
        for line, record in _jsonl_lines(path, io.BytesIO(block), first_line):  # the exact checks and messages
            count += _checked(path, _item(path, line, record, None, set()), seen)
    return count, sha.hexdigest(), size


def _blocks(path: str, sha: Any = None, size: int = 0) -> Iterator[tuple[int, bytes]]:
    """The file in blocks of whole lines (about ``size`` bytes, default ``_BLOCK``), each with
    the number of its first line."""
    line, carry = 1, b""
    try:
        with fs.open_file(path, "rb") as f:
            while True:
                data = f.read(size or _BLOCK)
                if sha is not None:
                    sha.update(data)
                if not data:
                    break
                data = carry + data if carry else data
                cut = data.rfind(b"\n") + 1
                if not cut:
                    carry = data
                    continue
                carry = data[cut:]
                yield line, data[:cut]
                line += data.count(b"\n", 0, cut)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a directory") from exc
    if carry:
        yield line, carry


def _plain_records(block: bytes) -> list[Any] | None:
    """The records of a block whose every line is one JSON value, or None (a blank or bad
    line: the caller checks the block record by record, which names it). Each line is
    decoded alone by the decoder the record-by-record reader uses, so what it refuses (bad
    UTF-8, numbers out of range, two values on a line ...) fails here too."""
    lines = block.split(b"\n")
    if not lines[-1]:
        lines.pop()
    try:
        return list(map(_json_decode, lines))
    except msgspec.DecodeError:
        return None


def _plain_ids(block: bytes, first_line: int) -> list[str] | None:
    """The ids of a block that is proven valid as a whole (plain shape, storable), or None."""
    plain = _plain(block)
    if plain is None:
        return None
    try:
        _probe([r.expected for r in plain])
    except (msgspec.EncodeError, OverflowError, TypeError):
        return None
    ids = [r.id for r in plain]
    if msgspec.UNSET not in ids:
        return list(map(str, ids))
    return [str(r.id) if r.id is not msgspec.UNSET else str(r.custom_id) if r.custom_id is not msgspec.UNSET
            else str(first_line + n) for n, r in enumerate(plain)]


def _plain(block: bytes) -> list[_Plain] | None:
    """A block's records as ``_Plain``, each line decoded alone: typed in one step when no line
    has another field (every value is then decoded, so checked as the generic decoder checks
    it); else decoded as the record-by-record reader decodes it, then converted."""
    lines = block.split(b"\n")
    if not lines[-1]:
        lines.pop()
    try:
        return list(map(_plain_only_decode, lines))
    except msgspec.DecodeError:  # a ValidationError too
        pass
    try:
        records = list(map(_json_decode, lines))
        _probe(records)  # extra fields become the item's metadata: the log must hold them too
        return msgspec.convert(records, _plain_list)
    except (msgspec.DecodeError, msgspec.EncodeError, OverflowError, TypeError):
        return None  # the record-by-record reader names the line and what is wrong


def iter_keyed(path: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(item id, line, record) in file order, for a dataset already validated (a resume of an
    unchanged one): the id without building the item. ``make_item`` builds it when needed."""
    if _format(path) != "jsonl":
        for line, record in _records(path):
            yield _item_id(f"{path}:{line}", record, line), line, record
        return
    for first_line, block in _blocks(path, size=_KEYED_BLOCK):  # smaller: the first work comes sooner
        records = _plain_records(block)
        if records is None:
            for line, record in _jsonl_lines(path, io.BytesIO(block), first_line):
                yield _item_id(f"{path}:{line}", record, line), line, record
            continue
        for n, record in enumerate(records):
            yield _item_id(f"{path}:{first_line + n}", record, first_line + n), first_line + n, record


def make_item(path: str, line: int, record: dict[str, Any], template: str | None = None,
              fields: set[str] | None = None) -> Item:
    """The item of one record from ``iter_keyed`` (``fields``: ``template_fields(template)``,
    computed once by a caller making many)."""
    if fields is None:
        fields = template_fields(template) if template else set()
    return _item(path, line, record, template, fields)


def known(path: str, sha256: str, items: int, size: int) -> DatasetInfo:
    """A dataset validated before (by the run that recorded these facts), not scanned again."""
    return DatasetInfo(path, sha256, items, _format(path), size)


def file_size(path: str) -> int:
    return fs.stat(path).st_size


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
        yield from _jsonl_lines(path, f, 1)


def _jsonl_lines(path: str, f: Any, first: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Records of JSONL lines read from ``f``, numbered from ``first``."""
    for n, raw in enumerate(f, first):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark (Windows editors write one)
            raw = raw[3:]
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
    """CSV with a header row, UTF-8 (a byte-order mark, as Excel writes it, is dropped).
    Strict: a quote never closed is an error at the record it opens in, never the rest of the
    file silently folded into one value."""
    start = 2  # the line the record being read starts on
    try:
        with fs.open_file(path, "rb") as f:
            reader = csv.DictReader(_decoded_lines(path, f), strict=True)
            if not reader.fieldnames:
                return
            for record in reader:
                if None in record:
                    raise InputError(f"{path}:{reader.line_num}: more values than header columns")
                yield start, {k: v for k, v in record.items() if v is not None}
                start = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"{path}:{start}: malformed CSV in the record starting here: {exc}") from exc


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

