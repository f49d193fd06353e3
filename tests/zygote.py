"""A warm start for the CLI subprocesses of the tests (a "zygote", as Android's and
Chromium's): one process per test worker imports the CLI's libraries once, then forks a
child per `ledger ARGS` call. Each child is a real process: its own pid, cwd, environment,
stdin/stdout/stderr files and exit code, its own event loop, files and locks; only the
interpreter start-up and the imports (0.5-1.5 s of CPU a call, most of the suite's time)
are shared.

What keeps it honest:
- Only modules that start no thread at import are loaded before a fork (checked: the
  server refuses to serve when the process has more than one thread); pyarrow starts
  threads, so export commands import it in the child, as a fresh process would.
- Nothing of ours reads the environment at import time (tests/test_startup.py's tests and
  any test that checks what a process imports run a fresh interpreter, not this).
- ``LEDGER_TEST_FRESH=1`` turns it off: every call is a fresh ``python -m llm_ledger.cli``.

Protocol (one JSON object a line): the client writes ``{"id", "args", "cwd", "env",
"stdin", "stdout", "stderr"}`` (paths of files), the server answers ``{"id", "pid"}`` when
the child exists and ``{"id", "code"}`` when it ended (a signal as a negative code, as
``subprocess`` gives it).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import random
import select
import signal
import sys

WARM = (
    "typer", "click", "rich.console", "rich.table", "rich.progress", "rich.live", "msgspec", "lmdb", "aiohttp",
    "tenacity", "starlette.applications", "starlette.testclient", "uvicorn", "httpx", "openai",
    "llm_ledger.cli.app", "llm_ledger.cli.common", "llm_ledger.cli.run_cmd", "llm_ledger.cli.status_cmd",
    "llm_ledger.cli.show_cmd", "llm_ledger.cli.log_cmd", "llm_ledger.cli.compare_cmd", "llm_ledger.cli.replay_cmd",
    "llm_ledger.cli.verify_cmd", "llm_ledger.cli.simulate_cmd", "llm_ledger.cli.progress",
    "llm_ledger.runners.session", "llm_ledger.runners.prepare", "llm_ledger.runners.registry",
    "llm_ledger.runners.simulator", "llm_ledger.runners.reparse", "llm_ledger.projections.projector",
    "llm_ledger.projections.runs", "llm_ledger.projections.replay", "llm_ledger.projections.show",
    "llm_ledger.projections.compare",
)


def _threads() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])


def _warm() -> None:
    for name in WARM:
        try:
            importlib.import_module(name)
        except ImportError:
            continue  # an optional library: the child imports what it needs
        if _threads() != 1:
            raise SystemExit(f"zygote: importing {name} started a thread; forks would not be safe")


def _child(request: dict) -> None:
    """In the forked child: become the CLI process the request describes. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, request["stdin"], os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                                (2, request["stderr"], os.O_WRONLY)):
            opened = os.open(path, flags)
            os.dup2(opened, fd)
            os.close(opened)
        sys.argv = ["ledger", *request["args"]]
        random.seed()  # a fresh process draws its own numbers
        # sys.path as `python -m` makes it: the working directory, then $PYTHONPATH, then the rest
        extra = [os.path.abspath(p) for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.getcwd(), *extra, *[p for p in sys.path[1:] if p not in extra]]
        importlib.invalidate_caches()
        from llm_ledger.cli.app import main

        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if not isinstance(stop.code, int) and stop.code is not None:
                print(stop.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def serve() -> None:
    _warm()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write)
    requests = sys.stdin.buffer
    answers = sys.stdout
    children: dict[int, str] = {}
    buffered = b""
    open_input = True
    while open_input or children:
        ready, _, _ = select.select([requests.fileno(), wake_read] if open_input else [wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
        if requests.fileno() in ready:
            chunk = os.read(requests.fileno(), 65536)
            if not chunk:
                open_input = False
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                request = json.loads(line)
                answers.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request)
                children[pid] = request["id"]
                answers.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
                answers.flush()
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            answers.write(json.dumps({"id": children.pop(pid), "code": code}) + "\n")
            answers.flush()


if __name__ == "__main__":
    serve()
