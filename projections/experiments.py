"""Experiments, read: which runs are an experiment's arms, and the table that compares them.

An experiment's arm is an ordinary run (``<experiment>.<arm>`` under the runs directory)
whose ``run_started`` config carries ``experiment = {"name", "arm", "provider", "limits"}``
(runners/experiment.py). There is no file of the experiment besides its runs: the runs are
the truth, so ``ls``, ``compare``, ``view`` and ``resume`` find the arms by reading each
candidate run's first event -- only the directories named ``<experiment>.*``.

``arm_table`` is the comparison printed at the end of ``ledger run eval.toml`` and by
``ledger compare --experiment``: per arm, the figures of its own ``summary.json`` (accuracy
and its 95% Wilson interval, cost, median latency, tokens, parse rate: the same numbers
``ledger status`` shows, never recomputed differently) and McNemar's exact p against the
best arm (highest accuracy; the first in order on a tie), paired over the items both hold
(projections/compare.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError, LedgerError
from llm_ledger.ledger.layout import RunPaths

from .runs import first_event, read_summary, run_status

__all__ = ["ArmRef", "experiment_arms", "experiment_of", "arm_table", "known_experiments"]


@dataclass(frozen=True)
class ArmRef:
    experiment: str
    arm: str
    provider: str
    paths: RunPaths
    started: float

    @property
    def run_id(self) -> str:
        return self.paths.run_id


def experiment_of(config: dict[str, Any]) -> dict[str, Any]:
    """The ``experiment`` part of a run's config ({} for a run of its own)."""
    value = config.get("experiment")
    return value if isinstance(value, dict) else {}


def experiment_arms(runs_dir: str, name: str) -> list[ArmRef]:
    """The runs of experiment ``name``, in the order they started (then by arm name)."""
    if not os.path.isdir(runs_dir):
        return []
    arms = []
    for entry in sorted(fs.listdir(runs_dir)):
        if not entry.startswith(name + "."):
            continue
        paths = RunPaths(os.path.join(runs_dir, entry))
        if not os.path.isfile(paths.log):
            continue
        try:
            started = first_event(paths)
        except LedgerError:
            continue
        exp = experiment_of(started.config) if started else {}
        if exp.get("name") == name:
            arms.append(ArmRef(name, str(exp.get("arm", "")), str(exp.get("provider", "")), paths, started.ts))
    return sorted(arms, key=lambda a: (a.started, a.arm))


def known_experiments(runs_dir: str) -> bool:
    return os.path.isdir(runs_dir)


def require_arms(runs_dir: str, name: str) -> list[ArmRef]:
    arms = experiment_arms(runs_dir, name)
    if not arms:
        raise InputError(f"no experiment {name!r} under {runs_dir} (no run {name}.<arm> records it)")
    return arms


def arm_table(arms: list[ArmRef]) -> dict[str, Any]:
    """The comparison of the arms (JSON-ready: full precision). ``rows`` in the arms' order;
    ``best`` the best arm's name (None when no arm has an accuracy); ``coverage`` the
    sentence of compare.py when arms hold different items."""
    from .compare import compare_runs

    rows = []
    for arm in arms:
        status = run_status(arm.paths)
        summary = read_summary(arm.paths) if status.summary_current else {}
        tokens = summary.get("tokens") or {}
        counts = summary.get("counts") or {}
        rows.append({
            "arm": arm.arm, "run_id": arm.run_id, "provider": arm.provider, "model": summary.get("model"),
            "status": status.status, "done": status.done, "failed": status.failed, "planned": status.planned,
            "scored": summary.get("scored"), "accuracy": summary.get("accuracy"), "ci95": summary.get("accuracy_ci95"),
            "cost_usd": summary.get("cost_usd"), "latency_p50_s": (summary.get("latency_s") or {}).get("p50"),
            "prompt_tokens": tokens.get("prompt"), "completion_tokens": tokens.get("completion"),
            "parse_rate": summary.get("parse_success_rate"), "pending": counts.get("pending"),
            "p_vs_best": None, "summary_current": status.summary_current,
        })
    scored = [r for r in rows if r["accuracy"] is not None]
    best = max(scored, key=lambda r: r["accuracy"]) if scored else None  # max keeps the first of equals
    coverage = None
    if best is not None and len(arms) > 1:
        try:
            result = compare_runs([a.paths for a in arms])
        except InputError:  # nothing shared (an arm with no answer yet): no paired test
            result = None
        if result is not None:
            coverage = result.coverage.to_json()
            for pair in result.pairs:
                if best["run_id"] in (pair["a"], pair["b"]):
                    other = pair["b"] if pair["a"] == best["run_id"] else pair["a"]
                    next(r for r in rows if r["run_id"] == other)["p_vs_best"] = pair["p_value"]
    return {"experiment": arms[0].experiment if arms else None, "best": best["arm"] if best else None,
            "rows": rows, "coverage": coverage}
