"""Datasets in, requests out: the OpenAI-compatible client, retries, rate limits, the
circuit breaker, scheduling, sessions (run / resume) and the built-in simulator.

Depends on ``projections`` (parsers, the projector) and ``ledger``; never on ``cli``.
"""

__all__ = ["session", "engine", "simulator"]
