"""The conversations projection: ``conversations/q{item_id}_s{sample}.json``, one per finish.

Its fold is ``conversations.py``. Each file is written atomically (temp + rename), once per
batch however many events of the batch touch it. Kept apart from the rows because it costs
about a hundred times more to rebuild (a file create per item): ``responses.jsonl`` and
``summary.json`` never wait for it, and a damaged ``responses.jsonl`` never costs a rewrite of
every conversation file. Files are written inline by default (a live run's projector thread:
extra threads would only compete with the event loop for the GIL); a rebuild uses a few
writer threads to overlap the syscalls with the fold. Either way every write has finished
before a checkpoint is written, so a checkpoint never covers a file not written yet.

Its part of the checkpoint holds the fold's state (open and failed conversations: a resume
continues a multi-turn item from it). On open after a crash (``check`` with a checkpoint not
written by a close), files written after the checkpoint may record events the log no longer
has (it lost its tail): those are removed; later events are applied again, rewriting the
others with identical bytes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ClassVar

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.events import Parsed
from llm_ledger.ledger.framing import Frame
from llm_ledger.ledger.fsio import write_atomic
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.recovery import LogEnd

from . import conversations as conv_fold
from .conversations import Conversation, ConversationState
from .fold import Key
from .projection import Output, Part, Where

__all__ = ["CONVERSATIONS", "Conversations", "ConversationsPart"]

CONVERSATIONS = "conversations"


class ConversationsPart(Part, kw_only=True):
    state: ConversationState = msgspec.field(default_factory=ConversationState)


class Conversations:
    name: ClassVar[str] = CONVERSATIONS
    version: ClassVar[int] = 1
    slow: ClassVar[bool] = True
    part_type: ClassVar[type[Part]] = ConversationsPart

    def __init__(self, paths: RunPaths, where: Where, writers: int) -> None:
        self.paths = paths
        self.where = where
        self.writers = writers
        self.part: ConversationsPart = ConversationsPart()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def conversation(self, key: Key) -> Conversation | None:
        """An unfinished or finally failed conversation (a resume continues it)."""
        state = self.part.state
        return state.open.get(key) or state.failed.get(key)

    def outputs(self) -> Sequence[Output]:
        return (Output(self.paths.conversations, directory=True),)

    def check(self, end: LogEnd, clean: bool) -> bool:
        if not clean:
            self._remove_newer(end.last_seq)
        return True

    def _remove_newer(self, last_seq: int) -> None:
        """Remove the files that record an event after ``last_seq``. File times only pick the
        candidates (with a margin: the kernel's file clock is coarse); each file's own ``seq``
        decides."""
        if not os.path.isdir(self.paths.conversations):
            return
        since = fs.stat(self.paths.checkpoint).st_mtime_ns - 2_000_000_000
        with fs.scandir(self.paths.conversations) as entries:
            for entry in entries:
                if entry.stat().st_mtime_ns >= since and _recorded_seq(entry.path) > last_seq:
                    fs.unlink(entry.path)

    def open(self) -> None:
        fs.makedirs(self.where(self.paths.conversations), exist_ok=True)

    def apply(self, frames: Sequence[Frame], overrides: Mapping[Key, Parsed]) -> None:
        part = self.part
        state, apply = part.state, conv_fold.apply
        files: dict[str, bytes] = {}  # one write per file per batch: last wins
        for frame in frames:
            if frame.first_seq + len(frame.events) - 1 > part.seq:
                seq = part.seq
                for event in frame.events:
                    if event.seq > seq and (out := apply(state, event, overrides)) is not None:
                        files[out[0]] = out[1]
                part.seq = frame.events[-1].seq
            part.offset = max(part.offset, frame.end)
        directory = self.where(self.paths.conversations)
        if self.writers and files and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.writers, thread_name_prefix="ledger-conversations")
        for name, data in files.items():
            path = os.path.join(directory, name)
            if self._pool is None:
                write_atomic(path, data)
            else:
                self._pending.append(self._pool.submit(write_atomic, path, data))
        self._drain()  # no two writes of one file ever overlap across batches

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # an OSError here is a projection failure: let it surface

    def write(self) -> None:
        self._drain()

    def close(self) -> None:
        try:
            self._drain()
        finally:
            if self._pool is not None:
                pool, self._pool = self._pool, None
                pool.shutdown()


class _Seq(msgspec.Struct):
    seq: int = 0


def _recorded_seq(path: str) -> int:
    """The seq of the event that finished a conversation file (unreadable: treat as ahead)."""
    try:
        with fs.open_file(path, "rb") as f:
            return msgspec.json.decode(f.read(), type=_Seq).seq
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return 1 << 62
