"""``--dry-run``: the fully expanded requests, written to ``plan.jsonl``, and what they cost.

Nothing is sent and no log is created: ``plan.jsonl`` goes into the would-be run directory.
No API key and no network are needed. Multi-turn items list their first turn only (later
turns depend on the replies) and count their other prompts in the token estimate.

The estimate holds prompt tokens (estimated from characters; later turns without the
replies they will include) and an upper bound for completion tokens: the sum of every
request's ``max_tokens`` (``--max-tokens``, or the item's own in the Batch API format), or
``None`` when some request has none, since then nothing bounds the reply.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from .config import RunConfig
from .dataset import Item, iter_items
from .limits import estimate_tokens

__all__ = ["dry_run"]

_json = msgspec.json.Encoder()


class _Tally:
    """Running totals of the plan."""

    def __init__(self) -> None:
        self.items = self.requests = self.prompt_tokens = self.completion_max = 0
        self.unbounded = 0  # requests without max_tokens

    def add(self, body: dict[str, Any], item: Item, samples: int) -> None:
        later = [m for turn in item.turns[1:] for m in turn]
        self.items += 1
        self.requests += len(item.turns) * samples
        self.prompt_tokens += (estimate_tokens(body["messages"]) + estimate_tokens(later)) * samples
        bound = body.get("max_tokens", body.get("max_completion_tokens"))
        if isinstance(bound, int) and not isinstance(bound, bool):
            self.completion_max += bound * len(item.turns) * samples
        else:
            self.unbounded += len(item.turns) * samples


def dry_run(dataset: str, config: RunConfig, run_dir: str, chosen: set[int] | None) -> dict[str, Any]:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "plan.jsonl")
    system = [{"role": "system", "content": config.system}] if config.system else []
    tally = _Tally()
    with open(path, "wb") as f:
        for n, item in enumerate(iter_items(dataset, config.template)):
            if chosen is not None and n not in chosen:
                continue
            if chosen is None and config.limit is not None and n >= config.limit:
                break
            body = {"model": config.model, "messages": system + item.turns[0], **config.params(), **item.params}
            tally.add(body, item, config.samples)
            for sample in range(config.samples):
                f.write(_json.encode({"item_id": item.id, "sample": sample, "turns": len(item.turns), "body": body}) + b"\n")
    return _report(path, config, tally)


def _report(path: str, config: RunConfig, tally: _Tally) -> dict[str, Any]:
    completion = None if tally.unbounded else tally.completion_max
    return {
        "plan": path, "model": config.model, "items": tally.items, "samples": config.samples,
        "requests": tally.requests, "requests_without_max_tokens": tally.unbounded,
        "prompt_tokens_estimate": tally.prompt_tokens, "completion_tokens_max": completion,
        "prompt_cost_usd_estimate": _cost(tally.prompt_tokens, config.price_in),
        "completion_cost_usd_max": _cost(completion, config.price_out),
    }


def _cost(tokens: int | None, price: float | None) -> float | None:
    return None if tokens is None or price is None else round(tokens * price / 1e6, 6)
