"""The CLI in a child process, and killing it at a chosen moment.

Two ways to start `ledger ARGS`:

* ``exec``: ``python -m cli ARGS``, exactly what a user runs (about 1 s of imports first).
* ``fork``: a child forked from a warm multiprocessing *forkserver* that has imported the CLI
  once; the child takes exactly the caller's environment, sys.path as ``python -m`` builds it
  (working directory, ``PYTHONPATH``), fresh random numbers, stdin/stdout/stderr files,
  installs an optional fault backend for fs (oshim.py), and calls ``cli.app.main()``. It is a
  separate process with its own pid, lock, embedded simulator and event loop -- SIGKILL means
  the same thing -- but starts in a few milliseconds instead of a second of imports: what
  lets the suite afford dozens of kills, and every `run_cli` of conftest.py use it too.
  Tests of what a process imports (test_startup.py) run fresh interpreters.

Kill moments are never fixed sleeps (those land before start or after the end): a trigger
is polled (the simulator's request log reached N new lines, the run lock names the child's
pid, ...) and only then a small seeded delay is added.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CliProc", "Hung", "start_cli", "run_cli", "kill_when", "lines_after", "lock_held_by", "PRELOAD"]

# What the fork server imports before it forks: the libraries and the layers below the CLI.
# Not llm_ledger.cli: its modules build objects from the environment when imported (the rich
# consoles of cli/common.py read COLUMNS), so each child imports them itself, as a fresh
# process would, with its own environment (tens of milliseconds).
PRELOAD = [
    "typer", "click", "rich.console", "rich.table", "rich.progress", "rich.live",
    "llm_ledger.runners.session", "llm_ledger.runners.simulator", "llm_ledger.runners.prepare",
    "llm_ledger.projections.projector", "llm_ledger.projections.export", "llm_ledger.projections.runs", "chaos.oshim",
    "chaos.warm",
]
_ctx_lock = threading.Lock()
_ctx: Any = None


def _context() -> Any:
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            from multiprocessing import forkserver

            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            # The server does not apply the parent's sys.path before preloading (CPython
            # 3.11), so the tests directory goes in through PYTHONPATH, for this start only.
            tests = str(Path(__file__).resolve().parent.parent)
            old = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = tests + (os.pathsep + old if old else "")
            try:
                forkserver.ensure_running()
            finally:
                if old is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = old
            _ctx = ctx
        return _ctx


def _child(args: list[str], cwd: str, out: str, err: str, env: dict[str, str], shim: dict | None,
           stdin: str | None = None) -> None:
    """Body of a forked child: become `ledger ARGS` as a fresh `python -m llm_ledger.cli`
    would be -- its environment exactly ``env``, sys.path from its working directory and
    ``PYTHONPATH``, its own random numbers -- with stdin/stdout/stderr in files."""
    for path, target, flags in ((stdin or os.devnull, 0, os.O_RDONLY),
                                (out, 1, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                                (err, 2, os.O_WRONLY | os.O_CREAT | os.O_APPEND)):
        fd = os.open(path, flags, 0o644)
        os.dup2(fd, target)
        os.close(fd)
    if stdin is not None:  # multiprocessing closed sys.stdin; a command reading it gets the file
        sys.stdin = open(0, encoding="utf-8", closefd=False)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    extra = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.getcwd(), *extra, *[p for p in sys.path if p not in extra and p != os.getcwd()]]
    importlib.invalidate_caches()
    random.seed()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1
    try:
        if shim:
            from chaos.oshim import install_in_child

            install_in_child(shim)
        from llm_ledger.cli.app import main

        sys.argv = ["ledger", *args]
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            with open(f"{out}.code", "w") as f:  # see CliProc.wait: multiprocessing may lose it
                f.write(str(code))
        finally:
            os._exit(code)


class Hung(AssertionError):
    """A child that did not end in time (it was killed)."""


class CliProc:
    """One `ledger` child process; ``out`` and ``err`` are files (read them after it ends)."""

    def __init__(self, args: list[str], cwd: Path, out: Path, err: Path, *, mode: str = "fork",
                 env: dict[str, str] | None = None, shim: dict | None = None, stdin: Path | None = None) -> None:
        """``env``: over this process's environment (``full_env``: the whole of it)."""
        self.args, self.out, self.err = args, out, err
        self.mode = mode
        full_env = {**os.environ, **(env or {})}
        if mode == "exec":
            assert shim is None, "fault shims need the fork mode"
            with open(out, "ab") as o, open(err, "ab") as e, open(stdin or os.devnull, "rb") as i:
                self._popen = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", *args], cwd=cwd, stdout=o, stderr=e,
                                               stdin=i, env=full_env)
            self.pid = self._popen.pid
        else:
            self._proc = _context().Process(target=_child, args=(args, str(cwd), str(out), str(err), full_env, shim,
                                                                 None if stdin is None else str(stdin)))
            self._proc.start()
            self.pid = self._proc.pid

    def poll(self) -> int | None:
        if self.mode == "exec":
            return self._popen.poll()
        return None if self._proc.exitcode is None else self._exitcode()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 120) -> int:
        if self.mode == "exec":
            try:
                return self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self._popen.wait()
                raise Hung(f"`ledger {' '.join(self.args)}` hung for {timeout} s (killed)")
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self.kill()
            self._proc.join()
            raise Hung(f"`ledger {' '.join(self.args)}` hung for {timeout} s (killed)")
        return self._exitcode()

    def _exitcode(self) -> int:
        """multiprocessing reports 255 when it cannot read a forkserver child's status (EOF
        on its sentinel, seen under load); the child's own record of its code says better."""
        code = self._proc.exitcode
        recorded = Path(f"{self.out}.code")
        if code == 255 and recorded.exists():
            return int(recorded.read_text() or 255)
        return code

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""


