"""How `ledger --help` names things: conventional metavars, commands in the order of use.

Typer derives a value's placeholder from its Python type (``<str>``, ``<list[str]>``) and
braces a required argument in the usage line (``{dataset}``); people expect ``PATH``, ``N``,
``URL``. ``conventional(group)`` rewrites the built click command tree once, before it
parses: every value gets a metavar from ``METAVARS`` by parameter name (else from its type:
``N`` for an integer, ``NUMBER`` for a float, ``TEXT``), a flag shows none, an argument is
its bare upper-case name in the usage line, and the commands are listed in ``ORDER`` (the
order a person meets them), any other after.
"""

from __future__ import annotations

import types
from typing import Any

__all__ = ["ORDER", "METAVARS", "conventional"]

ORDER = ("run", "resume", "status", "ls", "show", "compare", "view", "export", "sql", "import", "replay", "log", "verify",
         "simulate")

METAVARS = {
    "dataset": "PATH", "runs_dir": "PATH", "output": "PATH", "request_log": "PATH",
    "run": "RUN", "runs": "RUN", "item": "ITEM", "args": "RUN... FORMAT",
    "base_url": "URL", "host": "ADDRESS", "port": "PORT",
    "model": "NAME", "api_key_env": "VAR", "run_id": "NAME", "runner": "NAME", "transport": "NAME",
    "parser": "PARSER", "reparse": "PARSER", "template": "TEXT", "system": "TEXT", "sim": "JSON",
    "timeout": "SECONDS", "give_up_after": "SECONDS", "latency": "SECONDS", "jitter": "SECONDS",
    "retry_after": "SECONDS",
    "price_in": "USD", "price_out": "USD", "temperature": "NUMBER",
    "max_tokens": "N", "max_context": "N", "rpm": "N", "tpm": "N", "samples": "N", "limit": "N", "seed": "N",
    "concurrency": "N", "retries": "N", "sample": "N",
    "error_rate": "SHARE", "rate_429": "SHARE", "hang_rate": "SHARE", "reset_rate": "SHARE", "malformed_rate": "SHARE",
    "capacity": "PER_SECOND",
}


def conventional(group: Any) -> Any:
    """``group`` with conventional names in its help (changed in place)."""
    order = {name: i for i, name in enumerate(ORDER)}
    commands = getattr(group, "commands", None)
    if isinstance(commands, dict):
        group.commands = dict(sorted(commands.items(), key=lambda kv: order.get(kv[0], len(order))))
    for command in (group, *(commands or {}).values()):
        for param in command.params:
            _name(param)
        _set(command, "get_help_option", _bare_help(command.get_help_option))
    return group


def _bare_help(make: Any) -> Any:
    """The help option is made at each parse: name it as a flag each time."""
    def get_help_option(self: Any, ctx: Any) -> Any:
        option = make(ctx)
        if option is not None:
            _name(option)
        return option
    return get_help_option


def _name(param: Any) -> None:
    """Duck-typed: Typer's parameters are click's, or (newer Typer) its own copy of them."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        _set(param, "display_type_rich", lambda self, ctx: None)  # a flag takes no value: no placeholder
        return
    if param.metavar is None:
        param.metavar = METAVARS.get(param.name or "") or _by_type(param)
    if getattr(param, "param_type_name", "") == "argument":
        _set(param, "display_type_rich", lambda self, ctx: None)  # the name already says it
        _set(param, "get_usage_pieces", _usage)


def _usage(self: Any, ctx: Any) -> list[str]:
    name = self.metavar or (self.name or "").upper()
    if self.nargs != 1 and "..." not in name:
        name += "..."
    return [name if self.required else f"[{name}]"]


def _by_type(param: Any) -> str:
    kind = getattr(getattr(param, "type", None), "name", "") or str(getattr(param, "bare_type", lambda: "")())
    return {"integer": "N", "int": "N", "float": "NUMBER"}.get(kind, "TEXT")


def _set(param: Any, method: str, function: Any) -> None:
    """Replace one method of this parameter alone (only one Typer has: nothing otherwise)."""
    if hasattr(param, method):
        setattr(param, method, types.MethodType(function, param))
