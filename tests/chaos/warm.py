"""Imported once by the fork server (procs.py): one tiny in-process run, so that the lazy
imports of a first request (openai resources, httpcore, anyio backends, uvicorn protocols:
about 0.8 s) are paid there and not again in every forked child. Everything it starts is
stopped again before the server forks anything."""

from __future__ import annotations

import json
import os
import shutil
import tempfile


def _warm() -> None:
    from llm_ledger.runners.config import RunConfig
    from llm_ledger.runners.prepare import prepare
    from llm_ledger.runners.session import run_prepared

    directory = tempfile.mkdtemp(prefix="ledger-warm-")
    try:
        dataset = os.path.join(directory, "warm.jsonl")
        with open(dataset, "w") as f:
            f.write("".join(json.dumps({"id": f"w{i}", "prompt": f"answer: {i}"}) + "\n" for i in range(2)))
        run_prepared(prepare(dataset, RunConfig(concurrency=2), os.path.join(directory, "runs"), "warm"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


_warm()
