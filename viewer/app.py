"""``ledger view``: a local web page over the runs of one runs directory, read-only unless reviewing.

Endpoints (GET only, nothing writes, every other method is 405 -- unless the viewer was
started with ``--review``, which adds the one endpoint that writes, ``POST /api/review``)::

    /                    the page (viewer/static/index.html); the script reads ?run=...
    /static/NAME         one of the files in ``STATIC``; any other name is 404
    /api/runs            every run, newest first: status, model, counts, accuracy
    /api/items           ?run=A&run=B&q=&word=1&show=CATEGORY&m.FIELD=VALUE&sort=&desc=1&page=0&size=50
                         one page of the merged item table (viewer/table.py: runs side by
                         side, categories only<i> / allwrong / differ / alldiffer / wrong / toreview,
                         counted on the filter buttons), the metadata fields and their values,
                         and ``coverage`` (projections.compare.coverage: "the runs share N of
                         M items"); ``diff=1`` and ``wrong=1`` are the old names of
                         ``show=differ`` and ``show=wrong``
    /api/item            ?run=A&run=B&item=ID&sample=N: each run's conversation and attempts,
                         with latency (``latency_s``) and ``usage`` summed over its replies, and
                         its ``answer`` as a row of /api/items has it (verdicts included)
    /api/charts          ?run=A&run=B&group=FIELD: per run, the figures of projections/charts.py
                         (accuracy and its 95% CI, per value of FIELD too; latency histogram;
                         requests / replies / 429s / errors over time, from the log)
    POST /api/review     review mode only (``ledger view --review``; otherwise there is no such
                         route: 404): a JSON body {run, item, sample, verdict: correct /
                         incorrect / cleared, note} appends a ``reviewed`` event through the
                         function ``ledger review`` calls (runners/review.py); 400 for bad input,
                         409 while the run is live, 403 from another origin or without a JSON body

Reviews: each answer carries ``correct_reviewed`` and the ``review`` bearing on it
(``projections.reviews.verdicts``: the run's own, or one carried from another run of the
directory for the same reply text; stale ones shown, not applied). The ``toreview`` category
is the queue a reviewer works through: rows whose runs' answers differ or where a reply
failed to parse, until each run's answer has a verdict.

What a request may read: a run is named only by an entry of the runs directory's listing
(a directory holding ``events.log``); any other name -- ``..``, an absolute path, an encoded
slash -- is 404, and a run's files are reached only through ``ledger.layout.RunPaths``.
Static files come from a fixed table, never from a path in the URL.

Paging 100,000-item runs: each run's ``responses.jsonl`` is held in memory as an
``AnswerIndex`` (texts cut to ``projections.compare.TEXT_LIMIT``), refreshed on each request
by reading only what was appended; the merged table of a set of runs is rebuilt when one of
them changed, and filtered / sorted orders are cached until then. A page sends ``size`` rows.
"""

from __future__ import annotations

import os
import re
import threading
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError, LedgerError
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.projections import charts
from llm_ledger.projections.compare import AnswerIndex, as_text, reviewed
from llm_ledger.projections.reviews import Verdict, reviews_stamp, verdicts
from llm_ledger.projections.runs import RunRow, describe, files_version, first_event, list_runs
from llm_ledger.projections.show import item_story

from .metadata import DatasetMetadata, ViewAnswer
from .table import Query, Row, Table

__all__ = ["create_app", "serve", "expand_experiments", "STATIC", "PAGE_SIZE"]

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
CELL_LIMIT = 600  # characters of a response sent per table cell (the detail view has it all)
PROMPT_LIMIT = 1000  # characters of a prompt sent per table cell (shown on hover; the detail view has it all)
MAX_VALUES = 200  # distinct values of a metadata field offered as a filter
MAX_GROUPS = 30  # distinct values of a metadata field drawn as groups of a chart
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_json = msgspec.json.Encoder()
Key = tuple[str, int]


def _respond(data: Any) -> Response:
    return Response(_json.encode(data), media_type="application/json", headers=_HEADERS)


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, what)


# -- the runs a request may name ---------------------------------------------------------


