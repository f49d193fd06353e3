"""The export format table (``projections/formats.py``) is what the CLI reads, and reading it
costs the CLI nothing heavy: pyarrow and openpyxl load only when an export runs."""

from __future__ import annotations

import subprocess
import sys

from conftest import run_cli
from llm_ledger.projections.formats import FORMATS, STREAMABLE, find


def _imported(*args: str) -> set[str]:
    """Top-level packages a real `ledger ARGS` process imported (``-X importtime`` lists each)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "llm_ledger.cli", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return {name.split(".")[0] for name in names}


def test_the_cli_starts_without_pyarrow_or_openpyxl():
    for args in (["--help"], ["export", "--help"], ["ls", "--help"]):
        imported = _imported(*args)
        assert "llm_ledger" in imported, args  # the listing is real
        assert not imported & {"pyarrow", "openpyxl"}, (args, imported & {"pyarrow", "openpyxl"})


def test_every_entry_is_named_in_the_help_and_has_its_own_suffix():
    help_text = run_cli("export", "--help", env={"COLUMNS": "400"}).stdout
    for form in FORMATS.values():
        assert form.name in help_text and form.title in help_text, form.name
        assert find(form.name) is form
    suffixes = [form.suffix for form in FORMATS.values()]
    assert len(set(suffixes)) == len(suffixes) and all(s.startswith(".") for s in suffixes)
    assert set(STREAMABLE) == {form.name for form in FORMATS.values() if form.stream}
