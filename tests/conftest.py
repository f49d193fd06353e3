"""Shared fixtures: every test works in tmp_path; subprocesses run the installed CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `ledger ARGS` in a real subprocess (the same interpreter as the tests)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "llm_ledger.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


@pytest.fixture
def cli(tmp_path):
    """`cli("log", "RUN")` runs the CLI with --runs-dir defaulting to tmp_path/runs."""

    def call(*args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("cwd", tmp_path)
        return run_cli(*args, **kw)

    return call
