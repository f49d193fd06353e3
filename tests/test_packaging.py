"""Packaging: one import name (``llm_ledger``), every import declared, one version string.

The five folders at the repository root install as subpackages of ``llm_ledger``; code that
imports a bare ``cli`` or ``runners`` works only from a checkout (the current directory on
sys.path) and breaks, or picks up somebody else's module, once installed. These checks read
the source (AST) and the installed metadata, so they fail on the line that is wrong.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

import llm_ledger.ledger

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("ledger", "projections", "runners", "cli", "viewer")
SOURCES = [*SUBPACKAGES, "tests", "bench"]


def _python_files(folders: list[str]) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of each absolute import in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_no_code_imports_a_bare_subpackage() -> None:
    bare = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in _python_files(SOURCES)
            for line, mod in _imports(p) if mod in SUBPACKAGES]
    assert bare == [], "import through llm_ledger.*:\n" + "\n".join(bare)


def test_no_subprocess_or_string_names_a_bare_subpackage() -> None:
    """``python -m cli`` and ``import_module(name)`` with a bare name escape the AST check."""
    names = "|".join(SUBPACKAGES)
    patterns = [re.compile(rf"""["']-m["'],\s*["']({names})\b"""),
                re.compile(rf"""["']({names})\.(?!ckpt\b)\w+(\.\w+)*["']""")]
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in _python_files(SOURCES)
            for n, line in enumerate(p.read_text().splitlines(), 1) if any(r.search(line) for r in patterns)]
    assert hits == [], "\n".join(hits)


def test_the_distribution_installs_one_top_level_name() -> None:
    dist = metadata.distribution("llm-ledger")
    assert (dist.read_text("top_level.txt") or "").split() == ["llm_ledger"]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    assert sorted(packages) == sorted(f"llm_ledger.{name}" for name in SUBPACKAGES)
    assert config["project"]["scripts"]["ledger"].startswith("llm_ledger.cli.")


def test_every_third_party_import_is_declared() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")
                for req in config["project"]["dependencies"] + _extras(config)}
    providers = metadata.packages_distributions()
    missing = []
    for path in _python_files(list(SUBPACKAGES)):
        for line, mod in _imports(path):
            if mod in sys.stdlib_module_names or mod in SUBPACKAGES or mod in ("llm_ledger", "__future__"):
                continue
            dists = {d.lower().replace("_", "-") for d in providers.get(mod, [mod])}
            if not dists & declared:
                missing.append(f"{path.relative_to(ROOT)}:{line} imports {mod} ({', '.join(sorted(dists))})")
    assert missing == [], "declare in pyproject [project] dependencies:\n" + "\n".join(missing)


def _extras(config: dict) -> list[str]:
    """Optional extras the code may import where they are asked for (``ray``), not ``test``."""
    return [req for name, reqs in config["project"].get("optional-dependencies", {}).items() if name != "test" for req in reqs]


def test_one_version_string() -> None:
    literals = [f"{p.relative_to(ROOT)}" for p in _python_files(list(SUBPACKAGES))
                if re.search(r"^__version__\s*=", p.read_text(), re.M)]
    assert literals == ["ledger/__init__.py"]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    assert metadata.version("llm-ledger") == llm_ledger.ledger.__version__
