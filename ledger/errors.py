"""Every error `ledger` raises on purpose, in one tree.

Foreign exceptions (OSError, lmdb.Error, msgspec errors, openai errors) are translated
where they enter our code with ``raise X(...) from exc``, so callers -- above all the CLI --
catch ``LedgerError`` alone and map it to an exit code::

    LedgerError                      exit_code 1
    +-- InputError                   2  bad dataset, option or configuration
    |   +-- RunNotFoundError         2  no such run under the runs directory
    +-- LogError                     1  the event log cannot be used as asked
    |   +-- LogFormatError           2  not a ledger log, or a format version we cannot read
    |   +-- CorruptLogError          1  a damaged frame before the tail (carries .offset)
    |   |   +-- LogNotSoundError     1  a writer refused to append behind a damaged frame
    |   +-- LogLockedError           2  another process holds the run (carries .pid)
    |   +-- LogAccessError           2  the log or its lock cannot be opened for writing
    |   +-- LogWriteError            1  a write or fsync failed; the writer is dead
    |   +-- LogClosedError           1  append after close or after a fatal write error
    |   +-- UnencodableEventError    1  one submission the log cannot hold; the writer lives on
    +-- IndexStateError              1  the LMDB index could not be opened or rebuilt
    +-- EndpointError                1  one attempt at a request failed (becomes a `failed` event)
    +-- GaveUp                       1  every endpoint stayed down past --give-up-after
    +-- ProjectionError              1  the projections could not be written (the log is complete)
    +-- StorageError                 1  a run's file could not be written (disk full, I/O error)
    +-- OutputError                  1  a file the user asked for could not be written

Messages never contain secrets: the runner redacts before raising.
"""

from __future__ import annotations

__all__ = [
    "LedgerError",
    "InputError",
    "RunNotFoundError",
    "LogError",
    "LogFormatError",
    "CorruptLogError",
    "LogLockedError",
    "LogAccessError",
    "LogWriteError",
    "LogClosedError",
    "IndexStateError",
    "StorageError",
    "LogNotSoundError",
    "OutputError",
    "UnencodableEventError",
    "EndpointError",
    "GaveUp",
    "ProjectionError",
]


class LedgerError(Exception):
    """Base of every deliberate error; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class InputError(LedgerError):
    """The user gave us something we cannot use; nothing has been written."""

    exit_code = 2


class RunNotFoundError(InputError):
    """A run id or path that names no run."""


class LogError(LedgerError):
    """The event log cannot be used as asked."""


class LogFormatError(LogError):
    """The file is not a ledger log, or was written by a format version we cannot read."""

    exit_code = 2


class CorruptLogError(LogError):
    """A frame before the tail failed its checks: never skipped, always reported."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(
            f"{path}: corrupt frame at byte offset {offset}: {reason} "
            f"(run `ledger verify --repair` to salvage what precedes it)"
        )
        self.path = path
        self.offset = offset
        self.reason = reason


class LogLockedError(LogError):
    """Another live process is the writer of this run."""

    exit_code = 2

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"{path} is locked by {holder}: one writer per run")
        self.path = path
        self.pid = pid


class LogAccessError(LogError):
    """The run's log or lock cannot be opened or created for writing (no write permission,
    a read-only file system ...): the OSError, said once and plainly."""

    exit_code = 2

    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(f"{path}: cannot open for writing: {exc.strerror or exc}")
        self.path = path


class LogWriteError(LogError):
    """A write or fsync failed. The descriptor is abandoned, never synced again."""


class LogClosedError(LogError):
    """Append on a closed writer, or on one that died of a write error."""


class UnencodableEventError(LogError):
    """A submission the log cannot hold (a value MessagePack cannot encode, or that would
    not decode back). Only that submission failed; the writer goes on."""


class IndexStateError(LedgerError):
    """The LMDB index could not be opened, caught up or rebuilt."""


class StorageError(LedgerError):
    """A file of the run could not be written or created: no space left, an I/O error, a
    quota. Exit 1: nothing acknowledged is lost, and the run resumes once the cause is gone.
    (No permission or a read-only file system is LogAccessError, exit 2: configuration.)"""

    def __init__(self, path: str, exc: OSError, doing: str = "cannot write") -> None:
        super().__init__(f"{path}: {doing}: {exc.strerror or exc}")
        self.path = path
        self.errno = exc.errno


class LogNotSoundError(CorruptLogError):
    """A writer was about to append to a log that is damaged before its end: refused, so that
    nothing new lands behind a corrupt frame (repair first)."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(path, offset, reason)
        self.args = (f"{path}: corrupt frame at byte offset {offset}: {reason}; nothing was appended: "
                     f"run `ledger verify --repair` first (it keeps every frame it can read and saves "
                     f"the damaged bytes beside the log), then resume",)

    def __str__(self) -> str:
        return self.args[0]


class OutputError(LedgerError):
    """A file the user asked for could not be written (full disk, quota, I/O error); the
    partial temp file is gone and any earlier file at that path is untouched."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path


class EndpointError(LedgerError):
    """An attempt failed; the fields become a ``failed`` event. Every transport raises it,
    whatever failed underneath (status, timeout, connection, a malformed reply), with its
    message already redacted."""

    def __init__(self, error_type: str, message: str, *, status: int | None = None,
                 retryable: bool = False, retry_after: float | None = None, pause: float | None = None) -> None:
        super().__init__(message)
        self.pause = pause  # seconds the endpoint asked us to hold off (x-ratelimit-*)
        self.error_type = error_type
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class GaveUp(LedgerError):
    """Every endpoint stayed down longer than --give-up-after: the run stops as interrupted
    (resumable), never as failed."""


class ProjectionError(LedgerError):
    """The projections could not be written (disk full, a name too long ...); the log is
    complete, so a resume or `ledger replay --rebuild` redoes them."""