class RunsDir:
    """The runs directory as listed, and one ``AnswerIndex`` per run asked for."""

    def __init__(self, runs_dir: str) -> None:
        self.dir = runs_dir
        self._indexes: dict[str, AnswerIndex] = {}
        self._tables: dict[tuple[str, ...], Table] = {}
        self._described: dict[str, tuple[tuple, RunRow]] = {}
        self._figures: dict[str, charts.EventFigures] = {}
        self._started: dict[str, float] = {}
        self.metadata = DatasetMetadata()
        self._lock = threading.Lock()

    def names(self) -> set[str]:
        try:
            entries = fs.listdir(self.dir)
        except OSError:
            return set()
        return {n for n in entries if os.path.isfile(os.path.join(self.dir, n, "events.log"))}

    def paths(self, name: str) -> RunPaths:
        if name not in self.names():
            raise _not_found(f"no run {name!r}")
        return RunPaths(os.path.join(self.dir, name))

    def describe(self, paths: RunPaths) -> RunRow:
        """``projections.runs.describe``, kept while the run's files and lock are unchanged: a
        stopped run whose index is not current costs a replay of its log, once, not per poll."""
        version = files_version(paths)
        with self._lock:
            cached = self._described.get(paths.run_id)
        if cached is not None and cached[0] == version and not version[-1]:
            return cached[1]
        info = describe(paths)
        with self._lock:
            self._described[paths.run_id] = (version, info)
        return info

    def table(self, names: list[str]) -> "Table":
        paths = [self.paths(n) for n in names]
        with self._lock:
            indexes = [self._index(p) for p in paths]
            key = tuple(names)
            table = self._tables.get(key)
            stamp = reviews_stamp(self.dir)  # a review in any run may carry into these
            if table is None or table.versions != [i.version for i in indexes] or table.stamp != stamp:
                self._tables.pop(key, None)
                if len(self._tables) >= 8:  # a few run sets stay cached; the oldest goes
                    self._tables.pop(next(iter(self._tables)))
                table = self._tables[key] = self._table(paths, indexes, names)
            return table

    def _table(self, paths: list[RunPaths], indexes: list[AnswerIndex], names: list[str]) -> Table:
        """The table, each key's metadata from the first run whose row has it, else from the
        first run's dataset that has the item (viewer/metadata.py)."""
        from_dataset = [({}, "") if _rows_carry_metadata(i) else self.metadata.of_run(p) for p, i in zip(paths, indexes)]

        def metadata(key: tuple[str, int]) -> dict[str, str]:
            for index in indexes:
                answer = index.answers.get(key)
                if answer is not None and getattr(answer, "metadata", None):
                    return {k: as_text(v) or "" for k, v in answer.metadata.items() if v is not None}  # type: ignore[union-attr]
            return next((found[key[0]] for found, _ in from_dataset if key[0] in found), {})

        found = verdicts(paths, [i.answers.keys() for i in indexes])
        table = Table(indexes, names, metadata, [note for _, note in from_dataset if note], found)
        table.stamp = reviews_stamp(self.dir)
        return table

    def _index(self, paths: RunPaths) -> AnswerIndex:
        index = self._indexes.get(paths.run_id)
        if index is None:
            index = self._indexes[paths.run_id] = AnswerIndex(paths.responses, ViewAnswer)
        index.refresh()
        return index

    def started_at(self, name: str) -> float:
        """When a run started (its ``run_started`` ts, to the microsecond: runs started in the
        same second keep their order); newest first is the run list's order."""
        with self._lock:
            known = self._started.get(name)
        if known is None:
            try:
                event = first_event(self.paths(name))
            except (LedgerError, HTTPException):
                event = None
            known = event.ts if event is not None else 0.0
            if event is not None:
                with self._lock:
                    self._started[name] = known
        return known

    def figures(self, paths: RunPaths) -> dict[str, Any]:
        """The log's figures (latency, timeline) of a run, read incrementally."""
        with self._lock:
            figures = self._figures.get(paths.run_id)
            if figures is None:
                figures = self._figures[paths.run_id] = charts.EventFigures(paths.log)
            figures.refresh()
            return figures.figures()


