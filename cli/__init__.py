"""The `ledger` command (Typer): parses options, calls one library function, prints.
Holds no business logic; each command lives in a module of its own (``*_cmd.py``).
"""

__all__ = ["app"]
