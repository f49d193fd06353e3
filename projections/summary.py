"""``summary.json``: the figures of a run, computed from the fold's state alone.

Every number derives from event data (timestamps included), so a live run and a rebuild
write the same bytes. Wall time is the sessions' sending time (``fold.wall_time``): a pause
between sessions, a re-parse or a resume with nothing left adds none; throughput is the
finished items over it. Accuracy is over scored items (those with an ``expected``), with a
95% Wilson interval; per-label precision / recall / F1 appear when answers are labels (at
most ``fold.MAX_LABELS`` distinct expected values; the fold keeps the counts). Cost uses
``price_in`` / ``price_out`` (USD per million tokens) from the run's config when known.

Both accuracies: ``accuracy`` is the machine's (``correct``), ``accuracy_reviewed`` counts a
person's verdict where one is in effect (``correct_reviewed``, reviews.py), with its own
interval; ``reviews`` says how many verdicts were applied, how many overturned the machine,
and how many of the latest reviews are stale (given for a reply the item no longer has).

Replies copied from the cross-run cache (``cache``) cost nothing: their tokens and the cost
they saved are counted apart, and ``attempts`` counts only requests sent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgspec

from .fold import Key, Labels, RunState, wall_time

__all__ = ["summarize", "encode_summary", "wilson", "percentile"]

_json = msgspec.json.Encoder(order="deterministic")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: the value is one that was observed)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def wilson(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def summarize(state: RunState) -> dict[str, Any]:
    t = state.totals
    latencies = sorted(t.latencies)
    wall = wall_time(state)
    finished = t.done + t.failed
    return {
        "run_id": state.run_id,
        "model": state.model,
        "dataset": state.dataset,
        "status": state.status,
        "counts": {
            "planned": state.planned,
            "done": t.done,
            "failed": t.failed,
            "pending": max(0, state.planned - finished),
        },
        "accuracy": round(t.correct / t.scored, 6) if t.scored else None,
        "accuracy_ci95": wilson(t.correct, t.scored),
        "scored": t.scored,
        "correct": t.correct,
        "accuracy_reviewed": round(t.correct_reviewed / t.scored_reviewed, 6) if t.scored_reviewed else None,
        "accuracy_reviewed_ci95": wilson(t.correct_reviewed, t.scored_reviewed),
        "scored_reviewed": t.scored_reviewed,
        "correct_reviewed": t.correct_reviewed,
        "reviews": {"applied": t.reviewed, "overturned": t.overturned,
                    "stale": sum(r.latest and r.stale and r.verdict != "cleared" for r in state.reviews)},
        "labels": _per_label(t.labels),
        "parse_success_rate": round(t.parsed_ok / t.done, 6) if t.done else None,
        "latency_s": {q: _round(percentile(latencies, n)) for q, n in (("p50", 50), ("p90", 90), ("p99", 99))},
        "tokens": {"prompt": t.prompt_tokens, "completion": t.completion_tokens, "total": t.prompt_tokens + t.completion_tokens},
        "cost_usd": _cost(state.config, t.prompt_tokens, t.completion_tokens),
        "cache": _cache(state.config, t),
        "attempts": t.attempts,
        "retries": t.retries,
        "samples": _per_sample(t.per_item, state.failed, state.samples),
        "throughput_per_s": round(finished / wall, 3) if wall > 0 else None,
        "wall_time_s": round(wall, 3),
        "last_seq": state.last_seq,
    }


def encode_summary(state: RunState) -> bytes:
    return _json.encode(summarize(state)) + b"\n"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _cost(config: dict[str, Any], prompt: int, completion: int) -> float | None:
    price_in, price_out = config.get("price_in"), config.get("price_out")
    if price_in is None and price_out is None:
        return None
    return round((prompt * (price_in or 0) + completion * (price_out or 0)) / 1e6, 6)


def _cache(config: dict[str, Any], t: Any) -> dict[str, Any]:
    """Replies copied from the cross-run cache: how many of the run's replies, their tokens
    (not in ``tokens``: not paid) and what they would have cost at the run's prices."""
    tokens = {"prompt": t.cached_prompt_tokens, "completion": t.cached_completion_tokens,
              "total": t.cached_prompt_tokens + t.cached_completion_tokens}
    return {"cached": t.cached, "of": t.replies, "tokens": tokens,
            "saved_usd": _cost(config, t.cached_prompt_tokens, t.cached_completion_tokens)}


def _per_sample(per_item: dict[str, list[list[Any]]], failed: Mapping[Key, Any], samples: int) -> dict[str, Any] | None:
    """With several samples: mean accuracy (pass@1), pass@k (any sample correct, k = samples)
    and agreement (share of samples giving the modal answer).

    A sample that failed for good counts as wrong, as it does in ``accuracy`` (so pass@1 is
    that accuracy, and pass@k >= pass@1 over the same items); pass@k is over the items whose
    k samples all finished (``pass_items`` of ``items``), an item without an expected answer
    in neither."""
    if samples <= 1 or not (per_item or failed):
        return None
    results = {item: [c for c, _ in rows] for item, rows in per_item.items()}
    for (item_id, _sample), row in failed.items():
        results.setdefault(item_id, []).append(False if row.expected not in (None, "") else None)
    scored = [r for r in results.values() if all(c is not None for c in r)]
    complete = [r for r in scored if len(r) == samples]
    agreement = [Counter(str(a) for _, a in rows).most_common(1)[0][1] / len(rows) for rows in per_item.values()]
    flat = [c for r in scored for c in r]
    return {
        "k": samples,
        "mean_accuracy": round(sum(flat) / len(flat), 6) if flat else None,
        f"pass@{samples}": round(sum(any(r) for r in complete) / len(complete), 6) if complete else None,
        "agreement": round(sum(agreement) / len(agreement), 6) if agreement else None,
        "items": len(results),
        "pass_items": len(complete),
    }


def _per_label(labels: Labels | None) -> dict[str, Any] | None:
    if labels is None or not labels.support:
        return None
    per: dict[str, Any] = {}
    for name in sorted(labels.support):
        support, predicted, tp = labels.support[name], labels.predicted.get(name, 0), labels.hits.get(name, 0)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[name] = {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6), "support": support}
    macro = sum(v["f1"] for v in per.values()) / len(per)
    return {"per_class": per, "macro_f1": round(macro, 6)}
