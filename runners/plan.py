"""``--dry-run``: the fully expanded requests, written to ``plan.jsonl``, and what they cost.

Nothing is sent and no log is created: ``plan.jsonl`` goes into the would-be run directory.
Multi-turn items list their first turn only (later turns depend on the replies) and count
their other prompts in the token estimate.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from .config import RunConfig
from .dataset import iter_items
from .limits import estimate_tokens

__all__ = ["dry_run"]

_json = msgspec.json.Encoder()


def dry_run(dataset: str, config: RunConfig, run_dir: str, chosen: set[int] | None) -> dict[str, Any]:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "plan.jsonl")
    system = [{"role": "system", "content": config.system}] if config.system else []
    items = tokens = 0
    with open(path, "wb") as f:
        for n, item in enumerate(iter_items(dataset, config.template)):
            if chosen is not None and n not in chosen:
                continue
            if chosen is None and config.limit is not None and n >= config.limit:
                break
            items += 1
            body = {"model": config.model, "messages": system + item.turns[0], **config.params(), **item.params}
            later = [m for turn in item.turns[1:] for m in turn]
            tokens += (estimate_tokens(body["messages"]) + estimate_tokens(later)) * config.samples
            for sample in range(config.samples):
                f.write(_json.encode({"item_id": item.id, "sample": sample, "turns": len(item.turns), "body": body}) + b"\n")
    cost = None
    if config.price_in is not None:
        cost = round(tokens * config.price_in / 1e6, 6)
    return {"plan": path, "items": items, "samples": config.samples, "requests": items * config.samples,
            "prompt_tokens_estimate": tokens, "prompt_cost_usd_estimate": cost}
