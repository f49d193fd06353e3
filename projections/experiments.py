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
best arm (highest accuracy; the first in order on a tie), paired over the items those two hold
(each pair its own: adding an arm never changes another arm's p)
(projections/compare.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError, LedgerError
from llm_ledger.ledger.layout import RunPaths

from .runs import experiment_of, first_event, read_summary, run_status

__all__ = ["ArmRef", "experiment_arms", "experiment_of", "arm_table", "require_arms", "experiment_names"]


@dataclass(frozen=True)
class ArmRef:
    experiment: str
    arm: str
    provider: str
    paths: RunPaths
    started: float
    error: str | None = None  # a damaged arm: its first event cannot be read (one line)

    @property
    def run_id(self) -> str:
        return self.paths.run_id


def experiment_arms(runs_dir: str, name: str, *, damaged: bool = False) -> list[ArmRef]:
    """The runs of experiment ``name``, in the order they started (then by arm name).

    ``damaged``: also the runs ``<name>.<arm>`` whose first event cannot be read (a damaged
    log cannot say whose arm it is; its name says it), each with its ``error``, after the
    others -- so that ``compare`` and ``resume`` name it instead of leaving it out without a
    word. Only beside a readable arm: a damaged run alone does not make an experiment."""
    if not os.path.isdir(runs_dir):
        return []
    arms, broken = [], []
    for entry in sorted(fs.listdir(runs_dir)):
        if not entry.startswith(name + "."):
            continue
        paths = RunPaths(os.path.join(runs_dir, entry))
        if not os.path.isfile(paths.log):
            continue
        try:
            started = first_event(paths)
        except LedgerError as exc:
            broken.append(ArmRef(name, entry[len(name) + 1:], "", paths, 0.0, " ".join(str(exc).split())))
            continue
        exp = experiment_of(started.config) if started else {}
        if exp.get("name") == name:
            arms.append(ArmRef(name, str(exp.get("arm", "")), str(exp.get("provider", "")), paths, started.ts))
    arms.sort(key=lambda a: (a.started, a.arm))
    return arms + broken if damaged and arms else arms


def require_arms(runs_dir: str, name: str) -> list[ArmRef]:
    """The arms of ``name``, damaged ones included (see ``experiment_arms``); an experiment
    that has none is an input error, the one line every experiment command says."""
    arms = experiment_arms(runs_dir, name, damaged=True)
    if not arms:
        known = experiment_names(runs_dir)
        listed = f"known: {', '.join(known[:10])}{', ...' if len(known) > 10 else ''}" if known else "there is none"
        raise InputError(f"no experiment {name!r} under {runs_dir} (no run {name}.<arm> records it; {listed})")
    return arms


def experiment_names(runs_dir: str) -> list[str]:
    """Every experiment of the runs directory (sorted), from the runs named ``<name>.<arm>``
    whose first event records it; for the error that names what exists (read only then)."""
    if not os.path.isdir(runs_dir):
        return []
    names = set()
    for entry in fs.listdir(runs_dir):
        paths = RunPaths(os.path.join(runs_dir, entry))
        if "." not in entry or not os.path.isfile(paths.log):
            continue
        try:
            started = first_event(paths)
        except (LedgerError, OSError):
            continue
        name = experiment_of(started.config).get("name") if started else None
        if isinstance(name, str) and entry.startswith(name + "."):
            names.add(name)
    return sorted(names)


def arm_table(arms: list[ArmRef]) -> dict[str, Any]:
    """The comparison of the arms (JSON-ready: full precision). ``rows`` in the arms' order;
    ``best`` the best arm's name (None when no arm has an accuracy); ``coverage`` the
    sentence of compare.py when arms hold different items."""
    from .compare import compare_runs

    rows = []
    for arm in arms:
        if arm.error is not None:
            rows.append({"arm": arm.arm, "run_id": arm.run_id, "provider": None, "model": None, "status": "damaged",
                         **dict.fromkeys(_FIGURES), "p_vs_best": None, "summary_current": False, "error": arm.error})
            continue
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
            "cached": (summary.get("cache") or {}).get("cached"),
            "p_vs_best": None, "summary_current": status.summary_current, "error": None,
        })
    scored = [r for r in rows if r["accuracy"] is not None]
    best = max(scored, key=lambda r: r["accuracy"]) if scored else None  # max keeps the first of equals
    coverage = None
    others = [r for r in scored if r is not best] if best is not None else []
    for row in others:  # each arm against the best, over the items these two share
        try:
            pair = compare_runs([next(a.paths for a in arms if a.run_id == best["run_id"]),
                                 next(a.paths for a in arms if a.run_id == row["run_id"])])
        except InputError:  # nothing shared (an arm with no answer yet): no paired test
            continue
        row["p_vs_best"] = pair.pairs[0]["p_value"] if pair.pairs else None
        if not pair.coverage.complete and coverage is None:
            coverage = pair.coverage.to_json()
    return {"experiment": arms[0].experiment if arms else None, "best": best["arm"] if best else None,
            "rows": rows, "coverage": coverage}


_FIGURES = ("done", "failed", "planned", "scored", "accuracy", "ci95", "cost_usd", "latency_p50_s", "prompt_tokens",
            "completion_tokens", "parse_rate", "pending", "cached")
