"""The `ledger` command: one Typer app; each command lives in a module of its own."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="ledger",
    help="Run large LLM evaluation and batch-inference jobs so that no work is ever lost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from . import compare_cmd, export_cmd, log_cmd, replay_cmd, run_cmd, show_cmd, simulate_cmd, status_cmd, verify_cmd, view_cmd  # noqa: F401  (each adds its command)


def main() -> None:
    _register()
    app()
