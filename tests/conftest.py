"""Shared fixtures: every test works in tmp_path; subprocesses run the installed CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading

import pytest


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `ledger ARGS` in a real process of its own: forked from this worker's warm
    zygote (tests/zygote.py says what is shared and why it is safe), or a fresh
    interpreter with ``LEDGER_TEST_FRESH=1``."""
    full_env = {**os.environ, **(env or {})}
    if os.environ.get("LEDGER_TEST_FRESH") == "1":
        return subprocess.run([sys.executable, "-m", "llm_ledger.cli", *args], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout, input=input)
    return _zygote().run(list(args), os.fspath(cwd) if cwd is not None else os.getcwd(), full_env, timeout, input)


class _Zygote:
    """The client of one zygote process; thread-safe (tests run CLI calls from pools)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "zygote.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lock = threading.Lock()
        self.waiting: dict[str, tuple[threading.Event, dict]] = {}
        self.next_id = 0
        self.folder = tempfile.mkdtemp(prefix="ledger-zygote-")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            answer = json.loads(line)
            with self.lock:
                event, box = self.waiting[answer["id"]]
            box.update(answer)
            if "code" in answer:
                event.set()
        with self.lock:  # the zygote is gone: nobody waits forever
            for event, box in self.waiting.values():
                box.setdefault("code", None)
                event.set()

    def run(self, args: list[str], cwd: str, env: dict, timeout: float, stdin: str | None) -> subprocess.CompletedProcess:
        with self.lock:
            self.next_id += 1
            ident = str(self.next_id)
            event, box = threading.Event(), {}
            self.waiting[ident] = (event, box)
        paths = {name: os.path.join(self.folder, f"{ident}.{name}") for name in ("stdin", "stdout", "stderr")}
        for name, path in paths.items():
            with open(path, "w", encoding="utf-8") as f:
                f.write(stdin if name == "stdin" and stdin is not None else "")
        request = {"id": ident, "args": args, "cwd": cwd, "env": env, **paths}
        with self.lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        try:
            if not event.wait(timeout):
                if "pid" in box:
                    os.kill(box["pid"], signal.SIGKILL)
                event.wait(10)
                raise subprocess.TimeoutExpired(["ledger", *args], timeout, self._read_file(paths["stdout"]),
                                                self._read_file(paths["stderr"]))
            if box.get("code") is None:
                raise RuntimeError("the test zygote died; rerun with LEDGER_TEST_FRESH=1 to see the CLI alone")
            return subprocess.CompletedProcess(["ledger", *args], box["code"], self._read_file(paths["stdout"]),
                                               self._read_file(paths["stderr"]))
        finally:
            with self.lock:
                self.waiting.pop(ident, None)
            for path in paths.values():
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    @staticmethod
    def _read_file(path: str) -> str:
        with open(path, encoding="utf-8", errors="replace", newline=None) as f:
            return f.read()


_ZYGOTE: list[_Zygote] = []
_ZYGOTE_LOCK = threading.Lock()


def _zygote() -> _Zygote:
    with _ZYGOTE_LOCK:
        if not _ZYGOTE or _ZYGOTE[0].proc.poll() is not None:
            _ZYGOTE[:] = [_Zygote()]
        return _ZYGOTE[0]


@pytest.fixture
def cli(tmp_path):
    """`cli("log", "RUN")` runs the CLI with --runs-dir defaulting to tmp_path/runs."""

    def call(*args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("cwd", tmp_path)
        return run_cli(*args, **kw)

    return call
