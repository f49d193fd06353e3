"""The log: event types, framing, group commit, recovery, the LMDB index, replay.

Imports none of the other packages of this distribution.
"""

from .errors import (
    CorruptLogError,
    InputError,
    LedgerError,
    LogClosedError,
    LogError,
    LogAccessError,
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
