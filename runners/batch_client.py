"""The provider's Batch API through the openai SDK, every foreign error translated here.

The SDK's own retries are off for the two calls whose repeat would be paid for or leave
something behind -- ``files.create`` (a second file) and ``batches.create`` (a second batch:
the orphan other tools make) -- and on (2) for reads, cancels and deletes, which are safe to
repeat. A create that fails is never retried blindly: the runner looks the batch up first
(``find``). ``Batch`` is the plain view of a batch the runner works from (no SDK types leak).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from llm_ledger.ledger.errors import EndpointError

from .completion import status_error
from .redaction import redact

if TYPE_CHECKING:
    import openai

__all__ = ["Batch", "BatchClient", "ENDPOINT", "META_RUN", "META_CHUNK", "META_SHA", "run_key"]

ENDPOINT = "/v1/chat/completions"
META_RUN, META_CHUNK, META_SHA = "ledger_run", "ledger_chunk", "ledger_sha256"  # metadata keys (<= 64 chars)
_LIST_PAGE = 100  # the API's largest page
_NOT_SERVED = (404, 405, 501)  # an upload answered so: the endpoint has no /v1/files


def run_key(log: str) -> str:
    """How the provider's batches and files name this run: ``<run id>.<12 hex>``, the hex a
    hash of the run's ``run_started`` (id, time, dataset). An account holds every run's
    batches: two runs of one id (in two runs directories, or a run deleted and made again)
    must never find -- adopt, sweep or cancel -- each other's batches and files."""
    import hashlib

    from llm_ledger.ledger.events import RunStarted
    from llm_ledger.ledger.reader import iter_events

    first = next(iter_events(log), None)
    if not isinstance(first, RunStarted):
        raise EndpointError("batch_run", f"{log}: the log does not begin with run_started")
    digest = hashlib.sha256(f"{first.run_id}|{first.ts!r}|{first.dataset_sha256}".encode()).hexdigest()[:12]
    return f"{first.run_id}.{digest}"


class Batch(NamedTuple):
    id: str
    status: str
    completed: int
    failed: int
    total: int
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: float
    expires_at: float
    metadata: dict[str, str]
    errors: str  # the batch's own errors (a failed validation), one line


def _batch(b: Any) -> Batch:
    counts = b.request_counts
    errors = "; ".join(f"{e.code or ''}: {e.message or ''}".strip(": ") for e in (b.errors.data or [])) if b.errors else ""
    return Batch(b.id, b.status, counts.completed if counts else 0, counts.failed if counts else 0,
                 counts.total if counts else 0, b.input_file_id, b.output_file_id, b.error_file_id,
                 float(b.created_at or 0), float(b.expires_at or 0), dict(b.metadata or {}), errors[:500])


class BatchClient:
    """One endpoint's files and batches. ``secrets`` are redacted from every message."""

    def __init__(self, base_url: str, api_key: str, secrets: tuple[str, ...], timeout: float) -> None:
        from .openai_transport import make_client

        self.secrets = secrets
        self._client: openai.AsyncOpenAI = make_client(base_url, api_key, max(timeout, 120.0), 8)
        self._reads = self._client.with_options(max_retries=2)

    async def close(self) -> None:
        await self._client.close()

    async def upload(self, name: str, data: bytes) -> str:
        try:
            file = await self._call(self._client.files.create(file=(name, data, "application/jsonl"), purpose="batch"))
        except EndpointError as exc:
            if exc.status in _NOT_SERVED:  # a chat-only server (vLLM, a proxy ...): no use retrying, say so
                raise EndpointError("batch_unsupported", f"the endpoint does not serve the Batch API (POST /v1/files "
                                    f"answered {exc.status}): run without --batch", status=exc.status) from None
            raise
        return str(file.id)

    async def create(self, file_id: str, metadata: dict[str, str]) -> Batch:
        return _batch(await self._call(self._client.batches.create(
            input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h", metadata=metadata)))

    async def retrieve(self, batch_id: str) -> Batch:
        return _batch(await self._call(self._reads.batches.retrieve(batch_id)))

    async def cancel(self, batch_id: str) -> Batch:
        return _batch(await self._call(self._reads.batches.cancel(batch_id)))

    async def content(self, file_id: str) -> bytes:
        reply = await self._call(self._reads.files.content(file_id))
        return bytes(reply.content)

    async def delete(self, file_id: str) -> None:
        await self._call(self._reads.files.delete(file_id))

    async def find(self, run_id: str, chunks: Sequence[str] | None = None) -> dict[str, list[Batch]]:
        """The run's batches at the provider, by chunk id (its metadata), from every page of
        ``batches.list`` (the account's batches, newest first): the one way to learn whether a
        create whose reply was lost made a batch."""
        found: dict[str, list[Batch]] = {}
        wanted = set(chunks) if chunks is not None else None
        try:
            async for b in self._reads.batches.list(limit=_LIST_PAGE):
                meta = b.metadata or {}
                chunk = meta.get(META_CHUNK)
                if meta.get(META_RUN) == run_id and chunk and (wanted is None or chunk in wanted):
                    found.setdefault(chunk, []).append(_batch(b))
        except Exception as exc:
            raise self._error(exc) from None
        return found

    async def files_named(self, prefix: str) -> list[str]:
        """The ids of the batch input files whose name starts with ``prefix`` (every page)."""
        ids: list[str] = []
        try:
            async for f in self._reads.files.list(purpose="batch", limit=_LIST_PAGE):
                if str(f.filename or "").startswith(prefix):
                    ids.append(str(f.id))
        except Exception as exc:
            error = self._error(exc)
            if error.status in _NOT_SERVED:
                raise EndpointError("batch_unsupported", f"the endpoint does not list files (GET /v1/files answered "
                                    f"{error.status}): a file of this run whose upload reply was lost may be left there",
                                    status=error.status) from None
            raise error from None
        return ids

    async def _call(self, call: Any) -> Any:
        try:
            return await call
        except Exception as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> EndpointError:
        import openai

        if isinstance(exc, openai.APIStatusError):
            return status_error(exc.status_code, str(exc), exc.response.headers, self.secrets)
        if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
            return EndpointError("connection", redact(f"{type(exc).__name__}: {exc}", self.secrets), retryable=True)
        return EndpointError("internal", redact(f"{type(exc).__name__}: {exc}"[:500], self.secrets), retryable=False)
