"""What every command shares: the runs-dir option, error mapping, printing.

A command parses, calls one library function inside ``handled()``, and prints. A
``LedgerError`` becomes one red line on stderr and the error's exit code; so does any
``OSError`` that no layer translated (full disk, read-only file system, I/O error): one line
naming the path and the reason, exit 1. A reader leaving the pipe (``ledger log | head``) is a
quiet exit 0.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import Annotated, Any

import typer
from rich.console import Console

from llm_ledger.ledger.errors import LedgerError

__all__ = ["RunsDir", "handled", "err", "out", "fail"]

RunsDir = Annotated[
    str,
    typer.Option("--runs-dir", envvar="LEDGER_RUNS_DIR", help="Directory holding runs."),
]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int) -> "typer.Exit":
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    try:
        yield
    except LedgerError as exc:
        _quiet_after_error()
        raise fail(_escape(str(exc)), exc.exit_code) from None
    except BrokenPipeError:
        # `ledger log | head`: the reader left; exit quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except OSError as exc:
        _quiet_after_error()
        raise fail(_escape(os_error_line(exc)), 1) from None


def _quiet_after_error() -> None:
    """The error's one line is said; a file object the failure left half-closed (openpyxl's
    ZipFile on a full disk) must not add a second report when its destructor fails again at
    exit ("Exception ignored in ... __del__")."""
    sys.unraisablehook = lambda unraisable: None


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` for an OSError: its own file name when it has one, else the file the
    failing code was writing (found in the traceback), else the reason alone."""
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
    if exc.filename is not None:
        where = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return f"{where}: {reason}"
    where = _file_in(exc.__traceback__)
    return f"{where}: {reason}" if where else reason


def _file_in(tb: TracebackType | None) -> str | None:
    """The file the failing code was working on, from the innermost frame that says: an
    open file object (a local, a bound method's object, an attribute of ``self``; one open
    for writing first), else a local string named ``path``. A file object's or a
    descriptor's error carries no file name (``f.write`` on a full disk, a projector's
    ``self._responses.write``, ``os.pwrite(fd, ...)``); this names what the disk refused."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        found = _named_file(frame.f_locals)
        if found:
            return found
    return None


def _named_file(local: dict[str, Any]) -> str | None:
    values = list(local.values())
    owner = local.get("self")
    if owner is not None and hasattr(owner, "__dict__"):
        values += [*vars(owner).values(), _attribute(owner, "file")]  # rich's Console.file: a property
    files = sorted((f for f in map(_as_file, values) if f is not None), key=lambda f: not _writable(f))
    for f in files:
        name = getattr(f, "name", None)
        if isinstance(name, str):
            return _STREAMS.get(name, name)
    path = local.get("path")
    return _STREAMS.get(path, path) if isinstance(path, str) and path else None


_STREAMS = {"<stdout>": "standard output", "<stderr>": "standard error", "-": "standard output"}


def _attribute(value: Any, name: str) -> Any:
    try:
        return getattr(value, name, None)
    except Exception:  # a property that fails: nothing to learn from it
        return None


def _as_file(value: Any) -> io.IOBase | None:
    bound = _attribute(value, "__self__")  # a bound method such as sys.stdout.buffer.write
    value = value if bound is None else bound
    return value if isinstance(value, io.IOBase) else None


def _writable(f: io.IOBase) -> bool:
    try:
        return f.writable()
    except ValueError:  # closed (a `with` block already left): its mode still tells
        return any(c in getattr(f, "mode", "") for c in "wax+")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
