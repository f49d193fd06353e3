"""The per-request runner: each (item, sample, turn) is one request, at most
``--concurrency`` in flight, spread over the run's endpoints (the engine, engine.py).

This module is the wiring: one transport per endpoint (``RunContext.transport``), each with
its adaptive limit and circuit breaker, the rate limits, and -- for a remote transport
without ``--base-url`` -- the built-in HTTP simulator started on loopback for the session
(the embedded default). An in-process transport gets one endpoint, named after the
transport in the events.
"""

from __future__ import annotations

from collections.abc import Iterator

from .breaker import Breaker
from .endpoints import Endpoint, Pool
from .engine import Engine
from .limits import AdaptiveLimit, RateLimits
from .runner import Progress, RunContext, Work
from .simulator import SimConfig, Simulator
from .transport import TransportSpec

__all__ = ["PerRequestRunner", "EMBEDDED_NAME", "IN_PROCESS_NAME"]

EMBEDDED_NAME = "embedded-simulator"  # the endpoint name in events for the built-in HTTP simulator
IN_PROCESS_NAME = "in-process-simulator"  # ... and for an in-process transport


class PerRequestRunner:
    def __init__(self, context: RunContext) -> None:
        config = context.config
        self._simulator = Simulator(SimConfig(**config.simulator)).start() if config.embedded and context.remote else None
        if self._simulator is not None:
            urls, names = [self._simulator.base_url], {self._simulator.base_url: EMBEDDED_NAME}
        elif context.remote:
            urls = config.endpoints()
            names = {u: u for u in urls}
        else:
            urls, names = [""], {"": IN_PROCESS_NAME}
        endpoints = [Endpoint(url, context.transport(TransportSpec(url, context.api_key, context.secrets, config.timeout,
                                                                   config.concurrency, config.simulator)),
                              AdaptiveLimit(config.concurrency)) for url in urls]
        self.pool = Pool(endpoints, config.give_up_after)
        self.engine = Engine(config, context.writer, self.pool, context.parser, context.secrets,
                             RateLimits(config.rpm, config.tpm, context.shared), names=names, cache=context.cache)
        for endpoint in endpoints:
            endpoint.breaker = Breaker(Pool.watch(endpoint.url, self.engine.breaker_changed))

    @property
    def progress(self) -> Progress:
        return self.engine.progress

    async def run(self, works: Iterator[Work | None]) -> None:
        try:
            await self.engine.run(works)
        finally:
            for endpoint in self.pool.endpoints:
                await endpoint.transport.close()
            if self._simulator is not None:
                self._simulator.stop()

    def stop(self, reason: str = "interrupted") -> None:
        self.engine.stop(reason)

    def abort(self) -> None:
        self.engine.abort()
