"""Scoring: does a parsed value match ``expected``? Normalized exact match.

Strings are compared case-folded with whitespace collapsed and surrounding punctuation
and quotes stripped; numbers compare numerically (so "1,000" == 1000 after the number
parser); a list ``expected`` means any of them counts. No expected value: ``None`` (not
scored), which is different from ``False``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["score", "normalize"]

_SPACE = re.compile(r"\s+")


def normalize(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    text = _SPACE.sub(" ", str(value)).strip().strip(".,;:!?\"'`()[]").strip().casefold()
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return text


def score(parsed: Any, expected: Any, ok: bool = True) -> bool | None:
    if expected is None or expected == "":
        return None
    if not ok:
        return False
    options = expected if isinstance(expected, list) else [expected]
    got = normalize(parsed)
    return any(got == normalize(option) for option in options)
