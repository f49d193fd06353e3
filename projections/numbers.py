"""Numbers as people read them: the one place every text surface formats a figure.

The terminal (run header, progress, the closing summary, ``status``, ``ls``, ``show``,
``compare``) calls these, so a cost reads ``$0.0072`` wherever it appears, a latency
``23 ms``, a rate ``12.3/s``. Fixed precision per kind, so columns line up and nothing is
ragged; ``None`` (a figure that does not exist yet) reads ``-``. JSON outputs never pass
through here: they keep full precision.
"""

from __future__ import annotations

__all__ = ["usd", "ms", "p_value", "per_second", "percent", "count", "duration", "clock", "plural", "MISSING"]

MISSING = "-"  # a figure that does not exist (no price, nothing scored, nothing timed yet)


def usd(value: float | None) -> str:
    """``$0.0072``: four decimals always (a cent's hundredth: what a few cheap requests cost);
    a cost that is not zero never reads as ``$0.0000`` (``<$0.0001``)."""
    if value is None:
        return MISSING
    return "<$0.0001" if 0 < value < 0.00005 else f"${value:,.4f}"


def ms(seconds: float | None) -> str:
    """A latency given in seconds, in whole milliseconds: ``23 ms`` (``<1 ms`` under half of one)."""
    if seconds is None:
        return MISSING
    millis = round(seconds * 1000)
    return "<1 ms" if millis == 0 and seconds > 0 else f"{millis:,} ms"



def per_second(value: float | None, unit: str = "") -> str:
    """A rate with one decimal: ``12.3/s`` (``12.3 items/s`` with a unit)."""
    if value is None:
        return MISSING
    return f"{value:,.1f} {unit}/s" if unit else f"{value:,.1f}/s"


def percent(fraction: float | None) -> str:
    """A share with one decimal: ``93.3%``; not all is never ``100.0%`` (``>99.9%``), some is
    never ``0.0%`` (``<0.1%``)."""
    if fraction is None:
        return MISSING
    if 0.999 < fraction < 1:
        return ">99.9%"
    if 0 < fraction < 0.001:
        return "<0.1%"
    return f"{fraction:.1%}"


def count(n: int | None) -> str:
    """An integer with thousands separators: ``100,000``."""
    return MISSING if n is None else f"{n:,}"


def duration(seconds: float | None) -> str:
    """A span: ``1.6 s`` under a minute, then ``2m 05s``, ``1h 02m``."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def clock(seconds: float | None) -> str:
    """A span as a clock, for a time left: ``0:42``, ``12:05``, ``1:02:03``."""
    if seconds is None:
        return MISSING
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 item``, ``3 items``, ``100,000 items`` (``many``: an irregular plural)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def p_value(p: float | None) -> str:
    """A test's p-value with four decimals: ``0.0078``, ``1.0000``; below 0.0001, four
    significant digits (``1.863e-09``): rounded for the eye, never to 0."""
    if p is None:
        return MISSING
    return f"{p:.3e}" if 0 < p < 0.0001 else f"{p:.4f}"
