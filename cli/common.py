"""What every command shares: the runs-dir option, error mapping, printing.

A command parses, calls one library function inside ``handled()``, and prints. A
``LedgerError`` becomes one red line on stderr and the error's exit code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console

from ledger.errors import LedgerError

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
        raise fail(_escape(str(exc)), exc.exit_code) from None
    except BrokenPipeError:
        # `ledger log | head`: the reader left; exit quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
