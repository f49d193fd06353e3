"""The Batch API runner (``ledger run --batch``): the plan sent as files of requests through the
provider's ``/v1/files`` + ``/v1/batches``, at the batch price, and never a batch lost or
bought twice.

Per chunk (one input file, one batch), each step durable before the next::

    started x N, batch_planned -> upload -> batch_file_uploaded -> create (metadata: run id,
    chunk id, sha256) -> batch_submitted -> polls (batch_status on each change of state) ->
    download output + error files -> response (+ parsed) / failed per request -> batch_done

``started`` is written when the chunk is planned, before its file is uploaded (the requests
first, then ``batch_planned`` naming them; nothing is uploaded before both are durable). Why
then: from that moment a request may reach the provider, and the rule of the log is that a
request is recorded before it can be paid for -- a crash after the upload leaves every
request of the chunk in flight, never pending, and the chunk's events say where each is.
It also puts in the log the exact body of each line of the file, as the per-request
runner's ``started`` does, so exports, compare and the viewer read a batch run unchanged.
A crash between the ``started`` events and ``batch_planned`` costs nothing: nothing was
uploaded, and resume plans those requests again (attempt + 1).

Resume (``reconcile``): the run's batch events are folded (``projections/batches.apply``).
A chunk planned or uploaded but not submitted is looked up with ``batches.list`` (every page)
by its metadata before anything is created again: found -> recorded (``reconciled``) and
polled; not found -> its file is rebuilt from the same works (same bytes: the sha256 is
checked) and submitted. Uploaded files of the run (``ledger-RUN-CHUNK.jsonl``) that no batch
uses are deleted. A submitted chunk is polled, never sent again; its requests are kept out of
new chunks while it can still complete. A create that fails is followed by a lookup, never by
a blind second create (the provider may have made the batch: the orphan of other tools).

Partial results: the lines that came back are recorded first; then each request of an
expired, failed or lost batch without a result gets a retryable ``failed`` and goes into a
new chunk of the next round (up to --retries times); of a batch cancelled by `ledger cancel`,
a final ``failed`` (a resume retries failed items, like any). A multi-turn item's next turn
goes into the next round: a 5-turn conversation takes 5 rounds of batches.

Ctrl-C and ``--batch-window`` (its clock starts when the session first waits for a batch) stop
waiting: the batches keep running at the provider and ``ledger resume`` picks them up. The built-in simulator (no --base-url) lives in this process:
its batches end with the session, and a resume finds them gone ("lost") and sends them again.
A batch that a real endpoint does not know (404: a resume's other --base-url or key?) stops
the run in one line instead -- sending its requests again could pay twice -- unless
`ledger cancel` recorded it as given up.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from llm_ledger.ledger.errors import EndpointError, LogError, UnencodableEventError
from llm_ledger.ledger.events import (BatchDone, BatchFileDeleted, BatchFileUploaded, BatchPlanned, BatchStatus,
                                      BatchSubmitted, Event, Failed, Started)
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events
from llm_ledger.projections.batches import GIVEN_UP, OPEN, Chunk, fold

from .batch_chunks import Cut, Request, content, cut, request_of
from .batch_client import META_CHUNK, META_RUN, META_SHA, Batch, BatchClient, run_key
from .batch_crash import crash_point
from .batch_results import lines_of, outcome_of, parsed_event
from .durable import reply_events
from .limits import estimate_tokens
from .per_request import EMBEDDED_NAME
from .redaction import redact, redactor
from .runner import Progress, RunContext, Work
from .sim_batch import TERMINAL
from .simulator import SimConfig, Simulator

__all__ = ["BatchRunner"]

T = TypeVar("T")
GROUP = 256  # result lines per submission to the writer
DURABLE_EVERY = 4096  # result lines between waits for durability (one fdatasync per wait, not per group)
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.02, 1.5, 30.0  # seconds between polls: quick at first, then every 30 s
POLL_MAX_LOCAL = 0.5  # ... against the built-in simulator, whose "24 h" last seconds
STARTED_SLICE = 512  # started events per submission (a log frame holds 4 MiB)


@dataclass
class _Job:
    chunk: Chunk
    requests: list[Request]
    data: bytes | None = None  # the file's bytes, when planned in this session
    lookup: bool = False  # planned in an earlier session: the provider may hold its batch


class BatchRunner:
    def __init__(self, context: RunContext) -> None:
        config = context.config
        self.context, self.config, self.writer = context, config, context.writer
        self.progress = Progress(stopping_words="steps under way finish; the batches keep running at the provider")
        self.run_id = RunPaths(os.path.dirname(os.path.abspath(context.writer.path))).run_id
        self.key = run_key(context.writer.path)  # the run as the provider's batches and files name it
        self._simulator = Simulator(SimConfig(**config.simulator)).start() if config.embedded else None
        url = self._simulator.base_url if self._simulator else config.endpoints()[0]
        self.endpoint = EMBEDDED_NAME if self._simulator else url
        self.client = BatchClient(url, context.api_key, context.secrets, config.timeout)
        self._red = redactor(context.secrets)
        self._poll_max = POLL_MAX_LOCAL if self._simulator else POLL_MAX
        self._stopped: asyncio.Event | None = None
        self._round: asyncio.Future[Any] | None = None
        self._window_timer: asyncio.TimerHandle | None = None
        self._first: dict[str, int] = {}  # custom_id -> its first attempt in this session (the retry budget)
        self._next_chunk = 1
        self._open = 0  # requests in batches not yet done
        self._uploads = self._uploaded = 0  # upload calls and files recorded: more calls, a retried one may have left a file
        # seconds of our own work per phase (bench/batch.py): planning (requests, the cut, the
        # started + batch_planned events durable), upload, and ingestion (download, decode, record)
        self.timings = {"plan": 0.0, "upload": 0.0, "ingest": 0.0}

    # -- the Runner protocol ---------------------------------------------------------------

    async def run(self, works: Iterator[Work | None]) -> None:
        self._stopped = asyncio.Event()
        try:
            await self._run(works)
        except EndpointError as exc:  # the provider refused a read we cannot go on without (a key revoked ...)
            self.stop(f"error: {exc.message}")
        finally:
            if self._window_timer is not None:
                self._window_timer.cancel()
            await self.client.close()
            if self._simulator is not None:
                self._simulator.stop()

    def stop(self, reason: str = "interrupted") -> None:
        """Stop waiting: steps under way (an upload, a create, recording results) finish, no
        poll follows; the batches keep running at the provider."""
        self.progress.stopping = True
        self.progress.stop_reason = self.progress.stop_reason or reason
        if self._stopped is not None:
            self._stopped.set()

    def abort(self) -> None:
        self.stop()
        if self._round is not None:
            self._round.cancel()

    def _arm_window(self) -> None:
        """--batch-window bounds the waiting: its clock starts when the first batch is waited
        for (the upload of a big file before it is work, not waiting)."""
        if self.config.batch_window and self._window_timer is None:
            self._window_timer = asyncio.get_running_loop().call_later(self.config.batch_window, self._window)

    def _window(self) -> None:
        self.stop(f"batch window: --batch-window {self.config.batch_window:g} s passed; "
                  f"the batches still running were left to the provider")

    # -- rounds ------------------------------------------------------------------------------

    async def _run(self, works: Iterator[Work | None]) -> None:
        state = fold(iter_events(self.writer.path))
        self._next_chunk = 1 + max((int(c) for c in state.chunks if c.isdigit()), default=0)
        pending: dict[str, Request] = {}
        for work in works:
            if work is None:
                await asyncio.sleep(0)
                continue
            request = request_of(self.config, work)
            pending[request.custom_id] = request
        jobs = []
        for chunk in state.chunks.values():
            if chunk.status != "done":
                ids = chunk.custom_ids
                # its requests' ``started`` are in the log already: the attempt they carry is theirs
                mine = [pending.pop(i) for i in ids if i in pending]
                mine = [r._replace(attempt=max(1, r.work.attempts)) for r in mine]
                jobs.append(_Job(chunk, mine, lookup=chunk.status in OPEN))
        await self._reconcile(jobs)
        fresh = list(pending.values())
        rounds = max((c.round for c in state.chunks.values()), default=-1) + 1
        while (jobs or fresh) and not self.progress.stopping:
            jobs += await self._plan(fresh, rounds)
            self._round = asyncio.ensure_future(asyncio.gather(*(self._job(j) for j in jobs), return_exceptions=True))
            try:
                outcomes = await self._round
            except asyncio.CancelledError:
                if self.progress.stopping:  # abort (a second Ctrl-C): the batches stay at the provider
                    return
                raise
            fresh, jobs, rounds = [], [], rounds + 1
            raised: BaseException | None = None
            for outcome in outcomes:  # every job's outcome is taken (and each error said) before one is raised
                if isinstance(outcome, BaseException):
                    raised = raised or self._failed_round(outcome)
                else:
                    fresh += outcome
            if raised is not None:
                raise raised
        if self._uploads > self._uploaded and not self.progress.stop_reason.startswith("error"):
            await self._sweep([])

    def _failed_round(self, exc: BaseException) -> BaseException | None:
        """One job's error: it stops the run (the first one is the stop reason; each later
        one is said at the end too). Returns what must be raised (the log died, or a bug)."""
        if isinstance(exc, asyncio.CancelledError):
            return None
        if isinstance(exc, LogError):
            self.stop(f"error: {exc}")
            return exc
        text = exc.message if isinstance(exc, EndpointError) else f"{type(exc).__name__}: {exc}"  # the provider's words as they are
        message = redact(" ".join(text.split())[:500], self.context.secrets)
        if self.progress.stop_reason.startswith("error") and len(self.progress.internal) < 20:
            self.progress.internal.append(f"another error in the same round of batches: {message}")
        self.stop(f"error: {message}")
        return None if isinstance(exc, EndpointError) else exc

    # -- planning ----------------------------------------------------------------------------

    async def _plan(self, requests: list[Request], round_: int) -> list[_Job]:
        """Cut the round's requests into chunks and record each: its ``started`` events, then
        ``batch_planned``, durable before its file goes anywhere."""
        jobs = []
        began = time.perf_counter()
        fitting = [r for r in requests if not await self._too_long(r)]
        selected = await self._uncached(fitting)
        oversize: list[tuple[Request, int]] = []
        for piece in cut(selected, self.config.batch_max_requests, self.config.batch_max_bytes, oversize):
            if self.progress.stopping:
                break
            jobs.append(await self._planned(piece, round_))
        for r, size in oversize:
            self._fail_unsent(r, "too_large_for_batch", f"its batch file line is {size:,} bytes, over "
                                                        f"--batch-max-bytes {self.config.batch_max_bytes:,}; not sent")
        self.timings["plan"] += time.perf_counter() - began
        return jobs

    async def _planned(self, piece: Cut, round_: int) -> _Job:
        chunk_id = str(self._next_chunk)
        self._next_chunk += 1
        for r in piece.requests:
            self._first.setdefault(r.custom_id, r.attempt)
        started = [self._started(r) for r in piece.requests]
        for i in range(0, len(started), STARTED_SLICE):
            self.writer.submit(started[i:i + STARTED_SLICE])
        data = piece.data
        ids = [r.custom_id for r in piece.requests]
        planned = BatchPlanned(chunk=chunk_id, custom_ids=ids, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                               model=str(piece.requests[0].body.get("model")), round=round_)
        event = (await self.writer.append_many_async([planned]))[0]
        crash_point("planned")
        self._open += len(ids)
        self.progress.in_flight = self._open
        chunk = Chunk(chunk=chunk_id, round=round_, requests=len(ids), sha256=planned.sha256, planned_at=event.ts,
                      custom_ids=ids, total=len(ids))
        return _Job(chunk, list(piece.requests), data)

    async def _uncached(self, requests: list[Request]) -> list[Request]:
        """The requests no run's log answers. The others are recorded from the cross-run cache
        (runners/cache.py) exactly as the per-request runner records a hit, and never go into
        a batch; a conversation's next turn after a cached one is looked up in its turn, so a
        batch gets each conversation's first turn that must be bought. Hits are handed to the
        writer in groups and all made durable before any batch of this round is planned."""
        cache = self.context.cache
        if cache is None:
            return requests
        todo, send, group, queued = deque(requests), [], [], []
        progress = self.progress
        while todo:
            r = todo.popleft()
            hit = cache.lookup(r.body, r.work.sample)
            if hit is None:
                send.append(r)
                continue
            work, item = r.work, r.work.item
            final = r.turn == len(item.turns) - 1
            events = cache.hit_events(hit, item_id=item.id, sample=work.sample, turn=r.turn, attempt=r.attempt,
                                      body=r.body, final=final, expected=item.expected, line=item.line,
                                      metadata=item.metadata)
            if final:
                events.append(parsed_event(work, r.turn, self.context.parser, hit.response.text))
                progress.done += 1
            else:
                history = r.body["messages"] + [{"role": "assistant", "content": hit.response.text}]
                todo.append(request_of(self.config, Work(item, work.sample, r.turn + 1, history, r.attempt)))
            progress.cached += 1
            usage = hit.response.usage
            if usage is not None:
                progress.cached_prompt_tokens += usage.prompt_tokens
                progress.cached_completion_tokens += usage.completion_tokens
            group.append((r, events))
            if len(group) >= GROUP:
                queued.append(asyncio.ensure_future(self._append_group(group)))
                group = []
        if group:
            queued.append(asyncio.ensure_future(self._append_group(group)))
        await asyncio.gather(*queued)
        return send

    def _started(self, r: Request) -> Started:
        item = r.work.item
        return Started(item_id=item.id, sample=r.work.sample, turn=r.turn, attempt=r.attempt, request=r.body,
                       endpoint=self.endpoint, expected=item.expected, line=item.line, metadata=item.metadata)

    async def _too_long(self, r: Request) -> bool:
        """--max-context: fail a conversation that cannot fit, as the per-request runner does;
        and a request whose line alone is over --batch-max-bytes: no file within the limit can
        hold it (``cut`` sets it aside: sending it alone would be a file over the limit)."""
        limit = self.config.max_context
        need = estimate_tokens(r.body["messages"], r.body.get("max_tokens")) if limit else 0
        if limit and need > limit:
            return self._fail_unsent(r, "context_overflow", f"conversation needs ~{need} tokens (with max_tokens), "
                                                            f"over --max-context {limit}; not sent")
        return False

    def _fail_unsent(self, r: Request, error_type: str, message: str) -> bool:
        item = r.work.item
        self.writer.submit([Failed(
            item_id=item.id, sample=r.work.sample, turn=r.turn, attempt=r.work.attempts, error_type=error_type,
            final=True, retryable=False, expected=item.expected, line=item.line, metadata=item.metadata, message=message)])
        self.progress.failed += 1
        return True

    # -- reconciliation ----------------------------------------------------------------------

    async def _reconcile(self, jobs: list[_Job]) -> None:
        """Chunks of an earlier session that the provider may hold: look them up by metadata
        (every page of batches.list) before anything is created; delete the run's uploads
        that no batch uses."""
        for job in jobs:
            self._open += len(job.chunk.custom_ids)
            for r in job.requests:
                self._first.setdefault(r.custom_id, r.attempt)
        self.progress.in_flight = self._open
        unsure = [j for j in jobs if j.lookup]
        if not unsure:
            return
        found = await self._retrying(lambda: self.client.find(self.key, [j.chunk.chunk for j in unsure]))
        for job in unsure:
            batch = _matching(found.get(job.chunk.chunk, []), job.chunk)
            if batch is not None:
                await self._found(job, batch)
        await self._sweep(jobs)

    async def _found(self, job: _Job, batch: Batch) -> None:
        chunk = job.chunk
        unused = chunk.file_id if chunk.file_id and chunk.file_id != batch.input_file_id else ""
        await self.writer.append_many_async([BatchSubmitted(
            chunk=chunk.chunk, batch_id=batch.id, file_id=batch.input_file_id, created_at=batch.created_at,
            expires_at=batch.expires_at, reconciled=True)])
        chunk.batch_id, chunk.file_id, chunk.status = batch.id, batch.input_file_id, "validating"
        chunk.created_at, chunk.expires_at = batch.created_at, batch.expires_at
        if unused:
            await self._delete(chunk.chunk, unused, "uploaded, unused: the chunk's batch was found using another file")

    async def _sweep(self, jobs: list[_Job]) -> None:
        """Delete the run's uploaded files that no chunk records (a crash between an upload and
        its event) -- never the file of a chunk that is not done."""
        state = fold(iter_events(self.writer.path))
        known = {c.file_id for c in state.chunks.values() if c.file_id} | {j.chunk.file_id for j in jobs if j.chunk.file_id}
        prefix = f"ledger-{self.key}-"
        for file_id in await self._retrying(lambda: self.client.files_named(prefix)):
            if file_id not in known:
                await self._delete("", file_id, "uploaded, unused: its upload was not recorded before a crash")

    async def _delete(self, chunk: str, file_id: str, reason: str) -> None:
        try:
            await self.client.delete(file_id)
        except EndpointError as exc:
            if exc.status != 404:  # said at the end of the session, not swallowed: the file costs storage there
                if len(self.progress.internal) < 20:
                    self.progress.internal.append(f"uploaded file {file_id} ({reason}) was not deleted: {exc.message}; "
                                                  "delete it at the provider (a later resume's sweep may)")
                return
        await self.writer.append_many_async([BatchFileDeleted(chunk=chunk, file_id=file_id, reason=reason)])

    # -- one chunk ---------------------------------------------------------------------------

    async def _job(self, job: _Job) -> list[Request]:
        """A chunk from wherever it is to done; returns the requests of the next round."""
        if not job.chunk.batch_id:
            later = await self._submit(job)
            if later is not None:
                return later
        batch = await self._wait(job)
        if batch is None:
            return []
        return await self._collect(job, batch)

    async def _submit(self, job: _Job) -> list[Request] | None:
        """Upload (unless uploaded) and create; None when the chunk is submitted (or the run
        stops), else the requests to plan again (a chunk that cannot be sent as planned)."""
        chunk = job.chunk
        data = job.data if job.data is not None else self._rebuilt(job)
        if data is None:
            return await self._abandon(job, "abandoned", "its file could not be rebuilt as planned")
        if not chunk.file_id:
            began = time.perf_counter()
            try:
                file_id = await self._retrying(lambda: self._upload(f"ledger-{self.key}-{chunk.chunk}.jsonl", data))
            except EndpointError as exc:
                return await self._rejected(job, exc)
            finally:
                self.timings["upload"] += time.perf_counter() - began
            job.data = None  # the provider holds the file now: its bytes (~ a round's bodies) are not kept
            crash_point("uploaded")
            await self.writer.append_many_async([BatchFileUploaded(chunk=chunk.chunk, file_id=file_id)])
            self._uploaded += 1
            chunk.file_id, chunk.status = file_id, "uploaded"
            crash_point("file_event")
        return await self._create(job)

    async def _create(self, job: _Job) -> list[Request] | None:
        chunk = job.chunk
        metadata = {META_RUN: self.key, META_CHUNK: chunk.chunk, META_SHA: chunk.sha256}
        for attempt in range(self.config.retries + 1):
            if self.progress.stopping:
                return None
            try:
                batch = await self.client.create(chunk.file_id, metadata)
            except EndpointError as exc:
                # The provider may have made the batch before failing: look before creating again.
                found = _matching((await self._retrying(lambda: self.client.find(self.key, [chunk.chunk]))).get(chunk.chunk, []), chunk)
                if found is not None:
                    await self._found(job, found)
                    return None
                if not exc.retryable or attempt == self.config.retries:
                    return await self._rejected(job, exc)
                await self._sleep(min(30.0, 0.5 * 2 ** attempt))
                continue
            crash_point("created")
            await self.writer.append_many_async([BatchSubmitted(
                chunk=chunk.chunk, batch_id=batch.id, file_id=chunk.file_id, created_at=batch.created_at,
                expires_at=batch.expires_at)])
            chunk.batch_id, chunk.status, chunk.created_at = batch.id, batch.status, batch.created_at
            chunk.submitted_at = time.time()
            crash_point("submitted")
            return None
        return None

    async def _upload(self, name: str, data: bytes) -> str:
        """One upload; a retried one may have left a file behind (its reply lost): swept at the end."""
        self._uploads += 1
        try:
            return await self.client.upload(name, data)
        except EndpointError as exc:
            if exc.error_type == "batch_unsupported" or (exc.status is not None and exc.status < 500):
                self._uploads -= 1  # refused outright: no file was made, nothing to sweep (nor to list, on a server without files)
            raise

    def _rebuilt(self, job: _Job) -> bytes | None:
        """A chunk planned by an earlier session: its file from the same works, if they give
        the same bytes (its requests all still unanswered, the same bodies)."""
        by_id = {r.custom_id: r for r in job.requests}
        if len(by_id) != len(job.chunk.custom_ids):
            return None
        requests = [by_id[i] for i in job.chunk.custom_ids]
        data = content(requests)
        return data if hashlib.sha256(data).hexdigest() == job.chunk.sha256 else None

    async def _wait(self, job: _Job) -> Batch | None:
        """Poll until the batch ends (None: the run stopped waiting). ``batch_status`` is
        recorded when the state changes, with the counts."""
        chunk, delay = job.chunk, POLL_FIRST
        if chunk.status == GIVEN_UP:  # recorded by `ledger cancel`: nothing to wait for (nor a window to spend on it)
            return _lost(chunk)
        self._arm_window()
        while not self.progress.stopping:
            try:
                batch = await self.client.retrieve(chunk.batch_id)
            except EndpointError as exc:
                if exc.status == 404 and (self._simulator is not None or chunk.cancel_requested):
                    return _lost(chunk)  # the built-in simulator's batches end with its session; or given up by `ledger cancel`
                if exc.status == 404:  # another endpoint or account (a resume's --base-url?): sending again could pay twice
                    raise EndpointError("batch_not_found", f"batch {chunk.batch_id} (chunk {chunk.chunk}) is unknown to "
                                        f"{self.endpoint}: resume with the endpoint and key it was submitted with; if it is "
                                        f"gone for good, `ledger cancel {self.run_id}` then `ledger resume` sends its "
                                        "requests again", status=404) from None
                if not exc.retryable:
                    raise
                await self._sleep(delay)
                delay = min(delay * POLL_GROWTH, self._poll_max)
                continue
            if batch.status != chunk.status:
                await self.writer.append_many_async([BatchStatus(
                    chunk=chunk.chunk, batch_id=batch.id, status=batch.status, completed=batch.completed,
                    failed=batch.failed, total=batch.total)])
                chunk.status = batch.status
                crash_point("polled")
            if batch.status in TERMINAL:
                return batch
            await self._sleep(delay)
            delay = min(delay * POLL_GROWTH, self._poll_max)
        return None

    async def _collect(self, job: _Job, batch: Batch) -> list[Request]:
        """Record every result that came back, then what is left without one, then
        ``batch_done``; returns the next round's requests (next turns, and retries)."""
        chunk = job.chunk
        waiting = {r.custom_id: r for r in job.requests}
        latency = max(0.0, time.time() - _sent_at(chunk))
        later: list[Request] = []
        counts = [0, 0]
        began = time.perf_counter()
        unreadable: list[int] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                data = await self._retrying(lambda: self.client.content(file_id))
                crash_point("downloaded")
                before = len(unreadable)
                await self._record(data, waiting, latency, later, counts, unreadable)
                if len(unreadable) > before and len(self.progress.internal) < 20:
                    lines = ", ".join(map(str, unreadable[before:before + 5])) + (" ..." if len(unreadable) - before > 5 else "")
                    self.progress.internal.append(
                        f"batch {batch.id} (chunk {chunk.chunk}): {len(unreadable) - before} line(s) of its file {file_id} "
                        f"could not be read (line {lines}); their requests, left without a result, are sent again "
                        "and the provider may bill them twice")
        unresolved = list(waiting.values())
        await self._unresolved(chunk, batch, unresolved, later, bool(unreadable))
        await self.writer.append_many_async([BatchDone(
            chunk=chunk.chunk, batch_id=batch.id, status=batch.status, completed=counts[0], failed=counts[1],
            unresolved=len(unresolved))])
        self.timings["ingest"] += time.perf_counter() - began
        self._open -= len(chunk.custom_ids)
        self.progress.in_flight = max(0, self._open)
        crash_point("done")
        return later

    async def _record(self, data: bytes, waiting: dict[str, Request], latency: float, later: list[Request],
                      counts: list[int], unreadable: list[int]) -> None:
        """The file's results into the log: groups handed to the writer without waiting for each
        (its group commit makes one fdatasync of many), made durable every ``DURABLE_EVERY`` lines."""
        group: list[tuple[Request, list[Event]]] = []
        queued: list[Awaitable[None]] = []
        for n, line in enumerate(lines_of(data, unreadable), 1):
            request = waiting.pop(line.custom_id, None)
            if request is None:
                continue  # recorded before a crash, or not ours
            last_try = request.attempt - self._first.get(request.custom_id, request.attempt) >= self.config.retries
            outcome = outcome_of(line, request, parser=self.context.parser, red=self._red, secrets=self.context.secrets,
                                 endpoint=self.endpoint, latency=latency, last_try=last_try)
            group.append((request, outcome.events))
            self._count(request, outcome, later, counts)
            if len(group) >= GROUP:
                queued.append(asyncio.ensure_future(self._append_group(group)))
                group = []
            if n % DURABLE_EVERY == 0 and queued:
                await asyncio.gather(*queued)
                queued = []
                crash_point("results")
        if group:
            queued.append(asyncio.ensure_future(self._append_group(group)))
        if queued:
            await asyncio.gather(*queued)
            crash_point("results")

    def _count(self, request: Request, outcome: Any, later: list[Request], counts: list[int]) -> None:
        progress, work = self.progress, request.work
        if outcome.reply is not None:
            counts[0] += 1
            usage = outcome.events[0].usage
            if usage is not None:
                progress.prompt_tokens += usage.prompt_tokens
                progress.completion_tokens += usage.completion_tokens
            if progress.first_reply is None:
                progress.first_reply = (request.body, outcome.reply.text)
            if request.turn == len(work.item.turns) - 1:
                progress.done += 1
            else:
                history = request.body["messages"] + [{"role": "assistant", "content": outcome.reply.text}]
                later.append(request_of(self.config, Work(work.item, work.sample, request.turn + 1, history, request.attempt)))
            return
        counts[1] += 1
        error = outcome.error
        progress.errors[error.error_type] = progress.errors.get(error.error_type, 0) + 1
        if outcome.events[0].final:
            progress.failed += 1
        else:
            progress.retrying += 1
            later.append(self._again(request))

    def _again(self, request: Request) -> Request:
        work = request.work
        return request_of(self.config, Work(work.item, work.sample, request.turn, work.history, request.attempt))

    async def _append_group(self, group: list[tuple[Request, list[Event]]]) -> None:
        """One commit for the group; if the log refuses it, line by line, each degraded as the
        per-request runner degrades a reply it cannot hold (durable.py)."""
        try:
            await self.writer.append_many_async([e for _, events in group for e in events])
        except UnencodableEventError:
            for _, events in group:
                try:
                    await self.writer.append_many_async(events)
                except UnencodableEventError:  # a cache hit's come with its ``started`` first
                    head = [e for e in events if isinstance(e, Started)]
                    rest = [e for e in events if not isinstance(e, Started)]
                    response, parsed = rest[0], rest[1] if len(rest) > 1 else None
                    await self.writer.append_many_async([*head, *reply_events(response, parsed)])  # type: ignore[arg-type]

    async def _unresolved(self, chunk: Chunk, batch: Batch, unresolved: list[Request], later: list[Request],
                          unreadable: bool = False) -> None:
        """Requests the batch ended without answering: retried in a new chunk, or failed for
        good (a batch cancelled by `ledger cancel`, or no retry left)."""
        events: list[Event] = []
        readable = " readable" if unreadable else ""  # its result may be one of the lines that could not be read
        why = f"batch {batch.id} ended {batch.status} without a{readable} result for this request"
        if batch.errors:
            why += f" ({batch.errors})"
        for r in unresolved:
            item = r.work.item
            final = chunk.cancel_requested or r.attempt - self._first.get(r.custom_id, r.attempt) >= self.config.retries
            events.append(Failed(item_id=item.id, sample=r.work.sample, turn=r.turn, attempt=r.attempt,
                                 error_type=f"batch_{batch.status}", message=redact(why, self.context.secrets),
                                 retryable=not chunk.cancel_requested, final=final, endpoint=self.endpoint))
            if final:
                self.progress.failed += 1
            else:
                self.progress.retrying += 1
                later.append(self._again(r))
        if events:
            await self.writer.append_many_async(events)

    async def _abandon(self, job: _Job, status: str, why: str) -> list[Request]:
        """A chunk of an earlier session, not at the provider, that cannot be rebuilt as it was
        planned: done without a batch; its requests go into a new chunk."""
        chunk = job.chunk
        if chunk.file_id:
            await self._delete(chunk.chunk, chunk.file_id, f"uploaded, unused: the chunk was {status} ({why})")
        await self.writer.append_many_async([BatchDone(chunk=chunk.chunk, status=status, unresolved=len(job.requests))])
        self._open -= len(chunk.custom_ids)
        return [self._again(r) for r in job.requests]

    async def _rejected(self, job: _Job, exc: EndpointError) -> list[Request]:
        """The provider refused the chunk (its upload or its create, for good): each request
        fails finally with the provider's message, as a request refused one by one would."""
        chunk = job.chunk
        events: list[Event] = []
        for r in job.requests:
            item = r.work.item
            events.append(Failed(item_id=item.id, sample=r.work.sample, turn=r.turn, attempt=r.attempt,
                                 error_type=exc.error_type, message=exc.message, status=exc.status, retryable=exc.retryable,
                                 final=True, endpoint=self.endpoint))
        self.progress.failed += len(events)
        self.progress.errors[exc.error_type] = self.progress.errors.get(exc.error_type, 0) + len(events)
        if events:
            await self.writer.append_many_async(events)
        await self.writer.append_many_async([BatchDone(chunk=chunk.chunk, status="rejected", failed=len(events))])
        self._open -= len(chunk.custom_ids)
        return []

    # -- waiting -----------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """A wait that a stop cuts short."""
        assert self._stopped is not None
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """A safe-to-repeat call (a read, a list, an upload whose duplicate the sweep deletes),
        retried after a retryable error, --retries times."""
        for attempt in range(self.config.retries + 1):
            try:
                return await call()
            except EndpointError as exc:
                if not exc.retryable or attempt == self.config.retries:
                    raise
                await self._sleep(min(30.0, exc.retry_after or 0.5 * 2 ** attempt))
        raise AssertionError("unreachable")


def _matching(batches: list[Batch], chunk: Chunk) -> Batch | None:
    """The chunk's batch among those the provider lists with its run and chunk id: the newest
    with its sha256 (batches.list is newest first)."""
    return next((b for b in batches if b.metadata.get(META_SHA) in ("", chunk.sha256)), None)


def _sent_at(chunk: Chunk) -> float:
    """When the batch was sent: our clock at ``batch_submitted``, unless the batch was found
    (reconciled) long after the provider created it (its clock, whole seconds). A reply's
    ``latency`` in a batch run is the time from there to its results being recorded."""
    if chunk.created_at and chunk.created_at < chunk.submitted_at - 2:
        return chunk.created_at
    return chunk.submitted_at or chunk.created_at or time.time()


def _lost(chunk: Chunk) -> Batch:
    """A batch the provider does not know (404): it cannot complete; its requests are sent again."""
    return Batch(chunk.batch_id, "lost", 0, 0, chunk.requests, chunk.file_id, None, None, chunk.created_at,
                 chunk.expires_at, {}, "the endpoint does not know this batch")
