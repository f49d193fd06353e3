"""The batches projection: ``batches.json``, every Batch API chunk of the run and where it is.

One object per chunk, in the order they were planned: ``chunk``, ``round``, ``requests``,
``sha256``, ``file_id``, ``batch_id``, ``status`` (``planned`` and ``uploaded`` before the
provider holds it, then the provider's state; ``done`` when its results are recorded, with
``final_status`` the batch's last state), ``completed`` / ``failed`` / ``total`` (the
provider's counts while it runs; once done, the results recorded in the log), ``planned_at``, ``submitted_at``, ``created_at`` and ``expires_at`` (Unix seconds;
the two last from the provider), ``done_at``, ``unresolved`` (requests without a result) and
``cancel_requested``. ``ledger status`` shows it; the batch runner folds the same ``apply``
over the log to reconcile on resume (runners/batch.py), so the file and the runner cannot
disagree about a chunk. The fold keeps the custom_ids of open chunks only (the runner's
need); the file does not list them.

Rewritten atomically when it changed, like ``failures.jsonl``; its checkpoint part is the
fold's state, from which the file is a pure function.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import ProjectionError
from llm_ledger.ledger.events import (BatchCancelRequested, BatchDone, BatchFileDeleted, BatchFileUploaded, BatchPlanned,
                                      BatchStatus, BatchSubmitted, Event)
from llm_ledger.ledger.layout import RunPaths

from .projection import Part
from .whole_file import WholeFile

__all__ = ["BATCHES", "FILE_NAME", "Chunk", "BatchesState", "Batches", "apply", "encode", "read_batches", "OPEN", "GIVEN_UP"]

BATCHES = "batches"
FILE_NAME = "batches.json"
OPEN = ("planned", "uploaded")  # states before the provider holds the chunk for sure
GIVEN_UP = "unknown to the provider: given up"  # `ledger cancel` on a batch the endpoint answers 404 for


class Chunk(msgspec.Struct, kw_only=True):
    chunk: str
    round: int = 0
    requests: int = 0
    sha256: str = ""
    model: str = ""
    file_id: str = ""
    batch_id: str = ""
    status: str = "planned"
    final_status: str = ""
    completed: int = 0
    failed: int = 0
    total: int = 0
    planned_at: float = 0.0
    submitted_at: float = 0.0
    created_at: float = 0.0
    expires_at: float = 0.0
    done_at: float = 0.0
    unresolved: int = 0
    cancel_requested: bool = False
    custom_ids: list[str] = []  # until done (the runner's; not written to the file)


class BatchesState(msgspec.Struct, kw_only=True):
    chunks: dict[str, Chunk] = {}


# -- the fold (no I/O) -------------------------------------------------------------------


def apply(state: BatchesState, event: Event) -> bool:
    """Fold one event in; True when the file's content changed."""
    cls = event.__class__
    if cls is BatchPlanned:
        e: Any = event
        state.chunks[e.chunk] = Chunk(chunk=e.chunk, round=e.round, requests=len(e.custom_ids), sha256=e.sha256,
                                      model=e.model, planned_at=e.ts, custom_ids=list(e.custom_ids), total=len(e.custom_ids))
        return True
    handler = _HANDLERS.get(cls)
    if handler is None:
        return False
    chunk = state.chunks.get(event.chunk)  # type: ignore[attr-defined]
    if chunk is None:
        return False
    handler(chunk, event)
    return True


def _uploaded(chunk: Chunk, e: BatchFileUploaded) -> None:
    chunk.file_id = e.file_id
    if chunk.status == "planned":
        chunk.status = "uploaded"


def _submitted(chunk: Chunk, e: BatchSubmitted) -> None:
    chunk.batch_id, chunk.file_id = e.batch_id, e.file_id or chunk.file_id
    chunk.status = "validating" if chunk.status in OPEN else chunk.status
    chunk.submitted_at, chunk.created_at, chunk.expires_at = e.ts, e.created_at, e.expires_at


def _status(chunk: Chunk, e: BatchStatus) -> None:
    if chunk.status != "done":
        chunk.status = e.status
    chunk.completed, chunk.failed, chunk.total = e.completed, e.failed, e.total or chunk.total


def _done(chunk: Chunk, e: BatchDone) -> None:
    chunk.status, chunk.final_status, chunk.done_at = "done", e.status, e.ts
    # what was recorded, not what the provider counted: a result line that could not be read
    # is in its "completed" but among our requests without a result (sent again)
    chunk.completed, chunk.failed = e.completed, e.failed
    chunk.batch_id = chunk.batch_id or e.batch_id
    chunk.unresolved = e.unresolved
    chunk.custom_ids = []


def _cancel(chunk: Chunk, e: BatchCancelRequested) -> None:
    chunk.cancel_requested = True
    chunk.batch_id = chunk.batch_id or e.batch_id  # a batch found by its metadata: it exists
    if e.status and chunk.status != "done":
        chunk.status = e.status


def _deleted(chunk: Chunk, e: BatchFileDeleted) -> None:
    pass  # the chunk's row does not change: the deleted file is one that no batch of it uses


_HANDLERS: dict[type, Any] = {BatchFileUploaded: _uploaded, BatchSubmitted: _submitted, BatchStatus: _status,
                              BatchDone: _done, BatchCancelRequested: _cancel, BatchFileDeleted: _deleted}


def fold(events: Any) -> BatchesState:
    """The state from a stream of events (the batch runner's and `ledger cancel`'s read of the log)."""
    state = BatchesState()
    for event in events:
        apply(state, event)
    return state


_encoder = msgspec.json.Encoder(order="deterministic")
_FIELDS = [f for f in Chunk.__struct_fields__ if f != "custom_ids"]


def encode(state: BatchesState) -> bytes:
    rows = [{f: getattr(c, f) for f in _FIELDS} for c in state.chunks.values()]
    return _encoder.encode(rows) + b"\n"  # "[]" for a run without batches: every run has the file


def read_batches(paths: RunPaths) -> list[dict[str, Any]]:
    """The rows of a run's ``batches.json`` ([] when the run has no batches)."""
    path = os.path.join(paths.dir, FILE_NAME)
    try:
        with fs.open_file(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    try:
        rows = json.loads(data) if data.strip() else []
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("not a list of batches")
    except ValueError as exc:  # a projection: the log still holds every batch event
        raise ProjectionError(f"{path}: damaged ({str(exc).splitlines()[0]}); "
                              f"`ledger replay {paths.run_id} --rebuild` rewrites it from the log") from None
    return rows


# -- the projection ----------------------------------------------------------------------


class BatchesPart(Part, kw_only=True):
    state: BatchesState = msgspec.field(default_factory=BatchesState)


class Batches(WholeFile):
    name: ClassVar[str] = BATCHES
    version: ClassVar[int] = 2  # 2: a done chunk without a batch keeps its recorded counts
    part_type: ClassVar[type[Part]] = BatchesPart
    file_name: ClassVar[str] = FILE_NAME
    fold_event = staticmethod(apply)
    encode_state = staticmethod(encode)
