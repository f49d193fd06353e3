"""``ledger import``: a run made from a file of results that already exist.

A use case that writes a log, like a session, but sends nothing. The file is read twice:
first every line is validated (``import_formats``: ``file:line: what is wrong``), with the
duplicate (id, sample) keys, the parser and the run id, before the run directory exists --
so a bad file leaves nothing behind; then, holding the new run's writer lock, the events are
appended and the index and projections are built from the log (``projector.rebuild``), so
the run reads like any other to status, compare, view, export and sql.

The log of an imported run:

* ``run_started`` with ``source: "imported"``, ``dataset``: the imported file (its sha256 and
  size), ``items``: its distinct ids, and a config whose ``model`` is ``--model`` (else the
  first line's), ``parser`` is ``--parser`` and ``samples`` the highest sample + 1;
* ``session_started`` (reason ``import``);
* per line, in file order: ``started`` (the request: model and messages; expected, metadata
  and the line that orders the rows; ``turn``: the replies the messages hold already, so a
  multi-turn conversation's last turn reads as one), then ``response`` + ``parsed`` -- the reply parsed by
  ``--parser`` exactly as a live reply is (``parsers.make_parser``), so ``correct`` means the
  same -- or a final ``failed``; each of these carries ``imported: {file, line}``;
* ``session_ended`` (completed).

As in a run, the API key (of the variable ``api_key_env`` names) is redacted in every form
from the text, the error message, the raw reply, the messages and the metadata before any of
them is logged: an endpoint's output may quote it.

An imported run is not resumed (there is nothing to send: ``prepare_resume`` refuses it), and
a run id that exists is refused: importing never adds to a run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import msgspec

from llm_ledger.ledger import __version__, fs
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Event, Failed, Imported, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started
from llm_ledger.ledger.fsio import fsync_dir, os_error
from llm_ledger.ledger.index import RunIndex
from llm_ledger.ledger.layout import RunPaths, validate_run_id
from llm_ledger.ledger.writer import LogWriter

from .config import RunConfig
from .dataset import Item, file_sha256, file_size, iter_items, scan
from .durable import loggable_result
from .import_formats import READERS, Record
from .parsers import Parser, make_parser
from .prepare import _PLACEHOLDER_KEYS
from .redaction import Redactor, redactor

__all__ = ["import_file", "Plan"]

_BATCH = 1000  # records per frame (three events each)


class Plan(msgspec.Struct, kw_only=True):
    """What the first pass found: enough to write ``run_started`` before the events."""

    records: int = 0
    failed: int = 0
    items: int = 0
    samples: int = 1
    model: str = ""


def import_file(path: str, fmt: str, runs_dir: str, run_id: str, *, dataset: str | None = None,
                model: str | None = None, parser: str = "text") -> dict[str, Any]:
    """Import ``path`` as run ``run_id``; returns the new run's summary (``summary.json``'s
    figures) with ``imported`` (records), ``run_dir``."""
    reader = READERS.get(fmt)
    if reader is None:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(READERS)}")
    validate_run_id(run_id)
    paths = RunPaths(os.path.join(runs_dir, run_id))
    if os.path.lexists(paths.dir):
        raise InputError(f"run {run_id} already exists under {runs_dir}: `ledger import` makes a new run; "
                         "name another --run-id")
    compiled = make_parser(parser)
    items = _dataset(dataset) if dataset else None
    plan = _survey(reader(path, items), model, path)
    reds = _redactors()
    records = (_redacted(record, reds) for record in reader(path, items))
    return _write(paths, path, plan, _events(records, compiled, plan.model, path), compiled)


def _redactors() -> tuple[Redactor, Redactor]:
    """The redactors a run would use: an imported file (an endpoint's output) may quote the
    key -- an error that echoes it, a reflected request -- and the key must never reach the log.
    The key is that of the variable a run's config names (``api_key_env``, by default
    ``OPENAI_API_KEY``), placeholders aside as in ``secrets_of`` (whose embedded-simulator case
    does not apply: an import has no endpoint); the reply's content and metadata lose only the
    key (a model may write about a Bearer token), an error message any Bearer token too."""
    key = os.environ.get(RunConfig().api_key_env, "")
    secrets = () if key in _PLACEHOLDER_KEYS else (key,)
    return redactor(secrets, bearer=False), redactor(secrets)


def _redacted(record: Record, reds: tuple[Redactor, Redactor]) -> Record:
    content, errors = reds
    return msgspec.structs.replace(
        record, messages=content.value(record.messages), metadata=content.value(record.metadata),
        response=None if record.response is None else content.text(record.response),
        raw=content.value(record.raw), message=errors.text(record.message))


def _dataset(path: str) -> dict[str, Item]:
    scan(path)  # every record valid (file:line otherwise) before any is used
    return {item.id: item for item in iter_items(path)}


def _survey(records: Iterator[Record], model: str | None, path: str) -> Plan:
    """The first pass: every line valid, no (id, sample) twice."""
    seen: dict[tuple[str, int], int] = {}
    ids: set[str] = set()
    plan = Plan(model=model or "")
    for record in records:
        key = (record.item_id, record.sample)
        if key in seen:
            raise InputError(f"{path}:{record.line}: item {record.item_id!r} sample {record.sample} again "
                             f"(first at line {seen[key]})")
        seen[key] = record.line
        ids.add(record.item_id)
        plan.records += 1
        plan.failed += record.response is None
        plan.samples = max(plan.samples, record.sample + 1)
        plan.model = plan.model or record.model
    if not plan.records:
        raise InputError(f"{path}: holds no results to import")
    plan.items = len(ids)
    return plan


def _events(records: Iterator[Record], parser: Parser, model: str, path: str) -> Iterator[list[Event]]:
    """The second pass: each record's events, ``_BATCH`` records at a time."""
    source = os.path.abspath(path)
    batch: list[Event] = []
    for n, record in enumerate(records, 1):
        batch += _record_events(record, parser, model, Imported(file=source, line=record.line))
        if n % _BATCH == 0:
            yield batch
            batch = []
    if batch:
        yield batch


