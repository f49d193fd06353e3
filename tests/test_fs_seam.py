"""Every file-system call of the distribution goes through ``llm_ledger.ledger.fs``.

The chaos tests steer I/O by replacing fs's backend (a disk that fails the Nth fdatasync,
one that loses unsynced bytes at power-off). A module that calls ``os.write`` or
``open()`` itself is a path those tests can never reach, and nothing would say so. This
check reads the source (AST) and fails on the line that goes around the door.

Flagged: ``os.<call>`` for the file-system calls below (also under an alias, or imported
by name), ``open()`` / ``io.open`` / ``builtins.open``, ``shutil``'s file functions,
``tempfile``'s files, and ``Path`` methods that read, write, create or delete
(``write_text``, ``read_bytes``, ``mkdir``, ``unlink``, ...). ``os.path.*``, ``os.getpid``,
``os.environ``, ``os.strerror``, ``os.kill`` are not I/O on files and stay as they are.

Not seen by this scan, and not steerable through fs by their nature: C libraries that open
a path themselves (LMDB's ``index.lmdb``; pyarrow and openpyxl when an exporter hands them a
path rather than a file object opened through ``fs.open_file``), ``fcntl.flock`` (a lock on
a descriptor fs opened, not I/O), and reads and writes through a file object once
``fs.open_file`` has opened it.
"""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_ledger.cli.common import os_error_line
from llm_ledger.ledger import fs
from llm_ledger.ledger.events import Started
from llm_ledger.ledger.writer import LogWriter

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("ledger", "projections", "runners", "cli", "viewer")
THE_DOOR = "ledger/fs.py"

OS_CALLS = frozenset({
    "open", "close", "read", "readv", "pread", "preadv", "write", "writev", "pwrite", "pwritev",
    "fsync", "fdatasync", "ftruncate", "truncate", "lseek", "posix_fallocate", "fdopen",
    "sendfile", "copy_file_range", "replace", "rename", "renames", "link", "symlink", "unlink",
    "remove", "rmdir", "removedirs", "mkdir", "makedirs", "listdir", "scandir", "walk", "stat",
    "lstat", "statvfs", "access", "chmod", "utime", "mkfifo",
})
SHUTIL_CALLS = frozenset({"copy", "copy2", "copyfile", "copytree", "rmtree", "move", "disk_usage", "chown"})
TEMPFILE_CALLS = frozenset({"mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile",
                            "TemporaryDirectory"})
OPENERS = {"io": "open", "builtins": "open", "gzip": "open", "bz2": "open", "lzma": "open"}
PATH_METHODS = frozenset({"write_text", "write_bytes", "read_text", "read_bytes", "mkdir", "unlink", "rmdir",
                          "touch", "hardlink_to", "symlink_to"})

# Calls that cannot go through fs, each with the reason. Key: (file, the call as written).
# Empty today: every call the scan sees has an fs equivalent.
ALLOWED: dict[tuple[str, str], str] = {
}

# Files whose owners (issue 13's helpers) convert them on their own branches. The lead
# empties this after merging those branches: a file listed here that no longer goes around
# fs fails the second test below, so the list cannot outlive its reason.
PENDING_OWNERS: dict[str, frozenset[str]] = {
}


def _python_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def _aliases(tree: ast.Module) -> tuple[dict[str, str], dict[str, str]]:
    """(local name -> module) for ``import os as _os``, and (local name -> "module.name")
    for ``from os import write``."""
    modules, names = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return modules, names


def _defines(tree: ast.Module, name: str) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


def _flag(module: str, attr: str) -> bool:
    return ((module == "os" and attr in OS_CALLS) or (module == "shutil" and attr in SHUTIL_CALLS)
            or (module == "tempfile" and attr in TEMPFILE_CALLS) or OPENERS.get(module) == attr)


def offenders(path: Path) -> list[tuple[int, str]]:
    """(line, call as written) of each file-system call in ``path`` that bypasses fs."""
    tree = ast.parse(path.read_text(), str(path))
    modules, names = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Name):
            target = names.get(fn.id, "")
            if fn.id == "open" and not target and not _defines(tree, "open"):
                found.append((node.lineno, "open"))
            elif target and _flag(*target.rsplit(".", 1)):
                found.append((node.lineno, fn.id))
        elif isinstance(fn, ast.Attribute):
            base = fn.value
            if isinstance(base, ast.Name) and base.id in modules and _flag(modules[base.id], fn.attr):
                found.append((node.lineno, f"{base.id}.{fn.attr}"))
            elif fn.attr in PATH_METHODS and not (isinstance(base, ast.Name) and base.id == "fs"):
                found.append((node.lineno, f".{fn.attr}"))
    return sorted(found)


def _all_offenders() -> dict[str, list[tuple[int, str]]]:
    out = {}
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel != THE_DOOR:
            hits = [(line, call) for line, call in offenders(path) if (rel, call) not in ALLOWED]
            if hits:
                out[rel] = hits
    return out


