"""``ledger view``: a read-only local web page over the runs of one runs directory.

Endpoints (GET only; nothing writes, every other method is 405)::

    /                    the page (viewer/static/index.html); the script reads ?run=...
    /static/NAME         one of the files in ``STATIC``; any other name is 404
    /api/runs            every run: status, model, counts, accuracy
    /api/items           ?run=A&run=B&q=&diff=1&wrong=1&sort=&desc=1&page=0&size=50
                         one page of the merged item table, runs side by side, and its
                         ``coverage`` (projections.compare.coverage: "the runs share N of M
                         items"); disagreements count only keys every run holds
    /api/item            ?run=A&run=B&item=ID&sample=N: each run's conversation and attempts,
                         with latency (``latency_s``) and ``usage`` summed over its replies

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
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlencode

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
from llm_ledger.projections.compare import AnswerIndex, AnswerText, Coverage, as_text, coverage, key_order, normalized
from llm_ledger.projections.runs import RunRow, describe, files_version, list_runs
from llm_ledger.projections.show import item_story

__all__ = ["create_app", "serve", "STATIC", "PAGE_SIZE"]

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
CELL_LIMIT = 600  # characters of a response sent per table cell (the detail view has it all)
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
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
            if table is None or table.versions != [i.version for i in indexes]:
                self._tables.pop(key, None)
                if len(self._tables) >= 8:  # a few run sets stay cached; the oldest goes
                    self._tables.pop(next(iter(self._tables)))
                table = self._tables[key] = Table(indexes, names)
            return table

    def _index(self, paths: RunPaths) -> AnswerIndex:
        index = self._indexes.get(paths.run_id)
        if index is None:
            index = self._indexes[paths.run_id] = AnswerIndex(paths.responses, AnswerText)
        index.refresh()
        return index


# -- the merged item table ---------------------------------------------------------------


@dataclass
class Row:
    key: Key
    answers: list[AnswerText | None]
    agree: bool | None  # None: not in every run (the rule of ``compare.coverage``), or one run alone

    @property
    def wrong(self) -> bool:
        return any(a is not None and a.correct is False for a in self.answers)

    @property
    def expected(self) -> Any:
        return next((a.expected for a in self.answers if a is not None), None)

    def matches(self, needle: str) -> bool:
        if needle in self.key[0].casefold():
            return True
        texts = [as_text(self.expected)]
        for a in self.answers:
            if a is not None:
                texts += [a.response, a.prompt, as_text(a.parsed), a.error]
        return any(t is not None and needle in t.casefold() for t in texts)


def _agree(answers: list[AnswerText | None]) -> bool | None:
    """Whether the runs' parsed answers agree; only on a key every run holds, as compare counts."""
    if len(answers) < 2 or any(a is None for a in answers):
        return None
    first = normalized(answers[0].parsed)  # type: ignore[union-attr]
    return all(normalized(a.parsed) == first for a in answers[1:])  # type: ignore[union-attr]


def _sort_key(sort: str, n_runs: int):
    match = re.fullmatch(r"(parsed|correct)(\d+)", sort)
    if match and int(match[2]) < n_runs:
        i = int(match[2])
        if match[1] == "parsed":
            return lambda r: (r.answers[i] is None, str(as_text(r.answers[i].parsed)) if r.answers[i] else "")
        return lambda r: {False: 0, True: 1, None: 2}[r.answers[i].correct if r.answers[i] else None]
    if sort == "expected":
        return lambda r: (r.expected is None, str(as_text(r.expected)))
    if sort == "agree":
        return lambda r: {False: 0, True: 1, None: 2}[r.agree]
    if sort == "sample":
        return lambda r: r.key[1]
    return None  # item order: the table's own