def _record_events(record: Record, parser: Parser, model: str, where: Imported) -> list[Event]:
    key = {"item_id": record.item_id, "sample": record.sample, "turn": record.turn}
    request = {"model": record.model or model, "messages": record.messages or []}
    started = Started(**key, request=request, expected=record.expected, line=record.order, metadata=record.metadata,
                      imported=where)
    if record.response is None:
        return [started, Failed(**key, error_type=record.error_type, message=record.message, status=record.status,
                                final=True, expected=record.expected, line=record.order, metadata=record.metadata,
                                imported=where)]
    result = loggable_result(parser(record.response))
    return [started,
            Response(**key, text=record.response, finish_reason=record.finish_reason, usage=record.usage,
                     latency=record.latency, raw=record.raw, imported=where, cached_from=record.cached_from),
            Parsed(**key, parser=parser.spec, parser_version=parser.version, ok=result.ok, value=result.value,
                   error=result.error)]


def _write(paths: RunPaths, path: str, plan: Plan, batches: Iterator[list[Event]], parser: Parser) -> dict[str, Any]:
    """Create the run and write its log, index and projections; on any failure remove it
    whole (this process created it and holds its lock: nobody else has seen it)."""
    from llm_ledger.projections.projector import rebuild
    from llm_ledger.projections.summary import summarize

    _make_run_dir(paths)
    try:
        with LogWriter.open(paths.log) as writer:
            config = RunConfig(model=plan.model, parser=parser.spec, samples=plan.samples, preflight=False)
            writer.append(RunStarted(run_id=paths.run_id, config=config.to_dict(), dataset=os.path.abspath(path),
                                     dataset_sha256=file_sha256(path), items=plan.items, version=__version__,
                                     dataset_items=plan.items, dataset_size=file_size(path), source="imported"))
            writer.append(SessionStarted(pid=os.getpid(), version=__version__, reason="import"))
            for events in batches:
                writer.append_many(events)
            writer.append(SessionEnded(reason="completed"))
            RunIndex.open_for_log(paths.index, paths.log).close()
            projector = rebuild(paths)
    except BaseException:
        fs.rmtree(paths.dir, ignore_errors=True)
        raise
    return {**summarize(projector.state), "imported": plan.records, "run_dir": paths.dir}


def _make_run_dir(paths: RunPaths) -> None:
    try:
        fs.makedirs(paths.dir)
        fsync_dir(os.path.dirname(os.path.abspath(paths.dir)))
    except FileExistsError as exc:  # made meanwhile by another process
        raise InputError(f"run {paths.run_id} already exists: name another --run-id") from exc
    except OSError as exc:
        raise os_error(paths.dir, exc, "cannot create the run directory") from exc
