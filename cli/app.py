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
    """Parse and run. A usage error (an unknown option, a missing value, a bad number) is one
    line naming the command's help, exit 2 -- never Typer's boxed panel: every error of
    ledger is one line."""
    import sys

    from .help_format import conventional

    # the parser's exception classes, from Typer's public BadParameter: newer Typers parse with
    # their own copy of click, older ones with click itself
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

    _register()
    command = conventional(typer.main.get_command(app))
    try:
        code = command.main(prog_name="ledger", standalone_mode=False)
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `ledger` or `ledger cache` alone: the help (rich prints it as it is made)
            text = exc.format_message()
            if text.strip():
                sys.stdout.write(text + "\n")
            sys.exit(0)
        where = exc.ctx.command_path if exc.ctx else "ledger"
        if where == "ledger":  # raised before the command's own context: name it from the arguments
            named = next((a for a in sys.argv[1:] if a in getattr(command, "commands", {})), None)
            where = f"ledger {named}" if named else where
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())} (see `{where} --help`)\n")
        sys.exit(2)
    except click_exception as exc:
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())}\n")
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt of the parser's own
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
