"""The built-in simulator's Batch API: ``/v1/files`` and ``/v1/batches`` as OpenAI serves them,
with time scaled down and the faults that lose batches in other tools.

Routes (mounted on the simulator's app by ``simulator.build_app``): ``POST /v1/files``
(multipart: ``file``, ``purpose``), ``GET /v1/files`` (paged), ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``; ``POST /v1/batches``,
``GET /v1/batches`` (paged, newest first: ``after``, ``limit``, ``has_more``),
``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``; and ``GET /v1/_sim/batch_records``,
the simulator's own books for tests (every batch created, with its metadata and the sha256
of its input; every request billed, per batch).

Time: the "24 h" completion window lasts ``SimConfig.batch_window`` seconds; a batch is
validated at its first look after creation and has run all its requests ``batch_seconds``
after it was created (unless that is past its window: then it expires at the window's end
with the requests it ran by then, in proportion to the time). State is advanced lazily, whenever a batch is read (no timers). Replies
are the chat endpoint's (``simulator._completion``): the same prompt gets the same answer in
a batch as alone. A request is billed when its output line is made, once.

Faults (each for the first N batches created, counted over the simulator's life):
``batch_fail_validation`` (the batch fails validation: nothing runs), ``batch_expire``
(it expires at the window's end with the first half of its requests done),
``batch_error_lines`` (every third request is answered in the error file with a 500),
``batch_create_500`` (``POST /v1/batches`` creates the batch, then answers 500) and
``batch_torn_lines`` (every fourth line of the output file is cut short: billed, unreadable).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .simulator import SimConfig

__all__ = ["BatchSim", "TERMINAL"]

TERMINAL = ("failed", "completed", "expired", "cancelled")
_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder().decode


@dataclass
class _File:
    id: str
    data: bytes
    filename: str
    purpose: str
    created_at: int

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str]
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, body) in file order
    sha256: str
    created: float
    faults: frozenset[str]
    status: str = "validating"
    errors: list[dict[str, Any]] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)  # status -> when it was entered
    done: int = 0  # requests run so far (when final: those with a line in the output or error file)
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    billed: list[str] = field(default_factory=list)


class BatchSim:
    """The Batch API's state (files, batches, records) and its routes."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}  # in creation order
        self.created = 0

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.upload, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.get_file, methods=["GET"]),
            Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel, methods=["POST"]),
            Route("/v1/_sim/batch_records", self.records, methods=["GET"]),
        ]

    # -- files -------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        fields = _multipart(request.headers.get("content-type", ""), await request.body())
        if "file" not in fields or fields.get("purpose", (b"", ""))[0] != b"batch":
            return _error(400, "expected multipart fields 'file' and purpose=batch")
        data, filename = fields["file"]
        entry = _File("file-" + secrets.token_hex(12), data, filename or "upload.jsonl", "batch", int(time.time()))
        self.files[entry.id] = entry
        return JSONResponse(entry.view())

    async def list_files(self, request: Request) -> Response:
        purpose = request.query_params.get("purpose")
        files = [f.view() for f in reversed(self.files.values()) if not purpose or f.purpose == purpose]
        return JSONResponse(_page(files, request))

    async def get_file(self, request: Request) -> Response:
        entry = self.files.get(request.path_params["file_id"])
        return JSONResponse(entry.view()) if entry else _error(404, "no such file")

    async def delete_file(self, request: Request) -> Response:
        entry = self.files.pop(request.path_params["file_id"], None)
        if entry is None:
            return _error(404, "no such file")
        return JSONResponse({"id": entry.id, "object": "file", "deleted": True})

    async def file_content(self, request: Request) -> Response:
        entry = self.files.get(request.path_params["file_id"])
        if entry is None:
            return _error(404, "no such file")
        return Response(entry.data, media_type="application/octet-stream")

    # -- batches -----------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        body = _decode(await request.body())
        entry = self.files.get(body.get("input_file_id", ""))
        if entry is None:
            return _error(400, f"input file {body.get('input_file_id')!r} not found")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be 24h")
        self.created += 1
        batch = _Batch("batch_" + secrets.token_hex(12), entry.id, str(body.get("endpoint", "")),
                       dict(body.get("metadata") or {}), [], hashlib.sha256(entry.data).hexdigest(), time.time(),
                       self._faults(self.created))
        batch.times["validating"] = batch.created
        _validate(batch, entry.data)
        self.batches[batch.id] = batch
        if "create_500" in batch.faults:
            return _error(500, "internal error (the batch was created)")
        return JSONResponse(self._view(batch))

    def _faults(self, n: int) -> frozenset[str]:
        c = self.config
        counts = {"validation": c.batch_fail_validation, "expire": c.batch_expire, "error_lines": c.batch_error_lines,
                  "create_500": c.batch_create_500, "torn_lines": c.batch_torn_lines}
        return frozenset(name for name, first in counts.items() if n <= first)

    async def list_batches(self, request: Request) -> Response:
        now = time.time()
        views = [self._view(self._advance(b, now)) for b in reversed(self.batches.values())]
        return JSONResponse(_page(views, request))

    async def get_batch(self, request: Request) -> Response:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(404, "no such batch")
        return JSONResponse(self._view(self._advance(batch, time.time())))

    async def cancel(self, request: Request) -> Response:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(404, "no such batch")
        now = time.time()
        self._advance(batch, now)
        if batch.status in ("validating", "in_progress", "finalizing"):
            batch.done = self._running(batch, now)
            self._enter(batch, "cancelling", now)
        elif batch.status != "cancelling":
            return _error(409, f"batch is {batch.status}: it cannot be cancelled")
        return JSONResponse(self._view(batch))

    async def records(self, request: Request) -> Response:
        return JSONResponse({"batches": [{"id": b.id, "metadata": b.metadata, "sha256": b.sha256, "status": b.status,
                                          "input_file_id": b.input_file_id, "requests": len(b.requests), "billed": b.billed}
                                         for b in self.batches.values()],
                             "files": [{"id": f.id, "filename": f.filename, "purpose": f.purpose} for f in self.files.values()]})

    # -- time --------------------------------------------------------------------------

    def _advance(self, batch: _Batch, now: float) -> _Batch:
        """Move the batch along the time since it was created (the lazy clock)."""
        if batch.status == "validating":
            if batch.errors or "validation" in batch.faults:
                batch.errors = batch.errors or [{"code": "invalid_request", "message": "validation failed (simulated)"}]
                self._enter(batch, "failed", now)
                return batch
            self._enter(batch, "in_progress", now)
        if batch.status == "cancelling":
            self._finish(batch, "cancelled", batch.done, now)
        elif batch.status == "in_progress":
            config, total = self.config, len(batch.requests)
            if "expire" in batch.faults and now >= batch.created + config.batch_window:
                self._finish(batch, "expired", total // 2, now)
            elif "expire" not in batch.faults and now >= batch.created + config.batch_seconds:
                self._finish(batch, "completed", total, now)
            elif now >= batch.created + config.batch_window:  # slower than its window: expires with what ran
                self._finish(batch, "expired", self._running(batch, batch.created + config.batch_window), now)
        return batch

    def _running(self, batch: _Batch, now: float) -> int:
        """Requests run by now: in proportion to the time, half at most for an expiring batch."""
        total = len(batch.requests)
        if "expire" in batch.faults:
            return total // 2
        seconds = self.config.batch_seconds
        return total if seconds <= 0 else min(total, int(total * (now - batch.created) / seconds))

    def _enter(self, batch: _Batch, status: str, now: float) -> None:
        batch.status = status
        batch.times[status] = now

    def _finish(self, batch: _Batch, status: str, done: int, now: float) -> None:
        """Run the first ``done`` requests, write the output and error files, bill."""
        from .simulator import _completion

        output, errors = [], []
        for i, (custom_id, body) in enumerate(batch.requests[:done]):
            line = {"id": f"batch_req_{batch.id[6:]}_{i}", "custom_id": custom_id, "error": None}
            if "error_lines" in batch.faults and i % 3 == 2:
                line["response"] = {"status_code": 500, "request_id": f"req_{i}",
                                    "body": {"error": {"message": "internal error (simulated)", "type": "server_error"}}}
                errors.append(line)
                continue
            line["response"] = {"status_code": 200, "request_id": f"req_{i}", "body": _completion(self.config, body)}
            output.append(line)
            batch.billed.append(custom_id)
        batch.done, batch.failed = len(output), len(errors)
        batch.output_file_id = self._result_file(batch, "output", output)
        batch.error_file_id = self._result_file(batch, "error", errors)
        self._enter(batch, "finalizing", now)
        self._enter(batch, status, now)

    def _result_file(self, batch: _Batch, kind: str, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        encoded = [_json.encode(line) for line in lines]
        if "torn_lines" in batch.faults and kind == "output":  # every fourth line cut short: billed, unreadable
            encoded = [e[:len(e) // 2] if i % 4 == 3 else e for i, e in enumerate(encoded)]
        data = b"".join(e + b"\n" for e in encoded)
        entry = _File("file-" + secrets.token_hex(12), data, f"{batch.id}_{kind}.jsonl", f"batch_{kind}", int(time.time()))
        self.files[entry.id] = entry
        return entry.id

    def _view(self, batch: _Batch) -> dict[str, Any]:
        final = batch.status in TERMINAL
        done = batch.done if final or batch.status == "cancelling" else self._running(batch, time.time())
        stamp = {s: int(t) for s, t in batch.times.items()}
        return {
            "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "input_file_id": batch.input_file_id,
            "completion_window": "24h", "status": batch.status, "created_at": int(batch.created),
            "expires_at": int(batch.created + self.config.batch_window),
            "in_progress_at": stamp.get("in_progress"), "finalizing_at": stamp.get("finalizing"),
            "completed_at": stamp.get("completed"), "failed_at": stamp.get("failed"),
            "expired_at": stamp.get("expired"), "cancelling_at": stamp.get("cancelling"),
            "cancelled_at": stamp.get("cancelled"),
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "request_counts": {"total": len(batch.requests), "completed": done if not final else batch.done,
                               "failed": batch.failed},
            "metadata": batch.metadata,
        }


def _validate(batch: _Batch, data: bytes) -> None:
    """Check the input file as the provider does: JSONL, unique custom_ids, the batch's
    endpoint, one model. A bad file fails the batch at validation."""
    seen: set[str] = set()
    models: set[str] = set()
    for n, raw in enumerate(data.splitlines(), 1):
        try:
            line = _decode(raw)
            custom_id, body = line["custom_id"], line["body"]
            if line.get("method") != "POST" or line.get("url") != batch.endpoint or not isinstance(body, dict):
                raise ValueError("method must be POST and url the batch's endpoint")
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            batch.errors.append({"code": "invalid_request", "line": n, "message": f"line {n}: {exc}"})
            return
        if custom_id in seen:
            batch.errors.append({"code": "duplicate_custom_id", "line": n, "message": f"line {n}: duplicate custom_id"})
            return
        seen.add(custom_id)
        models.add(str(body.get("model")))
        batch.requests.append((custom_id, body))
    if len(models) > 1:
        batch.errors.append({"code": "mixed_models", "message": "one model per file"})


def _page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """A cursor page: the items after ``after`` (an id), ``limit`` of them (1-100, 20)."""
    after, limit = request.query_params.get("after"), int(request.query_params.get("limit") or 20)
    limit = max(1, min(100, limit))
    start = next((i + 1 for i, item in enumerate(items) if item["id"] == after), 0) if after else 0
    data = items[start:start + limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": start + limit < len(items)}


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[bytes, str]]:
    """The fields of a multipart/form-data body: name -> (bytes, filename). Split by hand
    (a 200 MB upload through ``email.parser`` costs seconds; python-multipart is no dependency)."""
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";")
                     if p.strip().startswith("boundary=")), "")
    fields: dict[str, tuple[bytes, str]] = {}
    if not boundary:
        return fields
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        disposition = next((h for h in head.decode("latin-1").split("\r\n") if h.lower().startswith("content-disposition")), "")
        params = dict(_param(p) for p in disposition.split(";")[1:])
        if "name" in params:
            fields[params["name"]] = (content[:-2] if content.endswith(b"\r\n") else content, params.get("filename", ""))
    return fields


def _param(text: str) -> tuple[str, str]:
    key, _, value = text.strip().partition("=")
    return key.lower(), value.strip('"')


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error"}},
                        status_code=status)