def test_file_system_calls_go_through_fs() -> None:
    pending = set().union(*PENDING_OWNERS.values()) if PENDING_OWNERS else set()
    bad = [f"{rel}:{line}: {call}" for rel, hits in _all_offenders().items() if rel not in pending
           for line, call in hits]
    assert bad == [], "call these through llm_ledger.ledger.fs (or add to ALLOWED, with the reason):\n" + "\n".join(bad)


def test_pending_files_still_need_converting() -> None:
    """A file in PENDING_OWNERS that is clean now (or moved) must leave the list, so that it
    is checked like every other."""
    offending = set(_all_offenders())
    clean = sorted(rel for files in PENDING_OWNERS.values() for rel in files if rel not in offending)
    assert clean == [], "these go through fs now, or moved; remove them from PENDING_OWNERS:\n" + "\n".join(clean)


def test_allowed_calls_are_still_there() -> None:
    """An ALLOWED entry whose call is gone must leave the list too."""
    present = {(path.relative_to(ROOT).as_posix(), call) for path in _python_files() for _, call in offenders(path)}
    stale = sorted(f"{rel}: {call}" for rel, call in ALLOWED if (rel, call) not in present)
    assert stale == [], "no longer called; remove from ALLOWED:\n" + "\n".join(stale)


def test_the_scan_sees_each_kind_of_bypass(tmp_path: Path) -> None:
    """The scan itself can fail: each way around the door is found in a sample module."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os as _os\nimport shutil\nfrom os import fsync\nfrom pathlib import Path\n"
        "def f(p, fd):\n"
        "    _os.write(fd, b'x')\n    fsync(fd)\n    open(p).read()\n    shutil.rmtree(p)\n"
        "    Path(p).write_text('x')\n    Path(p).mkdir()\n    _os.path.join(p, 'x')\n    _os.getpid()\n"
    )
    assert [call for _, call in offenders(sample)] == ["_os.write", "fsync", "open", "shutil.rmtree", ".write_text", ".mkdir"]


# -- errors name their file ------------------------------------------------------------------


def test_an_error_on_a_descriptor_names_the_file_it_was_opened_as() -> None:
    """``write(fd)`` on a full device carries no file name from the OS; fs gives it the path
    the descriptor was opened with, so the CLI's one line says which file without guessing."""
    fd = fs.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as caught:
            fs.write(fd, b"x" * 4096)
        with pytest.raises(OSError) as synced:
            fs.ftruncate(fd, -1)
    finally:
        fs.close(fd)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, "/dev/full")
    assert os_error_line(caught.value) == "/dev/full: No space left on device"
    assert synced.value.filename == "/dev/full"
    assert fs.path_of(fd) is None  # forgotten at close: a reused number gets no stale name


def test_a_full_standard_output_is_named_as_such(tmp_path: Path) -> None:
    """`ledger log RUN > /dev/full`: the one line names standard output (StdStream), not a
    path found by walking the traceback."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    with LogWriter.open(str(run / "events.log")) as writer:
        for i in range(40):
            writer.append(Started(item_id=f"q{i}", request={"p": "x" * 4000}))
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "llm_ledger.cli", "log", "r", "--runs-dir", str(tmp_path / "runs")],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and lines == ["error: standard output: No space left on device"], r.stderr[-2000:]


class _Recording(fs.Backend):
    """The real disk, noting the base name of every file opened (descriptor or file object)."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def open(self, path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[override]
        self.opened.append(os.path.basename(os.fspath(path)))
        return super().open(path, flags, mode, dir_fd=dir_fd)

    def open_file(self, path, mode="r", *args, **kwargs):  # type: ignore[override]
        self.opened.append(os.path.basename(os.fspath(path)))
        return super().open_file(path, mode, *args, **kwargs)


def test_a_backend_sees_the_io_of_modules_the_old_shim_list_missed(tmp_path: Path) -> None:
    """The chaos shims used to replace ``os`` in writer, fsio and recovery only; through fs
    a backend also sees the lock, the reader, the index and repair open their files."""
    from llm_ledger.ledger.index import RunIndex
    from llm_ledger.ledger.maintenance import repair_log
    from llm_ledger.ledger.reader import iter_events

    log = str(tmp_path / "events.log")
    recording = _Recording()
    old = fs.use(recording)
    try:
        with LogWriter.open(log) as writer:
            writer.append(Started(item_id="a"))
        RunIndex.open_for_log(str(tmp_path / "index.lmdb"), log).close()
        assert [e.item_id for e in iter_events(log)] == ["a"]
        repair_log(log)
    finally:
        fs.use(old)
    assert {"events.log", "events.log.lock", "lock.mdb"} <= set(recording.opened), recording.opened
    # lock.py (the log O_RDWR and its pid note), the reader and repair (file objects), the index (lock.mdb)
    assert recording.opened.count("events.log") >= 5, recording.opened
