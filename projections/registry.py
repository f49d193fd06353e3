"""Every projection of a run, in the order a rebuild folds them (the cheap ones first, so
``responses.jsonl`` and ``summary.json`` do not wait for one file per conversation).

Adding a projection is a module that meets ``projection.Projection`` and its line here: the
projector rebuilds, checks, stages and repairs every projection listed, the same way.
"""

from __future__ import annotations

import os

from llm_ledger.ledger.layout import RunPaths

from .batches import Batches
from .conversation_files import Conversations
from .failures import Failures
from .projection import Projection
from .rows import Rows

__all__ = ["PROJECTIONS", "NAMES", "output_names"]

PROJECTIONS: tuple[type[Projection], ...] = (
    Rows,  # responses.jsonl, summary.json
    Conversations,  # conversations/
    Failures,  # failures.jsonl
    Batches,  # batches.json (the Batch API runner's chunks)
)
NAMES: tuple[str, ...] = tuple(p.name for p in PROJECTIONS)


def output_names(paths: RunPaths, names: tuple[str, ...] = NAMES) -> tuple[str, ...]:
    """The top-level names these projections own in a run's directory (exports must not
    write over them: ``outputs.py``); a directory's with a slash."""
    return tuple(os.path.basename(o.path) + ("/" if o.directory else "")
                 for cls in PROJECTIONS if cls.name in names for o in cls(paths, _same, 0).outputs())


def _same(path: str) -> str:
    return path
