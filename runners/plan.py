"""What a session will send: the resume plan, and the dry run's ``plan.jsonl``.

Resume plan per (item, sample), from the index: done -> skipped; finally failed ->
skipped with ``skip_failed``, else retried; in flight -> re-sent from the turn after the
last completed one, with the conversation rebuilt from the replies in the log; never
started -> sent. It is streamed in file order (a million works are never held at once);
what a resume found is counted from the index's records beforehand. With ``--limit`` and ``--seed``, the same random subset on every session.

``--dry-run``: the fully expanded requests, written to ``plan.jsonl``, and what they cost.

Nothing is sent and no log is created: ``plan.jsonl`` goes into the would-be run directory.
No API key and no network are needed. Multi-turn items list their first turn only (later
turns depend on the replies) and count their other prompts in the token estimate.

The estimate holds prompt tokens (estimated from characters; later turns without the
replies they will include) and an upper bound for completion tokens: the sum of every
request's ``max_tokens`` (``--max-tokens``, or the item's own in the Batch API format), or
``None`` when some request has none, since then nothing bounds the reply.

The cross-run cache (runners/cache.py; on unless ``--no-cache``) is asked about every
request the plan knows: a request some run's log already answers is counted in
``cached_requests`` and marked ``"cached": true`` in ``plan.jsonl``, and its tokens and cost
are left out of the estimate, because the run will not send it -- a rerun's dry run says
``$0``, not the first run's price. A multi-turn item's later turns depend on replies and
are counted as sent. The store is caught up with every run's log first (it is derived state,
like the index); a store that cannot be opened is said, and everything is counted as sent.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.lifecycle import DONE, FAILED, IN_FLIGHT
from llm_ledger.ledger.shard_keys import planned_keys, shard_of
from llm_ledger.projections.conversations import Conversation
from llm_ledger.projections.fold import key_of

from .config import RunConfig
from .dataset import Item, iter_items, iter_keyed, make_item, template_fields
from .limits import estimate_tokens
from .runner import Work

if TYPE_CHECKING:
    from llm_ledger.ledger.index import ItemState

    from .prepare import Prepared

__all__ = ["Found", "resume_found", "resume_works", "planned_items", "planned_records", "plan_only", "dry_run"]


@dataclass
class Found:
    """What a resume found before sending anything."""

    done: int = 0
    failed: int = 0
    in_flight: int = 0
    in_flight_tokens: int = 0
    never_started: int = 0
    to_send: int = 0


States = Callable[[list[tuple[str, int]]], list["ItemState | None"]]
_BATCH = 512  # items whose states are read in one index transaction


def resume_found(prepared: Prepared, records: Iterable[tuple[str, int, ItemState]]) -> Found:
    """What a resume will do, counted before anything is sent, without walking the dataset.

    ``records``: every (item, sample) the index holds a record of; those are the planned
    ones that were started (the plan is fixed by the run), so the others never started.
    Only the unfinished ones need their item (for the tokens they re-send): the dataset is
    read up to the last of them, usually just past what was done."""
    config = prepared.config
    found = Found()
    unfinished: dict[str, int] = {}
    held = 0
    for item_id, _sample, state in records:
        held += 1
        if state.state == DONE:
            found.done += 1
        elif state.state == FAILED:
            found.failed += 1
        else:
            found.in_flight += state.state == IN_FLIGHT
            unfinished[item_id] = unfinished.get(item_id, 0) + 1
    planned = planned_keys(planned_items(prepared.dataset.items, config.limit), {"shard": config.shard, "samples": config.samples})
    found.never_started = max(0, planned - held)
    found.to_send = planned - found.done - (found.failed if prepared.skip_failed else 0)
    found.in_flight_tokens = _unfinished_tokens(prepared, unfinished)
    return found


def _unfinished_tokens(prepared: Prepared, wanted: dict[str, int]) -> int:
    if not wanted:
        return 0
    path, template = prepared.dataset.path, prepared.config.template
    fields = template_fields(template) if template else set()
    tokens = 0
    for item_id, line, record in iter_keyed(path):
        samples = wanted.pop(item_id, 0)
        if samples:
            tokens += _estimate_tokens(make_item(path, line, record, template, fields)) * samples
            if not wanted:
                break
    return tokens


def resume_works(prepared: Prepared, states: States | None,
                 conversation: Callable[[str], Conversation | None]) -> Iterator[Work | None]:
    """The works to send, streamed in file order, with a ``None`` after each batch read: the
    consumer (the engine, on the event loop) takes it as its turn to let requests in flight
    be answered, so that a long stretch of done items never stalls them. ``states``: the (item, sample)s' states in
    the index (None: a new run, nothing to look up); ``conversation``: an (item, sample)'s
    conversation as folded from the log (the projector's, proven by its checkpoint's CRC and
    log position, never unchecked bytes). An item is built only when something of it is sent:
    a resume passes over what is done at the cost of decoding its line."""
    template = prepared.config.template
    fields = template_fields(template) if template else set()
    batch: list[tuple[str, int, dict[str, Any]]] = []
    for keyed in _planned(prepared):
        batch.append(keyed)
        if len(batch) < _BATCH:
            continue
        yield from _batch_works(prepared, batch, states, conversation, fields)
        yield None
        batch = []
    yield from _batch_works(prepared, batch, states, conversation, fields)


def _planned(prepared: Prepared) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(id, line, record) of the planned items: all, the first --limit, or the --seed subset."""
    config = prepared.config
    chosen = subset(prepared.dataset.items, config.limit, config.seed)
    for n, keyed in enumerate(iter_keyed(prepared.dataset.path)):
        if config.limit is not None and chosen is None and n >= config.limit:
            return
        if chosen is not None and n not in chosen:
            continue
        yield keyed