class Table:
    """The items of several runs side by side (union of their keys), in natural item order;
    ``coverage`` says how many of them every run holds (the banner, and what compare uses)."""

    def __init__(self, indexes: list[AnswerIndex], names: list[str]) -> None:
        self.versions = [i.version for i in indexes]
        self.coverage: Coverage = coverage(names, [i.answers.keys() for i in indexes])
        keys: dict[Key, None] = {}
        for index in indexes:
            keys.update(dict.fromkeys(index.answers))
        ordered = sorted(keys, key=key_order)
        self.rows = [self._row(k, indexes) for k in ordered]
        self.disagreements = sum(r.agree is False for r in self.rows)
        self.stats = [self._stats(index) for index in indexes]
        self._orders: dict[tuple, list[Row]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _stats(index: AnswerIndex) -> dict[str, Any]:
        scored = [a.correct for a in index.answers.values() if a.correct is not None]
        return {"finished": len(index.answers), "scored": len(scored), "accuracy": sum(scored) / len(scored) if scored else None}

    @staticmethod
    def _row(key: Key, indexes: list[AnswerIndex]) -> Row:
        answers: list[AnswerText | None] = [i.answers.get(key) for i in indexes]  # type: ignore[misc]
        return Row(key, answers, _agree(answers))

    def select(self, *, q: str = "", diff: bool = False, wrong: bool = False, sort: str = "item", desc: bool = False) -> list[Row]:
        """The rows that pass the filters, in the asked order (cached per query)."""
        query = (q, diff, wrong, sort, desc)
        with self._lock:
            rows = self._orders.get(query)
            if rows is None:
                rows = self._orders[query] = self._select(*query)
                if len(self._orders) > 32:
                    self._orders.pop(next(iter(self._orders)))
            return rows

    def _select(self, q: str, diff: bool, wrong: bool, sort: str, desc: bool) -> list[Row]:
        needle = q.strip().casefold()
        rows = [r for r in self.rows if (not diff or r.agree is False) and (not wrong or r.wrong)
                and (not needle or r.matches(needle))]
        key = _sort_key(sort, len(self.versions))
        if key is not None:
            rows.sort(key=key, reverse=desc)
        elif desc:
            rows.reverse()
        return rows


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
    return _respond({"runs_dir": os.path.abspath(runs.dir), "runs": list_runs(runs.dir, runs.describe)})


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


def _api_items(request: Request) -> Response:
    runs: RunsDir = request.app.state.runs
    names = _run_names(request)
    table = runs.table(names)
    params = request.query_params
    rows = table.select(q=params.get("q", ""), diff=params.get("diff") == "1", wrong=params.get("wrong") == "1",
                        sort=params.get("sort", "item"), desc=params.get("desc") == "1")
    size = min(max(1, _int(request, "size", PAGE_SIZE)), MAX_PAGE_SIZE)
    pages = max(1, -(-len(rows) // size))
    page = min(_int(request, "page", 0), pages - 1)
    return _respond({
        "runs": [_run_info(runs, runs.paths(n), table, i) for i, n in enumerate(names)],
        "items": len(table.rows), "coverage": table.coverage.to_json(), "disagreements": table.disagreements,
        "matching": len(rows),
        "page": page, "pages": pages, "size": size,
        "rows": [_row_json(r) for r in rows[page * size:(page + 1) * size]],
    })


def _run_info(runs: RunsDir, paths: RunPaths, table: Table, i: int) -> dict[str, Any]:
    """A run's card: status and counts from ``run_status`` (as ``ledger status`` and ``ls``
    say them), answers from the table."""
    return {**msgspec.structs.asdict(runs.describe(paths)), **table.stats[i]}


def _row_json(row: Row) -> dict[str, Any]:
    return {"item_id": row.key[0], "sample": row.key[1], "expected": as_text(row.expected), "agree": row.agree,
            "answers": [None if a is None else _answer_json(a) for a in row.answers]}


def _answer_json(a: AnswerText) -> dict[str, Any]:
    response = a.response if a.response is None or len(a.response) <= CELL_LIMIT else a.response[:CELL_LIMIT] + " …"
    return {"parsed": as_text(a.parsed), "correct": a.correct, "response": response, "error": a.error}


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


def create_app(runs_dir: str, allowed_hosts: list[str] | None = None) -> Starlette:
    """The viewer over ``runs_dir``; ``allowed_hosts`` guards a loopback server from DNS rebinding."""
    routes = [
        Route("/", _page),
        Route("/static/{name}", _static),
        Route("/api/runs", _api_runs),
        Route("/api/items", _api_items),
        Route("/api/item", _api_item),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware)
    app.state.runs = RunsDir(runs_dir)
    return app


# -- serving -----------------------------------------------------------------------------


def page_url(host: str, port: int, runs: list[str]) -> str:
    shown = f"[{host}]" if ":" in host else host
    query = "?" + urlencode([("run", r) for r in runs]) if runs else ""
    return f"http://{shown}:{port}/{query}"


def serve(runs_dir: str, runs: list[str], *, host: str = "127.0.0.1", port: int = 8765, on_ready=print) -> None:
    """Listen on ``host:port`` (0: any free port), call ``on_ready(url)``, serve until Ctrl-C."""
    import socket

    import uvicorn

    if not os.path.isdir(runs_dir):
        raise InputError(f"no runs directory {runs_dir!r} (use --runs-dir)")
    known = RunsDir(runs_dir).names()
    for run in runs:
        if run not in known:
            raise InputError(f"no run {run!r} under {runs_dir} (name runs by id, as `ledger ls` shows them)")
    loopback = host in LOOPBACK_HOSTS or host.startswith("127.")
    app = create_app(runs_dir, LOOPBACK_HOSTS + [host] if loopback else None)
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
