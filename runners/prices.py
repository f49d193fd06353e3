"""Prices in USD per million tokens (prompt, completion), for cost estimates.

A small built-in table of well-known models (list prices as known to this version; check
your provider's page), overridden by a JSON file ``{"model": [price_in, price_out]}``
named by ``$LEDGER_PRICES`` or at ``~/.config/ledger/prices.json``. ``--price-in`` /
``--price-out`` beat both. The price in force is resolved when a run starts and stored in
its config, so the summary (and a rebuild of it) never depends on today's table.
"""

from __future__ import annotations

import json
import os

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError

__all__ = ["BUILTIN", "lookup"]

BUILTIN: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "sim-1": (0.0, 0.0),
}


def _user_table() -> dict[str, tuple[float, float]]:
    path = os.environ.get("LEDGER_PRICES") or os.path.expanduser("~/.config/ledger/prices.json")
    if not os.path.exists(path):
        return {}
    try:
        with fs.open_file(path) as f:
            data = json.load(f)
        return {str(model): (float(p[0]), float(p[1])) for model, p in data.items()}
    except (OSError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise InputError(f"{path}: prices must be JSON {{\"model\": [price_in, price_out]}} ({exc})") from exc


def lookup(model: str) -> tuple[float, float] | None:
    """The (price_in, price_out) of a model, or None when unknown."""
    table = {**BUILTIN, **_user_table()}
    if model in table:
        return table[model]
    base = model.rsplit("/", 1)[-1]  # "openai/gpt-4o" as routed by some providers
    return table.get(base)
