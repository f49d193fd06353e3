"""``--batch-window DURATION``: how long a batch run waits for its batches (the provider's own
window is 24 h; waiting less leaves them running, and ``ledger resume`` picks them up)."""

from __future__ import annotations

import math
import re

from llm_ledger.ledger.errors import InputError

__all__ = ["parse_window"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|m|s)")
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_window(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``24h``, ``1h30m`` or ``2d``; an InputError naming
    the option otherwise."""
    spec = text.strip().lower()
    try:
        seconds = float(spec)
    except ValueError:
        parts = _PART.findall(spec)
        if not parts or "".join(n + u for n, u in parts) != spec:
            raise InputError(f"--batch-window {text!r}: expected a duration such as 90s, 30m, 24h or 1h30m") from None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"--batch-window {text!r}: must be a positive duration")
    return seconds
