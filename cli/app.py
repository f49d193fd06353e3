"""The `ledger` command: one Typer app; each command lives in a module of its own."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="ledger",
    help="Run large LLM evaluation and batch-inference jobs so that no work is ever lost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from llm_ledger.ledger import __version__

        typer.echo(f"ledger {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version)] = False,
) -> None:
    """Run large LLM evaluation and batch-inference jobs so that no work is ever lost."""


def _register() -> None:
    from . import cache_cmd, compare_cmd, export_cmd, log_cmd, merge_cmd, replay_cmd, run_cmd, show_cmd, simulate_cmd, status_cmd, verify_cmd, view_cmd  # noqa: F401  (each adds its command)
    from . import cancel_cmd, import_cmd, review_cmd, sql_cmd  # noqa: F401


def main() -> None:
    from .help_format import conventional

    _register()
    conventional(typer.main.get_command(app))(prog_name="ledger")
