"""Requests into chunks: which requests go into a batch, the input file's lines, and the cut
into files within the provider's limits (requests and bytes per file, one model per file).

Which of a round's requests are sent is decided in one place, ``BatchRunner._plan``
(runners/batch.py): a conversation that cannot fit fails there, and a request the cross-run
cache answers is recorded there and never goes into a batch. A chunk's bytes are a pure function of its requests, in order: the same works give
the same file and the same sha256 on every resume (that is how a planned chunk is rebuilt
after a crash and checked against its ``batch_planned``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import msgspec

from .batch_client import ENDPOINT
from .config import RunConfig
from .engine import request_key
from .runner import Work

__all__ = ["Request", "Cut", "request_of", "line_of", "cut", "content", "IDS_BYTES"]

_json = msgspec.json.Encoder()
IDS_BYTES = 2_000_000  # custom_ids per chunk, in bytes: its batch_planned event stays well inside a log frame


class Request(NamedTuple):
    """One request of a round: a work's next turn."""

    custom_id: str
    work: Work
    turn: int
    body: dict[str, Any]
    attempt: int  # the attempt number its ``started`` carries


class Cut(NamedTuple):
    requests: list[Request]
    lines: list[bytes]

    @property
    def data(self) -> bytes:
        return b"".join(self.lines)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def request_of(config: RunConfig, work: Work) -> Request:
    """The request for the work's next turn, built exactly as the per-request engine builds it."""
    item, turn = work.item, work.start_turn
    system = [{"role": "system", "content": config.system}] if config.system else []
    messages = (list(work.history) if turn else system) + item.turns[turn]
    body = {"model": config.model, "messages": messages, **config.params(), **item.params}
    return Request(request_key(item.id, work.sample, turn), work, turn, body, work.attempts + 1)


def line_of(request: Request) -> bytes:
    return _json.encode({"custom_id": request.custom_id, "method": "POST", "url": ENDPOINT, "body": request.body}) + b"\n"


def content(requests: Iterable[Request]) -> bytes:
    return b"".join(line_of(r) for r in requests)


def cut(requests: Iterable[Request], max_requests: int, max_bytes: int,
        oversize: list[tuple[Request, int]] | None = None) -> Iterator[Cut]:
    """Files of at most ``max_requests`` requests and ``max_bytes`` bytes, one model each, in
    the order the requests come (per model). A request whose line alone is over ``max_bytes``
    fits no file: it goes to ``oversize`` with its size (the runner fails it, unsent); without
    ``oversize`` it gets a file of its own."""
    open_cuts: dict[str, tuple[list[Request], list[bytes], list[int]]] = {}
    for request in requests:
        model = str(request.body.get("model"))
        line = line_of(request)
        if oversize is not None and len(line) > max_bytes:
            oversize.append((request, len(line)))
            continue
        reqs, lines, size = open_cuts.setdefault(model, ([], [], [0, 0]))
        full = reqs and (len(reqs) >= max_requests or size[0] + len(line) > max_bytes
                         or size[1] + len(request.custom_id) > IDS_BYTES)
        if full:
            yield Cut(reqs, lines)
            reqs, lines, size = open_cuts[model] = ([], [], [0, 0])
        reqs.append(request)
        lines.append(line)
        size[0] += len(line)
        size[1] += len(request.custom_id) + 3
    for reqs, lines, _ in open_cuts.values():
        if reqs:
            yield Cut(reqs, lines)
