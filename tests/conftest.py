"""Shared fixtures: every test works in tmp_path; subprocesses run the installed CLI."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `ledger ARGS` in a real process of its own: forked from this worker's warm fork
    server (tests/chaos/procs.py says what is shared and why the child is still what a user
    runs), or a fresh interpreter with ``LEDGER_TEST_FRESH=1``."""
    from chaos.procs import Hung, start_cli

    mode = "exec" if os.environ.get("LEDGER_TEST_FRESH") == "1" else "fork"
    with tempfile.TemporaryDirectory(prefix="ledger-cli-") as files:
        stdin = None
        if input is not None:
            stdin = Path(files) / "stdin"
            stdin.write_text(input, encoding="utf-8")
        proc = start_cli(*args, cwd=Path(cwd if cwd is not None else os.getcwd()), mode=mode, env=env,
                         files=Path(files), stdin=stdin)
        try:
            code = proc.wait(timeout)
        except Hung:
            raise subprocess.TimeoutExpired(["ledger", *args], timeout, proc.stdout, proc.stderr) from None
        return subprocess.CompletedProcess(["ledger", *args], code, proc.stdout, proc.stderr)


@pytest.fixture
def cli(tmp_path):
    """`cli("log", "RUN")` runs the CLI with --runs-dir defaulting to tmp_path/runs."""

    def call(*args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("cwd", tmp_path)
        return run_cli(*args, **kw)

    return call