# -- endpoints ---------------------------------------------------------------------------


def _page(request: Request) -> Response:
    return _static_file("index.html")


def _static(request: Request) -> Response:
    return _static_file(request.path_params["name"])


def _static_file(name: str) -> Response:
    if name not in STATIC:
        raise _not_found(name)
    with resources.as_file(resources.files("llm_ledger.viewer").joinpath("static", name)) as path, \
            fs.open_file(path, "rb") as f:
        body = f.read()
    return Response(body, media_type=STATIC[name], headers=_HEADERS)


def _api_runs(request: Request) -> Response:
    runs: RunsDir = request.app.state.runs
    rows = sorted(list_runs(runs.dir, runs.describe), key=lambda r: (runs.started_at(r.run_id), r.run_id), reverse=True)
    return _respond({"runs_dir": os.path.abspath(runs.dir), "runs": rows})


def _run_names(request: Request) -> list[str]:
    names = request.query_params.getlist("run")
    if not names or len(set(names)) != len(names):
        raise _not_found("name one or more distinct runs: ?run=A&run=B")
    return names


def _int(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name, "")
    if not value:
        return default
    if not re.fullmatch(r"\d{1,9}", value):
        raise HTTPException(400, f"{name} must be a whole number")
    return int(value)


def query_of(request: Request, n_runs: int) -> Query:
    """The page's filters from the URL: search, whole token, one category, metadata values, order."""
    params = request.query_params
    show = params.get("show", "")
    if not show:
        show = "differ" if params.get("diff") == "1" else "wrong" if params.get("wrong") == "1" else ""
    if show and not re.fullmatch(r"only\d{1,3}|allwrong|differ|alldiffer|wrong|toreview", show):
        raise HTTPException(400, f"show={show}: one of only0..only{n_runs - 1}, allwrong, differ, alldiffer, wrong, toreview")
    meta = tuple(sorted((k[2:], v) for k, v in params.multi_items() if k.startswith("m.") and len(k) > 2))
    return Query(q=params.get("q", ""), word=params.get("word") == "1", show=show, meta=meta,
                 sort=params.get("sort", "item"), desc=params.get("desc") == "1")


