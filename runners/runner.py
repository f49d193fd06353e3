"""The seam for ways of working a plan: a ``Runner`` takes the works (item, sample, where
to start) and records every attempt as events through the log writer.

Two runners: ``per_request.PerRequestRunner`` (one request per turn, at most
``--concurrency`` at once, through a ``Transport`` per endpoint), and ``batch.BatchRunner``
(``--batch``, issue 16: the provider's Batch API -- files of requests uploaded, batches
created and polled, their ``batch_*`` events beside the same ``started`` / ``response`` /
``parsed`` / ``failed`` events, so every projection reads both alike; its ``stop`` stops
waiting and leaves the batches at the provider). A runner is chosen by the
run's config (``runner``) from ``registry.RUNNERS``: adding one is one module holding its
class (a factory taking a ``RunContext``) and one line there.

What every runner owes the session: ``progress`` (counts the CLI shows and reads at the end;
``stop_reason`` starts with ``error`` or ``endpoint down`` when that ended the run),
``run`` (returns when every work is recorded or the run was stopped; raises the writer's
error if the log died), ``stop`` (first Ctrl-C: drain gracefully) and ``abort`` (second:
now). Both are called on the event loop's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from llm_ledger.ledger.writer import LogWriter

from .config import RunConfig
from .dataset import Item
from .limits import SharedLimits
from .parsers import Parser
from .transport import TransportFactory

__all__ = ["Work", "Progress", "RunContext", "Runner", "RunnerFactory"]


class Work(NamedTuple):
    item: Item
    sample: int
    start_turn: int = 0
    history: list[dict[str, Any]] = []  # messages of the turns already completed
    attempts: int = 0  # attempts made by earlier sessions


@dataclass
class Progress:
    total: int = 0
    done: int = 0
    failed: int = 0
    retrying: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopping: bool = False
    stop_reason: str = ""
    paused: bool = False
    limit: int = 0
    first_reply: tuple[dict[str, Any], str] | None = None
    errors: dict[str, int] = field(default_factory=dict)
    internal: list[str] = field(default_factory=list)  # the first internal errors, one line each, for the user
    cached: int = 0  # replies served from the cross-run cache (nothing sent; counted in done too)
    cached_prompt_tokens: int = 0  # their usage: what they would have cost (not in the tokens above)
    cached_completion_tokens: int = 0
    stopping_words: str = "finishing the requests in flight"  # what a stop waits for (the display says it)



class RunContext(NamedTuple):
    """What a runner is built from (by the session)."""

    config: RunConfig
    writer: LogWriter
    parser: Parser
    api_key: str
    secrets: tuple[str, ...]  # redacted from every message and reply
    transport: TransportFactory  # the run's transport (registry.TRANSPORTS[config.transport])
    remote: bool  # the transport sends to URLs (else: in-process, one endpoint without one)
    cache: Any = None  # runners.cache.Cache: look a request up before sending it (None: no cache)
    shared: SharedLimits | None = None  # a provider's limits shared with other runs (an experiment)


class Runner(Protocol):
    progress: Progress

    async def run(self, works: Iterator[Work | None]) -> None:
        """Work every work; a ``None`` is not a work but the plan's pause between batches (let
        the loop run)."""
        ...

    def stop(self, reason: str = "interrupted") -> None: ...

    def abort(self) -> None: ...


RunnerFactory = Callable[[RunContext], Runner]
