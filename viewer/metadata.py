"""The metadata of a run's items (the dataset's other fields: ``topic``, ``difficulty`` ...),
for the viewer's columns, filters and per-group charts.

Two sources, the first that has it:

* a ``metadata`` object on the lines of ``responses.jsonl`` (``ViewAnswer.metadata``), once
  the rows carry it;
* for a run whose log predates that (its rows have no dataset ``line``), the run's dataset file as ``run_started`` names it, read with the runner's own
  reader (``runners.dataset.iter_items``) and trusted only while its sha256 is the one the
  run recorded: a dataset edited since is not passed off as the run's (``note`` says so).

Values are shown as text (``compare.as_text``); at most ``MAX_FIELDS`` fields, in the order
first seen. A dataset is read once per (path, size, mtime).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.projections.compare import AnswerText, as_text
from llm_ledger.projections.runs import first_event

__all__ = ["ViewAnswer", "DatasetMetadata", "fields_of", "MAX_FIELDS"]

MAX_FIELDS = 8
Key = tuple[str, int]


class ViewAnswer(AnswerText):
    """A line of ``responses.jsonl`` as the viewer reads it: with ``metadata`` when the row has it."""

    metadata: dict[str, Any] | None = None
    line: int = 0  # the item's dataset line: set on rows of logs that carry their metadata


def _texts(metadata: dict[str, Any]) -> dict[str, str]:
    return {k: as_text(v) or "" for k, v in metadata.items() if v is not None}


class DatasetMetadata:
    """Per run: item id -> its metadata as text, from the dataset file (see the module doc)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple, dict[str, dict[str, str]], str]] = {}
        self._lock = threading.Lock()

    def of_run(self, paths: RunPaths) -> tuple[dict[str, dict[str, str]], str]:
        """(item id -> {field: text}, note); the note says why there is none, "" otherwise."""
        try:
            started = first_event(paths)
        except LedgerError as exc:
            return {}, f"no metadata: {exc}"
        if started is None or not started.dataset:
            return {}, ""
        path = started.dataset
        try:
            st = fs.stat(path)
        except OSError:
            return {}, f"no metadata: the dataset {path} is not there any more"
        version = (path, st.st_size, st.st_mtime_ns, started.dataset_sha256)
        with self._lock:
            cached = self._cache.get(paths.run_id)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        found, note = self._read(path, started.dataset_sha256)
        with self._lock:
            self._cache[paths.run_id] = (version, found, note)
        return found, note

    @staticmethod
    def _read(path: str, sha256: str) -> tuple[dict[str, dict[str, str]], str]:
        from llm_ledger.runners.dataset import file_sha256, iter_items  # the one reader of datasets

        try:
            if sha256 and file_sha256(path) != sha256:
                return {}, f"no metadata: {os.path.basename(path)} changed since the run started"
            return {item.id: _texts(item.metadata) for item in iter_items(path) if item.metadata}, ""
        except (LedgerError, OSError) as exc:
            return {}, f"no metadata: {exc}"


def fields_of(rows: list[dict[str, str] | None]) -> list[str]:
    """The fields in the order first seen, at most ``MAX_FIELDS``."""
    seen: dict[str, None] = {}
    for meta in rows:
        if meta:
            for k in meta:
                if k not in seen:
                    seen[k] = None
                    if len(seen) >= MAX_FIELDS:
                        return list(seen)
    return list(seen)