planned_records = _planned  # for runners/shard_plan.py: keys per shard


def _batch_works(prepared: Prepared, batch: list[tuple[str, int, dict[str, Any]]], states: States | None,
                 conversation: Callable[[str], Conversation | None], fields: set[str]) -> Iterator[Work]:
    """The works of a batch of items, their states read at once (they cannot change before
    this session sends them: only the works yielded are sent)."""
    if not batch:
        return
    config = prepared.config
    samples, path, template = config.samples, prepared.dataset.path, config.template
    found = states([(item_id, s) for item_id, _, _ in batch for s in range(samples)]) if states else None
    of, mine = config.shard.get("of", 1), config.shard.get("index", 0)  # a shard sends only its own keys
    for i, (item_id, line, record) in enumerate(batch):
        item: Item | None = None
        for sample in range(samples):
            if of > 1 and shard_of(item_id, sample, of) != mine:
                continue
            state = found[i * samples + sample] if found else None
            if state is not None and (state.state == DONE or (state.state == FAILED and prepared.skip_failed)):
                continue
            item = item or make_item(path, line, record, template, fields)
            if state is None:
                yield Work(item, sample)
            else:
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
    cache, state = _plan_cache(prepared)
    try:
        report = dry_run(prepared.dataset.path, config, prepared.paths.dir,
                         subset(prepared.dataset.items, config.limit, config.seed), cache)
    finally:
        if cache is not None:
            cache.close()
    return {**report, "cache": state}


def _plan_cache(prepared: Prepared) -> tuple[Any, str]:
    """The cache a run of this plan would look requests up in (the session's: cache_for), and
    what to say about it."""
    config = prepared.config
    if config.cache is False:
        return None, "off (--no-cache): every request is sent"
    from .cache import cache_for

    cache, error = cache_for(prepared.paths.dir, prepared.paths.run_id, config)
    if cache is not None:
        return cache, "on"
    return None, f"unavailable ({error}): every request counted as sent" if error else "not used by a shard on Ray"

_json = msgspec.json.Encoder()


class _Tally:
    """Running totals of the plan: every request, and the tokens of those to be sent."""

    def __init__(self) -> None:
        self.items = self.requests = self.cached = self.prompt_tokens = self.completion_max = 0
        self.unbounded = 0  # requests to send without max_tokens

    def add(self, body: dict[str, Any], item: Item, cached: bool) -> None:
        """One sample of an item; ``cached``: its first turn is answered by the cache."""
        turns = len(item.turns)
        later = [m for turn in item.turns[1:] for m in turn]
        self.requests += turns
        sent = turns - cached
        self.cached += cached
        self.prompt_tokens += (0 if cached else estimate_tokens(body["messages"])) + estimate_tokens(later)
        bound = body.get("max_tokens", body.get("max_completion_tokens"))
        if isinstance(bound, int) and not isinstance(bound, bool):
            self.completion_max += bound * sent
        else:
            self.unbounded += sent


def dry_run(dataset: str, config: RunConfig, run_dir: str, chosen: set[int] | None, cache: Any = None) -> dict[str, Any]:
    """``cache``: a runners.cache.Cache to look each first turn up in (None: none)."""
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
            tally.items += 1
            body = {"model": config.model, "messages": system + item.turns[0], **config.params(), **item.params}
            for sample in range(config.samples):
                cached = cache is not None and cache.lookup(body, sample) is not None
                tally.add(body, item, cached)
                line = {"item_id": item.id, "sample": sample, "turns": len(item.turns), "body": body, "cached": cached}
                f.write(_json.encode(line) + b"\n")
    return _report(path, config, tally)


def _report(path: str, config: RunConfig, tally: _Tally) -> dict[str, Any]:
    completion = None if tally.unbounded else tally.completion_max
    return {
        "plan": path, "model": config.model, "items": tally.items, "samples": config.samples,
        "requests": tally.requests, "cached_requests": tally.cached, "requests_without_max_tokens": tally.unbounded,
        "prompt_tokens_estimate": tally.prompt_tokens, "completion_tokens_max": completion,
        "prompt_cost_usd_estimate": _cost(tally.prompt_tokens, config.price_in),
        "completion_cost_usd_max": _cost(completion, config.price_out),
    }


def _cost(tokens: int | None, price: float | None) -> float | None:
    return None if tokens is None or price is None else round(tokens * price / 1e6, 6)
