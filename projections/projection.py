"""What a projection is, to the projector: the seam a new output of the log plugs into.

A projection folds durable frames into its state and writes files from it. The projector
(``projector.py``) does everything else the same way for every projection listed in
``registry.py``: the checkpoint part it keeps for it (proved by CRC and by the log position
it vouches for), its repair on open, its rebuild from zero into staged files
(``*.rebuild.tmp.<pid>``, swapped in only when the fold succeeded), and the order of writes
that keeps a checkpoint from ever vouching for files that are gone or not written yet.

To add one: a module with a class that meets ``Projection`` (its fold without I/O, its
writes, its check), and its line in ``registry.PROJECTIONS``. ``failures.py`` is the worked
example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, NamedTuple, Protocol

import msgspec

from llm_ledger.ledger.events import Parsed
from llm_ledger.ledger.framing import HEADER_SIZE, Frame
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.recovery import LogEnd

from .fold import Key

__all__ = ["Part", "Output", "Where", "Projection"]


class Part(msgspec.Struct, kw_only=True):
    """A projection's part of the checkpoint: how far into the log its state goes (the frame
    boundary after its last applied event, and that event's seq). A projection's own part
    subclasses this and adds its fold's state and what proves its files."""

    offset: int = HEADER_SIZE
    seq: int = 0


class Output(NamedTuple):
    """A file or directory a projection writes, by its path in the run's directory."""

    path: str
    directory: bool = False


Where = Callable[[str], str]
"""Where an output is written now: its own path, or a rebuild's staged path beside it."""


class Projection(Protocol):
    """One projection, as the projector drives it (one thread at a time)."""

    name: ClassVar[str]  # its part of the checkpoint, its key in rebuild timings
    version: ClassVar[int]  # bumped whenever its part changes shape: an older part is refolded
    part_type: ClassVar[type[Part]]
    slow: ClassVar[bool]  # a file per item: a rebuild folds it in a pass of its own, after the others
    part: Part  # its state as of the events applied; checkpointed as is

    def __init__(self, paths: RunPaths, where: Where, writers: int) -> None:
        """``where`` maps each output to the path to write now; ``writers``: threads it may
        use to overlap its writes with the fold (0: write inline)."""

    def outputs(self) -> Sequence[Output]:
        """Its files and directories in the run's directory (rebuilt, swapped and checked
        for existence by the projector)."""

    def check(self, end: LogEnd, clean: bool) -> bool:
        """Do its files agree with ``part`` (just loaded from a checkpoint that proved itself,
        at a position of this log)? Repair in place what can be (cut a partial line, remove
        a file the log no longer backs, rewrite a file from the state); False means fold it
        again from zero. ``clean``: nothing was written after that checkpoint."""

    def open(self) -> None:
        """Start writing at ``where``'s paths (open files for appending, make directories)."""

    def apply(self, frames: Sequence[Frame], overrides: Mapping[Key, Parsed]) -> None:
        """Fold in the frames' events above ``part.seq`` and write what they finish; advance
        ``part.offset`` and ``part.seq``. ``overrides``: re-parses, applied at the original
        parse (``overrides.py``)."""

    def write(self) -> None:
        """Make the files show the state (rewritten files, pending writes): on the refresh
        cadence, before every checkpoint, before a swap."""

    def close(self) -> None:
        """Stop writing: close files, finish pending writes. ``open`` may follow."""

