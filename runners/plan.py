"""What a session will send: the resume plan, and the dry run's ``plan.jsonl``.

Resume plan per (item, sample), from the index: done -> skipped; finally failed ->
skipped with ``skip_failed``, else retried; in flight -> re-sent from the turn after the
last completed one, with the conversation rebuilt from the replies in the log; never
started -> sent. With ``--limit`` and ``--seed``, the same random subset on every session.

``--dry-run``: the fully expanded requests, written to ``plan.jsonl``, and what they cost.

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
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.lifecycle import DONE, FAILED, IN_FLIGHT
from llm_ledger.projections.conversations import Conversation
from llm_ledger.projections.fold import key_of

from .config import RunConfig
from .dataset import Item, iter_items
from .limits import estimate_tokens
from .runner import Work

if TYPE_CHECKING:
    from llm_ledger.ledger.index import ItemState

    from .prepare import Prepared

__all__ = ["Found", "resume_works", "planned_items", "plan_only", "dry_run"]


@dataclass
class Found:
    """What a resume found before sending anything."""

    done: int = 0
    failed: int = 0
    in_flight: int = 0
    in_flight_tokens: int = 0
    never_started: int = 0
    to_send: int = 0


def resume_works(prepared: Prepared, state_of: Callable[[str, int], ItemState | None],
                 conversation: Callable[[str], Conversation | None], found: Found) -> Iterator[Work]:
    """The works to send, lazily, counting into ``found``. ``state_of``: an (item, sample)'s
    state in the index; ``conversation``: its conversation as folded from the log (the
    projector's, proven by its checkpoint's CRC and log position, never unchecked bytes)."""
    config = prepared.config
    chosen = subset(prepared.dataset.items, config.limit, config.seed)
    for n, item in enumerate(iter_items(prepared.dataset.path, config.template)):
        if config.limit is not None and chosen is None and n >= config.limit:
            return
        if chosen is not None and n not in chosen:
            continue
        for sample in range(config.samples):
            state = state_of(item.id, sample)
            if state is None:
                found.never_started += 1
                yield Work(item, sample)
            elif state.state == DONE:
                found.done += 1
            elif state.state == FAILED:
                found.failed += 1
                if not prepared.skip_failed:
                    yield _continue(config, item, sample, state.attempts, conversation)
            else:
                found.in_flight += state.state == IN_FLIGHT
                found.in_flight_tokens += _estimate_tokens(item)
                yield _continue(config, item, sample, state.attempts, conversation)


def _continue(config: RunConfig, item: Item, sample: int, attempts: int,
              conversation: Callable[[str], Conversation | None]) -> Work:
    """Continue a multi-turn item after its last completed turn, history from the log."""
    replies = _last_reply_per_turn(conversation(key_of(item.id, sample)))
    done_turns = 0
    while done_turns in replies and done_turns < len(item.turns) - 1:
        done_turns += 1
    if not done_turns:
        return Work(item, sample, attempts=attempts)
    system = [{"role": "system", "content": config.system}] if config.system else []
    history = system + [m for t in range(done_turns) for m in (*item.turns[t], {"role": "assistant", "content": replies[t]})]
    return Work(item, sample, start_turn=done_turns, history=history, attempts=attempts)


def _last_reply_per_turn(conversation: Conversation | None) -> dict[int, str]:
    return {t.turn: t.response for t in conversation.turns} if conversation else {}


def _estimate_tokens(item: Item) -> int:
    return sum(len(str(m.get("content", ""))) for turn in item.turns for m in turn) // 4 + 1


def subset(items: int, limit: int | None, seed: int | None) -> set[int] | None:
    """With --limit and --seed: the same random N item positions on every resume."""
    if limit is None or seed is None or limit >= items:
        return None
    return set(random.Random(seed).sample(range(items), limit))


def planned_items(items: int, limit: int | None) -> int:
    return min(items, limit) if limit else items


def plan_only(prepared: Prepared) -> dict[str, Any]:
    """--dry-run: expand every request into plan.jsonl; send nothing, log nothing."""
    config = prepared.config
    return dry_run(prepared.dataset.path, config, prepared.paths.dir, subset(prepared.dataset.items, config.limit, config.seed))

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
    fs.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "plan.jsonl")
    system = [{"role": "system", "content": config.system}] if config.system else []
    tally = _Tally()
    with fs.open_file(path, "wb") as f:
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
