"""Ctrl-C and SIGTERM during `ledger run` / `ledger resume`: the CLI's, never the library's.

First signal: the runner stops scheduling; what waits is cancelled, requests in flight get
the engine's ``GRACE`` seconds. Second: the runner aborts (cancels everything now). Either
way the session then closes normally (the log ends with ``session_ended``), and the command
exits 130 (exit_codes.py). A Ctrl-C that arrives after the loop ended, while the log is
closing, is a KeyboardInterrupt that run_cmd.py catches.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from llm_ledger.runners.runner import Runner

__all__ = ["install_interrupts"]


def install_interrupts(runner: Runner) -> Callable[[], None]:
    """Install the handlers on the running loop; returns what removes them."""
    loop = asyncio.get_running_loop()

    def handler() -> None:
        if runner.progress.stopping:
            runner.abort()
        else:
            runner.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove
