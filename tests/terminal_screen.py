"""The CLI in a real pseudo-terminal, and the screen a person would see (rendered by pyte).

``in_terminal(args, cols)`` runs ``ledger ARGS`` with a pty of ``cols`` columns as its
controlling terminal (stdin, stdout and stderr), so rich sees a real terminal of that width;
what it wrote is replayed through a VT100 emulator and returned as the visible lines.
``interrupt_when``: a text that, once it appears, is answered with Ctrl-C typed at the
terminal (the tty turns it into SIGINT for the foreground process group, as for a person).
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass

import pyte

ROWS = 200  # tall enough that nothing scrolls off: every line written stays on the screen


@dataclass
class Screen:
    lines: list[str]  # the visible rows, trailing blanks cut, empty rows at the end dropped
    returncode: int
    raw: bytes

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def joined(self, cols: int) -> list[str]:
        """The rows with each wrapped line put back together (a row filled to ``cols``
        continues on the next one) -- for text, not for the progress display, whose bar
        fills its row by design."""
        lines: list[str] = []
        carry = ""
        for row in self.lines:
            if len(row) == cols:
                carry += row
                continue
            lines.append(carry + row)
            carry = ""
        return lines + ([carry] if carry else [])

    def line_with(self, needle: str) -> int:
        """The index of the last row containing ``needle`` (the display's final picture)."""
        found = [i for i, line in enumerate(self.lines) if needle in line]
        assert found, f"{needle!r} not on the screen:\n{self.text}"
        return found[-1]


def _make_controlling() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def in_terminal(args: list[str], cols: int, cwd: str | os.PathLike, env: dict | None = None,
                interrupt_when: bytes | None = None, timeout: float = 60) -> Screen:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, cols, 0, 0))
    full_env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    full_env.update({"TERM": "xterm-256color", **(env or {})})
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=full_env, preexec_fn=_make_controlling, close_fds=True)
    os.close(slave)
    raw = bytearray()
    deadline = time.monotonic() + timeout
    interrupted = interrupt_when is None
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the pty is gone
                    break
                if not chunk:
                    break
                raw += chunk
            if not interrupted and interrupt_when in raw:
                os.write(master, b"\x03")
                interrupted = True
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    screen = pyte.Screen(cols, ROWS)
    pyte.ByteStream(screen).feed(bytes(raw))
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return Screen(lines, returncode, bytes(raw))
