"""Datasets in, requests out: preparation (prepare.py), the plan (plan.py), the session's
lifecycle (session.py), and the registry of ways to run (registry.py): runners (runner.py;
today per_request.py over the engine, retries, rate limits, the circuit breaker) and
transports (transport.py; the openai SDK, the built-in simulator in-process), plus parsers
and prices.

Depends on ``projections`` (the projector, the folds) and ``ledger``; never on ``cli``.
"""

__all__ = ["session", "engine", "simulator", "registry"]
