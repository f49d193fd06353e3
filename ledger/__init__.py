"""The log: event types, framing, group commit, recovery, the LMDB index, replay.

Imports none of the other packages of this distribution.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Each name loads its module when first used (PEP 562): `ledger --help` and `ledger status`
# must not pay for the writer, the index and the reader to reach one of them.
_WHERE = {
    "CorruptLogError": "errors", "InputError": "errors", "LedgerError": "errors", "LogClosedError": "errors",
    "LogError": "errors", "LogAccessError": "errors", "LogFormatError": "errors", "LogLockedError": "errors",
    "LogWriteError": "errors", "RunNotFoundError": "errors", "Event": "events", "RunIndex": "index",
    "RunPaths": "layout", "find_run": "layout", "repair_log": "maintenance", "verify_log": "maintenance",
    "follow_events": "reader", "iter_events": "reader", "iter_frames": "reader", "LogWriter": "writer",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .errors import (
        CorruptLogError,
        InputError,
        LedgerError,
        LogAccessError,
        LogClosedError,
        LogError,
        LogFormatError,
        LogLockedError,
        LogWriteError,
        RunNotFoundError,
    )
    from .events import Event
    from .index import RunIndex
    from .layout import RunPaths, find_run
    from .maintenance import repair_log, verify_log
    from .reader import follow_events, iter_events, iter_frames
    from .writer import LogWriter

__version__ = "0.1.0"

__all__ = [
    "CorruptLogError",
    "Event",
    "InputError",
    "LedgerError",
    "LogClosedError",
    "LogError",
    "LogAccessError",
    "LogFormatError",
    "LogLockedError",
    "LogWriteError",
    "LogWriter",
    "RunIndex",
    "RunNotFoundError",
    "RunPaths",
    "find_run",
    "follow_events",
    "iter_events",
    "iter_frames",
    "repair_log",
    "verify_log",
    "__version__",
]
