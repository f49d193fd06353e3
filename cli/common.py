"""What every command shares: the runs-dir option, error mapping, printing.

A command parses, calls one library function inside ``handled()``, and prints. A
``LedgerError`` becomes one red line on stderr and the error's exit code; so does any
``OSError`` that no layer translated (full disk, read-only file system, I/O error): one line
naming the path and the reason, exit 1. A reader leaving the pipe (``ledger log | head``) is a
quiet exit 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import LedgerError

__all__ = ["RunsDir", "handled", "err", "out", "fail", "stdout", "StdStream", "os_error_line", "resume_line", "error_line"]

RunsDir = Annotated[
    str,
    typer.Option("--runs-dir", envvar="LEDGER_RUNS_DIR", help="Directory holding runs."),
]


def fail(message: str, code: int) -> "typer.Exit":
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        # `ledger log | head`: the reader left; exit quietly like other Unix tools.
        os.dup2(fs.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except (LedgerError, OSError) as exc:
        _quiet_after_error()
        text, code = error_line(exc)
        raise fail(_escape(text), code) from None


def error_line(exc: LedgerError | OSError) -> tuple[str, int]:
    """The one line said for an error, and the exit code."""
    if isinstance(exc, LedgerError):
        return str(exc), exc.exit_code
    return os_error_line(exc), 1


def _quiet_after_error() -> None:
    """The error's one line is said; a file object the failure left half-closed (openpyxl's
    ZipFile on a full disk) must not add a second report when its destructor fails again at
    exit ("Exception ignored in ... __del__")."""
    sys.unraisablehook = lambda unraisable: None


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` for an OSError. Every file-system call goes through ``ledger.fs``,
    whose errors carry their file (a descriptor's path is remembered at its open), and the
    standard streams are written through ``StdStream``, which names itself; an error with no
    name is said by its reason alone."""
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
    if exc.filename is None:
        return reason
    where = _stream_name(os.fsdecode(exc.filename))
    if exc.filename2 is not None:
        where += f" -> {os.fsdecode(exc.filename2)}"
    return f"{where}: {reason}"


_STREAMS = {"<stdout>": "standard output", "<stderr>": "standard error", "-": "standard output"}


def _stream_name(name: str) -> str:
    return _STREAMS.get(name, name)


class StdStream:
    """``sys.stdout`` or ``sys.stderr`` (looked up at each call, so a redirect is followed)
    whose write errors name the stream: a full disk under ``ledger log > file`` is said as
    "standard output: No space left on device", not as a bare reason."""

    def __init__(self, name: str) -> None:
        self._name = name  # "stdout" or "stderr"

    def _stream(self) -> Any:
        return getattr(sys, self._name)

    def write(self, text: Any) -> int:
        try:
            return self._stream().write(text)
        except OSError as exc:
            raise _named(exc, self._name)

    def flush(self) -> None:
        try:
            self._stream().flush()
        except OSError as exc:
            raise _named(exc, self._name)

    def put_bytes(self, data: bytes) -> int:
        """Bytes, through the stream's buffer."""
        try:
            return self._stream().buffer.write(data)
        except OSError as exc:
            raise _named(exc, self._name)

    def flush_bytes(self) -> None:
        try:
            self._stream().buffer.flush()
        except OSError as exc:
            raise _named(exc, self._name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream(), name)


def _named(exc: OSError, stream: str) -> OSError:
    if exc.filename is None:
        exc.filename = f"<{stream}>"
    return exc


stdout = StdStream("stdout")
# emoji=False: rich would turn ":x:" in a parser spec, a path or a model's reply into an emoji
out = Console(file=stdout, highlight=False, soft_wrap=True, emoji=False)  # type: ignore[arg-type]
err = Console(file=StdStream("stderr"), highlight=False, soft_wrap=True, emoji=False)  # type: ignore[arg-type]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def resume_line(paths: Any) -> str:
    """``resume with: ledger resume RUN`` (with ``--runs-dir`` when the run is not under the
    default one): the one line said wherever a run is left resumable."""
    return f"resume with: {run_command('resume', paths)}"


def run_command(command: str, paths: Any, *options: str) -> str:
    """``ledger COMMAND RUN [OPTIONS]``, with ``--runs-dir`` when the run is not under the
    default runs directory: a command the user can paste."""
    import shlex

    runs_dir = os.path.dirname(os.path.abspath(paths.dir))
    default = os.path.abspath(os.environ.get("LEDGER_RUNS_DIR") or "runs")
    extra = "" if runs_dir == default else f" --runs-dir {shlex.quote(runs_dir)}"
    return " ".join(["ledger", command, shlex.quote(paths.run_id), *options]) + extra
