"""``ledger show RUN ITEM``: one (item, sample)'s whole story, straight from the log.

The conversation as the fold assembled it (the conversation file when the item finished,
else the events so far) and every attempt: started, reply or failure, parse.
"""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.events import Failed, Parsed, Response, Started
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.reader import iter_events

from .conversations import file_name

__all__ = ["item_story"]


def item_story(paths: RunPaths, item_id: str, sample: int) -> dict[str, Any]:
    attempts: list[dict[str, Any]] = []
    for event in iter_events(paths.log):
        if isinstance(event, (Started, Response, Failed, Parsed)) and event.item_id == item_id and event.sample == sample:
            attempts.append(_brief(event))
    if not attempts:
        raise InputError(f"run {paths.run_id} has no events for item {item_id!r} sample {sample}")
    conversation = None
    path = os.path.join(paths.conversations, file_name(item_id, sample))
    if os.path.exists(path):
        with fs.open_file(path, "rb") as f:
            conversation = json.loads(f.read())
    return {"item_id": item_id, "sample": sample, "conversation": conversation, "events": attempts}


def _brief(event: Any) -> dict[str, Any]:
    data = msgspec.to_builtins(event)
    data.pop("raw", None)  # the raw reply repeats the text; `ledger log` has it whole
    return data
