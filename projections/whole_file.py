"""A projection whose one output file is a pure function of a small fold state, rewritten
whole (temp + rename) when it changed: ``failures.jsonl``, ``batches.json``.

Its checkpoint part is the state itself, so ``check`` rewrites the file from the part
whenever they differ (deleted, cut, garbled). A subclass says which file, which part (the
state's struct), and the two pure functions: ``fold_event(state, event) -> changed`` and
``encode_state(state) -> bytes``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from llm_ledger.ledger import fs
from llm_ledger.ledger.events import Parsed
from llm_ledger.ledger.framing import Frame
from llm_ledger.ledger.fsio import write_atomic
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.recovery import LogEnd

from .fold import Key
from .projection import Output, Part, Where

__all__ = ["WholeFile"]


class WholeFile:
    name: ClassVar[str]
    version: ClassVar[int]
    part_type: ClassVar[type[Part]]  # with a ``state`` field
    file_name: ClassVar[str]
    fold_event: ClassVar[Callable[[Any, Any], bool]]
    encode_state: ClassVar[Callable[[Any], bytes]]
    slow: ClassVar[bool] = False

    def __init__(self, paths: RunPaths, where: Where, writers: int) -> None:
        self.path = os.path.join(paths.dir, self.file_name)
        self.where = where
        self.part: Any = self.part_type()
        self._written: bytes | None = None  # what the file holds now, when known
        self._changed = False

    def outputs(self) -> Sequence[Output]:
        return (Output(self.path),)

    def check(self, end: LogEnd, clean: bool) -> bool:
        data = self.encode_state(self.part.state)
        try:
            with fs.open_file(self.path, "rb") as f:
                intact = f.read() == data
        except OSError:
            intact = False
        if not intact:
            write_atomic(self.path, data)
        self._written = data
        return True

    def open(self) -> None:
        pass  # nothing held open: the file is rewritten whole

    def apply(self, frames: Sequence[Frame], overrides: Mapping[Key, Parsed]) -> None:
        part = self.part
        state, changed, fold_event = part.state, False, self.fold_event
        for frame in frames:
            if frame.first_seq + len(frame.events) - 1 > part.seq:  # else applied already
                seq = part.seq
                for event in frame.events:
                    if event.seq > seq:
                        changed |= fold_event(state, event)
                part.seq = frame.events[-1].seq
            part.offset = max(part.offset, frame.end)
        self._changed |= changed

    def write(self) -> None:
        if self._written is not None and not self._changed:
            return
        data = self.encode_state(self.part.state)
        if data != self._written:
            write_atomic(self.where(self.path), data)
        self._written, self._changed = data, False

    def close(self) -> None:
        self._written = None  # where the file goes next (staged, swapped) is not known here