def _api_items(request: Request) -> Response:
    runs: RunsDir = request.app.state.runs
    names = _run_names(request)
    table = runs.table(names)
    rows, counts = table.view(query_of(request, len(names)))
    size = min(max(1, _int(request, "size", PAGE_SIZE)), MAX_PAGE_SIZE)
    pages = max(1, -(-len(rows) // size))
    page = min(_int(request, "page", 0), pages - 1)
    return _respond({
        "review_mode": bool(request.app.state.review),
        "runs": [_run_info(runs, runs.paths(n), table, i) for i, n in enumerate(names)],
        "items": len(table.rows), "coverage": table.coverage.to_json(), "disagreements": table.disagreements,
        "matching": len(rows), "counts": counts, "categories": table.category_names(),
        "fields": table.fields, "values": {f: v for f, v in table.values.items() if len(v) <= MAX_VALUES},
        "notes": table.notes,
        "page": page, "pages": pages, "size": size,
        "rows": [_row_json(r) for r in rows[page * size:(page + 1) * size]],
    })


def _run_info(runs: RunsDir, paths: RunPaths, table: Table, i: int) -> dict[str, Any]:
    """A run's card: status and counts from ``run_status`` (as ``ledger status`` and ``ls``
    say them), answers (accuracy and its 95% CI) from the table."""
    return {**msgspec.structs.asdict(runs.describe(paths)), **table.stats[i]}


def _cut(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + " …"


def _row_json(row: Row) -> dict[str, Any]:
    return {"item_id": row.key[0], "sample": row.key[1], "expected": as_text(row.expected), "agree": row.agree,
            "prompt": _cut(row.prompt, PROMPT_LIMIT), "metadata": row.metadata, "categories": sorted(row.categories),
            "answers": [None if a is None else _answer_json(a, v) for a, v in zip(row.answers, row.verdicts)]}


def _answer_json(a: Any, verdict: Verdict | None) -> dict[str, Any]:
    return {"parsed": as_text(a.parsed), "correct": a.correct, "response": _cut(a.response, CELL_LIMIT), "error": a.error,
            "correct_reviewed": reviewed(a, {} if verdict is None else {(a.item_id, a.sample): verdict}, (a.item_id, a.sample)),
            "review": None if verdict is None else msgspec.to_builtins(verdict),
            "cached_from": a.cached_from}  # {run, seq, ts}: copied from the cross-run cache (the page marks it)


def _groups(values: list[tuple[str, int]]) -> bool:
    """Whether a field's values make groups: 2 to MAX_GROUPS of them, each held by two items on
    average (an id-like field, one value per item, does not)."""
    return 2 <= len(values) <= MAX_GROUPS and 2 * len(values) <= sum(n for _, n in values)


def _api_charts(request: Request) -> Response:
    """Per run: accuracy with its 95% CI (overall, and per value of ``group`` -- by default the
    first metadata field with 2 to MAX_GROUPS values), latency histogram, requests over time."""
    runs: RunsDir = request.app.state.runs
    names = _run_names(request)
    table = runs.table(names)
    groupable = [f for f in table.fields if _groups(table.values.get(f, []))]
    group = request.query_params.get("group") or (groupable[0] if groupable else "")
    if group and group not in groupable:
        raise HTTPException(400, f"group={group}: not a metadata field whose values make groups ({', '.join(groupable) or 'none'})")
    out = []
    for i, name in enumerate(names):
        paths = runs.paths(name)
        answered = [(r.metadata.get(group), r.answers[i].correct) for r in table.rows if r.answers[i] is not None]
        out.append({**msgspec.structs.asdict(runs.describe(paths)), "accuracy": table.stats[i],
                    "groups": charts.accuracy_by(answered) if group else None, **runs.figures(paths)})
    return _respond({"group": group or None, "groupable": groupable, "runs": out})


def _api_item(request: Request) -> Response:
    runs: RunsDir = request.app.state.runs
    names = _run_names(request)
    item = request.query_params.get("item")
    if item is None:
        raise HTTPException(400, "name an item: ?item=ID")
    sample = _int(request, "sample", 0)
    stories = [_story(runs.paths(n), item, sample) for n in names]
    if not any(s["found"] or s.get("error") for s in stories):
        raise _not_found(f"no item {item!r} sample {sample} in {', '.join(names)}")
    row = runs.table(names).row((item, sample))
    for i, story in enumerate(stories):  # its row of the table: the verdicts bearing on it
        answer = row.answers[i] if row is not None else None
        story["answer"] = None if answer is None else _answer_json(answer, row.verdicts[i])  # type: ignore[union-attr]
    return _respond({"item_id": item, "sample": sample, "runs": stories})


def _story(paths: RunPaths, item: str, sample: int) -> dict[str, Any]:
    try:
        story = item_story(paths, item, sample)
    except InputError:
        return {"run_id": paths.run_id, "found": False, "conversation": None, "events": [], **_reply_totals(None)}
    except LedgerError as exc:  # a damaged log: say so in the panel, never a 500
        return {"run_id": paths.run_id, "found": False, "conversation": None, "events": [], "error": str(exc),
                **_reply_totals(None)}
    conversation = story["conversation"]
    return {"run_id": paths.run_id, "found": True, "conversation": conversation, "events": story["events"],
            **_reply_totals(conversation)}


def _reply_totals(conversation: dict[str, Any] | None) -> dict[str, Any]:
    """Latency and tokens summed over every reply of the conversation file's ``turns`` (as
    ``responses.jsonl`` sums them); None where nothing was received. The file holds them
    per turn only, so the page must not look for them at its top level."""
    turns = (conversation or {}).get("turns") or []
    if not turns:
        return {"latency_s": None, "usage": None}
    usages = [t["usage"] for t in turns if t.get("usage")]
    usage = {k: sum(u.get(k) or 0 for u in usages) for k in ("prompt_tokens", "completion_tokens", "total_tokens")} if usages else None
    return {"latency_s": sum(t.get("latency") or 0.0 for t in turns), "usage": usage}


async def _api_review(request: Request) -> Response:
    """Append a person's verdict (review mode only): the same use case as ``ledger review``."""
    from starlette.concurrency import run_in_threadpool

    from llm_ledger.runners.review import RunLiveError  # the writer loads only when a review comes

    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "a review must come from this page")  # another site's form or script
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(403, "send the review as application/json")  # (no cross-site form can)
    try:
        body = msgspec.json.decode(await request.body(), type=ReviewRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise HTTPException(400, f"review: {exc}") from None
    runs: RunsDir = request.app.state.runs
    paths = runs.paths(body.run)
    try:
        result = await run_in_threadpool(_review, paths, body)
    except RunLiveError as exc:
        return _error(409, str(exc))
    except LedgerError as exc:
        return _error(400 if exc.exit_code == 2 else 500, str(exc))
    summary = result["summary"]
    return _respond({"reviewed": result["reviewed"], "accuracy": summary["accuracy"],
                     "accuracy_reviewed": summary["accuracy_reviewed"]})


class ReviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    run: str
    item: str
    verdict: str
    sample: int = 0
    note: str = ""


def _review(paths: RunPaths, body: ReviewRequest) -> dict[str, Any]:
    from llm_ledger.runners.review import review

    return review(paths, body.item, body.sample, body.verdict, body.note)


def _error(status: int, message: str) -> Response:
    return Response(_json.encode({"error": message}), status_code=status, media_type="application/json", headers=_HEADERS)


def create_app(runs_dir: str, allowed_hosts: list[str] | None = None, *, review: bool = False) -> Starlette:
    """The viewer over ``runs_dir``; ``allowed_hosts`` guards a loopback server from DNS
    rebinding; ``review`` adds the one endpoint that writes (``POST /api/review``)."""
    routes = [
        Route("/", _page),
        Route("/static/{name}", _static),
        Route("/api/runs", _api_runs),
        Route("/api/items", _api_items),
        Route("/api/item", _api_item),
        Route("/api/charts", _api_charts),
    ]
    if review:
        routes.append(Route("/api/review", _api_review, methods=["POST"]))
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware)
    app.state.runs = RunsDir(runs_dir)
    app.state.review = review
    return app


# -- serving -----------------------------------------------------------------------------


def page_url(host: str, port: int, runs: list[str]) -> str:
    shown = f"[{host}]" if ":" in host else host
    query = "?" + urlencode([("run", r) for r in runs]) if runs else ""
    return f"http://{shown}:{port}/{query}"


def expand_experiments(runs_dir: str, runs: list[str], known: set[str]) -> list[str]:
    """A name that is no run but an experiment (`ledger run eval.toml`) stands for its arms,
    shown side by side."""
    from llm_ledger.projections.experiments import experiment_arms

    out: list[str] = []
    for run in runs:
        arms = [] if run in known else experiment_arms(runs_dir, run)
        out += [a.run_id for a in arms] if arms else [run]
    return out


def serve(runs_dir: str, runs: list[str], *, host: str = "127.0.0.1", port: int = 8765, on_ready=print,
          review: bool = False) -> None:
    """Listen on ``host:port`` (0: any free port), call ``on_ready(url)``, serve until Ctrl-C."""
    import socket

    import uvicorn

    if not os.path.isdir(runs_dir):
        raise InputError(f"no runs directory {runs_dir!r} (use --runs-dir)")
    known = RunsDir(runs_dir).names()
    runs = expand_experiments(runs_dir, runs, known)
    for run in runs:
        if run not in known:
            raise InputError(f"no run {run!r} under {runs_dir} (name runs by id, as `ledger ls` shows them)")
    loopback = host in LOOPBACK_HOSTS or host.startswith("127.")
    app = create_app(runs_dir, LOOPBACK_HOSTS + [host] if loopback else None, review=review)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    on_ready(page_url(host, sock.getsockname()[1], runs))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; stopping is what was asked


def _rows_carry_metadata(index: AnswerIndex) -> bool:
    """A run whose log records each item's dataset line and metadata: its rows say all there
    is (an item without metadata has none), and its dataset file is never read."""
    return any(getattr(answer, "line", 0) for answer in index.answers.values())
