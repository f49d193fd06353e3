"""The simulator in its own process, for the benchmarks: a free port and a started server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

__all__ = ["free_port", "start_simulator"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(port: int, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`ledger simulate --port PORT FLAGS...`, returned once it accepts connections."""
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "simulate", "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("simulator did not start")
