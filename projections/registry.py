"""Every projection of a run, in the order a rebuild folds them (the cheap ones first, so
``responses.jsonl`` and ``summary.json`` do not wait for one file per conversation).

Adding a projection is a module that meets ``projection.Projection`` and its line here: the
projector rebuilds, checks, stages and repairs every projection listed, the same way.
"""

from __future__ import annotations

from .conversation_files import Conversations
from .projection import Projection
from .rows import Rows

__all__ = ["PROJECTIONS", "NAMES"]

PROJECTIONS: tuple[type[Projection], ...] = (
    Rows,  # responses.jsonl, summary.json
    Conversations,  # conversations/
)
NAMES: tuple[str, ...] = tuple(p.name for p in PROJECTIONS)
