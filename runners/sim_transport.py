"""The simulator as a transport, in-process: the same replies and faults as the built-in
HTTP simulator (``simulator.answer``), without a socket, a server thread or the SDK.

The worked example of adding a transport: this module and its line in
``registry.TRANSPORTS``. It is chosen by ``--transport simulator`` (the run's config), for
tests and benchmarks of the runner alone and for a run with no network at all. Every
answer goes through the same wire-format code as a real endpoint's (completion.py), so
failures are the same ``EndpointError`` types: 429 with ``Retry-After``, 5xx, a timeout for
a hang, a connection error for a reset, ``malformed_response`` for a broken body.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from llm_ledger.ledger.errors import EndpointError

from .completion import decode_reply, error_message, ratelimit_pause, status_error
from .redaction import redact, redactor
from .simulator import RESET, SimConfig, answer, ledger_key, new_state
from .transport import Reply, TransportSpec

__all__ = ["SimTransport"]


class SimTransport:
    def __init__(self, spec: TransportSpec) -> None:
        self.state = new_state(msgspec.convert(spec.simulator, SimConfig))
        self.secrets = spec.secrets

    async def send(self, body: dict[str, Any], key: str, timeout: float | None) -> Reply:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                got = await answer(self.state, body, ledger_key(key))
        except TimeoutError:
            raise EndpointError("timeout", f"no complete reply within {timeout:g} s", retryable=True) from None
        if got.status == RESET:
            raise EndpointError("connection", redact("connection failed: the simulator dropped it mid-body", self.secrets),
                                retryable=True)
        if got.status != 200:
            raise status_error(got.status, error_message(got.status, got.body), got.headers, self.secrets)
        reply = decode_reply(got.body, time.perf_counter() - start, redactor(self.secrets, bearer=False))
        return reply._replace(pause=ratelimit_pause(got.headers))

    async def close(self) -> None:
        if self.state.log_file is not None:
            self.state.log_file.close()