_counter = iter(range(1 << 62))
_counter_lock = threading.Lock()


def start_cli(*args: str, cwd: Path, mode: str = "fork", env: dict[str, str] | None = None,
              shim: dict | None = None, name: str = "", files: Path | None = None, stdin: Path | None = None) -> CliProc:
    """``files``: where its stdout/stderr files go (default: ``cwd``)."""
    with _counter_lock:
        n = next(_counter)
    stem = Path(files or cwd) / f"cli-{name or args[0]}-{n}"
    return CliProc(list(args), Path(cwd), stem.with_suffix(".out"), stem.with_suffix(".err"), mode=mode, env=env, shim=shim,
                   stdin=stdin)


class Result:
    def __init__(self, proc: CliProc, code: int) -> None:
        self.returncode = code
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.pid = proc.pid

    def __repr__(self) -> str:
        return f"<exit {self.returncode}\nstdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}>"


def run_cli(*args: str, cwd: Path, mode: str = "fork", env: dict[str, str] | None = None,
            shim: dict | None = None, timeout: float = 120) -> Result:
    proc = start_cli(*args, cwd=cwd, mode=mode, env=env, shim=shim)
    return Result(proc, proc.wait(timeout))


# -- kill triggers ---------------------------------------------------------------------------


def lines_after(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def lock_held_by(lock: Path, pid: int) -> Callable[[], bool]:
    """True once the run's lock file names ``pid`` (the child took the lock: recovery,
    index and projector catch-up come next)."""
    want = f"{pid}\n".encode()

    def check() -> bool:
        try:
            return lock.read_bytes() == want
        except FileNotFoundError:
            return False

    return check


def checkpoint_replaced(run_dir: Path) -> Callable[[], bool]:
    """True once the projector is writing its checkpoint: a temp checkpoint exists, or
    ``projections.ckpt`` is a new file (another inode) since this check was made."""
    path = run_dir / "projections.ckpt"

    def inode() -> int:
        try:
            return path.stat().st_ino
        except FileNotFoundError:
            return 0

    first = inode()

    def check() -> bool:
        try:
            if any(p.name.startswith("projections.ckpt.tmp") for p in run_dir.iterdir()):
                return True
        except FileNotFoundError:  # the run directory is not made yet
            return False
        return inode() != first

    return check


def kill_when(proc: CliProc, trigger: Callable[[], bool], delay: float, hang_guard: float = 90) -> tuple[int, float]:
    """SIGKILL ``proc`` ``delay`` seconds after ``trigger()`` first holds. Returns (exit code,
    kill time); the code is -9 when the kill landed, else what the process exited with."""
    deadline = time.monotonic() + hang_guard
    while not trigger():
        if proc.poll() is not None:
            return proc.wait(), time.time()
        assert time.monotonic() < deadline, f"trigger never fired for `ledger {' '.join(proc.args)}`"
        time.sleep(0.002)
    if delay:
        time.sleep(delay)
    kill_time = time.time()
    proc.kill()
    return proc.wait(), kill_time
