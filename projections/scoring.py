"""Scoring: does a parsed value match ``expected``? Normalized exact match.

Strings are compared case-folded with whitespace collapsed and surrounding punctuation
and quotes stripped; numbers compare numerically (so "1,000" == 1000 after the number
parser); a list ``expected`` means any of them counts. No expected value: ``None`` (not
scored), which is different from ``False``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["score", "normalize"]

_NUMBER_START = frozenset("+-.in")  # what float() accepts first, besides digits (inf, nan)


def normalize(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    text = " ".join(str(value).split()).strip(".,;:!?\"'`()[]").strip().casefold()
    first = text[:1]
    if first.isdigit() or (first and first in _NUMBER_START):  # else float() fails: skip its exception
        try:
            return float(text.replace(",", ""))
        except ValueError:
            pass
    return text


def score(parsed: Any, expected: Any, ok: bool = True) -> bool | None:
    if expected is None or expected == "":
        return None
    if not ok:
        return False
    if parsed.__class__ is str and parsed == expected:
        return True  # the common case of a right answer, without normalizing
    options = expected if isinstance(expected, list) else [expected]
    got = normalize(parsed)
    return any(got == normalize(option) for option in options)
