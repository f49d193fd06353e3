"""The one registry of ways to run: ``RUNNERS`` (how a plan is worked) and ``TRANSPORTS``
(how one request reaches a model), chosen by the run's config (``runner``, ``transport``;
``--runner`` / ``--transport``), recorded in ``run_started`` like every setting. A log
written before these settings existed reads as the defaults, which are what it used.

To add a runner: one module with a class taking a ``runner.RunContext`` and meeting the
``runner.Runner`` protocol, and one line in ``RUNNERS``. To add a transport: one module
with a class taking a ``transport.TransportSpec`` and meeting ``transport.Transport``, and
one line in ``TRANSPORTS`` (``remote``: whether it sends to URLs). Nothing else names them:
the config check (``check_kinds``, whose error lists the known names) and the session
read these tables.
"""

from __future__ import annotations

from typing import NamedTuple

from llm_ledger.ledger.errors import InputError

from .http_transport import HttpTransport
from .openai_transport import OpenAITransport
from .per_request import PerRequestRunner
from .runner import RunContext, Runner, RunnerFactory
from .sim_transport import SimTransport
from .transport import TransportFactory

__all__ = ["RUNNERS", "TRANSPORTS", "TransportKind", "check_kinds"]


class TransportKind(NamedTuple):
    make: TransportFactory
    remote: bool  # sends to URLs: --base-url, or without one the built-in HTTP simulator


def _batch(context: RunContext) -> Runner:
    """The Batch API runner, imported when a run uses it (a per-request run never loads it)."""
    from .batch import BatchRunner

    return BatchRunner(context)


RUNNERS: dict[str, RunnerFactory] = {
    "per-request": PerRequestRunner,
    "batch": _batch,  # the provider's Batch API (--batch): batch.py
}

TRANSPORTS: dict[str, TransportKind] = {
    "http": TransportKind(HttpTransport, remote=True),
    "openai": TransportKind(OpenAITransport, remote=True),
    "simulator": TransportKind(SimTransport, remote=False),
}


def check_kinds(runner: str, transport: str, base_url: str) -> None:
    """The run's runner and transport exist here (a log from a later version may name one
    this version lacks), and an in-process transport is not given a URL."""
    if runner not in RUNNERS:
        raise InputError(f"--runner {runner!r}: unknown; known: {', '.join(RUNNERS)}")
    if transport not in TRANSPORTS:
        raise InputError(f"--transport {transport!r}: unknown; known: {', '.join(TRANSPORTS)}")
    if base_url and not TRANSPORTS[transport].remote:
        raise InputError(f"--transport {transport} answers in-process: it takes no --base-url")
