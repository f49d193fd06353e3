"""The projector: feeds durable events to every registered projection and keeps them sound.

The projections are listed in ``registry.py`` (rows: ``responses.jsonl`` + ``summary.json``;
conversations: ``conversations/``; ...); what each one is to the projector is
``projection.Projection``. The projector does the rest the same way for all of them:

* the checkpoint (``checkpoint.py``): one part per projection -- the log offset and seq its
  state covers, the state, what proves its files -- written atomically at most every
  ``checkpoint_every`` seconds and on close, after every projection has written its files
  (a checkpoint never covers a file not written yet);
* on open, each projection repairs itself from its part: a part that proves itself and sits
  at a frame boundary of this log is checked against the files (``Projection.check``: cut a
  partial line, remove files the log no longer backs) and every event after it is applied
  again. A part missing, of another version, ahead of the log (it lost its tail after the
  projections consumed it), or whose files fail their check means that projection is folded
  again from offset zero;
* before a projection's files are deleted or replaced, the checkpoint on disk stops vouching
  for them, durably (fsync'd): a crash in between never leaves it vouching for files that
  are gone. Otherwise projections never fsync: the log is the truth;
* a fold from zero (``rebuild``, or an open that found a projection unsound) writes into new
  files beside the old ones (``staging.py``) and swaps them in only when the fold succeeded,
  like SQLite's journal: a rebuild that fails (a damaged log, a full disk) or is killed leaves
  the old files and checkpoint as they were.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import LogLockedError
from llm_ledger.ledger.events import Parsed, decode_many_view
from llm_ledger.ledger.framing import Frame
from llm_ledger.ledger.fsio import fsync_dir, write_atomic
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.ledger.lock import RunLock
from llm_ledger.ledger.reader import iter_frames
from llm_ledger.ledger.recovery import locate_end

from .checkpoint import Checkpoint, encode_checkpoint, get_part, invalidate, on_log, put_part, read_checkpoint
from .conversation_files import CONVERSATIONS, Conversations
from .conversations import Conversation
from .fold import Key, RunState
from .overrides import overrides
from .projection import Projection
from .registry import NAMES, PROJECTIONS
from .rows import ROWS, Rows
from .staging import remove_output, remove_stale_temps, remove_tree, staged_path, swap

__all__ = ["Projector", "Checkpoint", "rebuild", "refresh", "checkpointed_state", "read_checkpoint", "ROWS",
           "CONVERSATIONS"]


class Projector:
    """Owns a run's projection files; ``apply_frames`` is safe to call from one thread."""

    def __init__(self, paths: RunPaths, *, refresh: float = 1.0, checkpoint_every: float = 5.0,
                 writers: int = 0) -> None:
        self.paths = paths
        self.refresh = refresh
        self.checkpoint_every = checkpoint_every
        self._staged: dict[str, str] = {}  # output path -> where a fold from zero writes it meanwhile
        self.projections: list[Projection] = [cls(paths, self._where, writers) for cls in PROJECTIONS]
        self._by_name = {p.name: p for p in self.projections}
        self.ckpt = Checkpoint()
        self.current: set[str] = set(NAMES)  # the projections kept up with the log
        self.staging: set[str] = set()  # projections folding into staged files (no checkpoint now)
        self.overrides: dict[Key, Parsed] = {}  # re-parses (overrides.py), for a fold from zero
        self.refolded: set[str] = set()  # projections this open folds from offset zero
        self._opened = False
        self._last_refresh = 0.0
        self._last_ckpt = 0.0
        self._dirty = False  # anything applied since the files were last written
        self._unwritten = False  # frames applied since write_files (the rewritten files lag behind them)
        self.broken = False  # an error left the state ahead of the files: never checkpoint it

    def _where(self, path: str) -> str:
        return self._staged.get(path, path)

    def _named(self, names: Iterable[str]) -> list[Projection]:
        """These projections, in the registry's order."""
        names = set(names)
        return [p for p in self.projections if p.name in names]

    @property
    def state(self) -> RunState:
        """The rows fold's state: totals, open and failed items (what summary.json shows)."""
        rows = self._by_name[ROWS]
        assert isinstance(rows, Rows)
        return rows.part.state

    def conversation(self, key: Key) -> Conversation | None:
        """An unfinished or finally failed conversation (a resume continues it): from the
        checkpoint, which proved itself on open, plus the log after it."""
        conversations = self._by_name[CONVERSATIONS]
        assert isinstance(conversations, Conversations)
        return conversations.conversation(key)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, paths: RunPaths, parts: Sequence[str] = NAMES, **kw: float) -> "Projector":
        """Load the checkpoint, repair the files from it, catch ``parts`` up with the log
        (a projection left out is repaired but stays where its checkpoint has it). A
        projection the checkpoint does not vouch for is folded from zero into staged files
        and swapped in when complete, as in ``rebuild``: a fold that fails (a damaged log)
        leaves the old files as they were."""
        projector = cls(paths, **kw)
        projector.current = set(parts)
        projector._remove_stale_temps(parts)
        projector._load(parts)
        projector._open_files()
        try:
            projector.catch_up(parts)
            projector._redo_with_reparses(parts)
        except BaseException:
            projector._discard_staged()
            raise
        for p in projector._named(projector.staging):
            projector._commit(p, clean=False, reopen=True)
        return projector

    def _load(self, parts: Sequence[str]) -> None:
        """Load the checkpoint if it proves itself, and check each projection's part and files
        against this log. A projection that fails is folded again from zero: into staged files
        if it is among ``parts``, else only in memory (its files stay until a fold replaces
        them)."""
        ckpt = read_checkpoint(self.paths.checkpoint)
        refold = set(NAMES)
        if ckpt is not None:
            with fs.open_file(self.paths.log, "rb") as f:
                end = locate_end(f, self.paths.log)
            self.ckpt, refold = ckpt, set()
            if ckpt.reparsed:  # catching up must apply re-parses the way the checkpointed parts did
                self.overrides = overrides(self.paths.log)
            for p in self.projections:
                part = get_part(ckpt, p.name, p.version, p.part_type)
                if part is None or not on_log(self.paths.log, part, end):
                    refold.add(p.name)
                    continue
                p.part = part
                if not p.check(end, ckpt.clean):
                    refold.add(p.name)
        for p in self.projections:
            if p.name in refold and p.name in parts:
                self._stage(p)
            elif p.name in refold:
                p.part = p.part_type()

    def _remove_stale_temps(self, parts: Iterable[str]) -> None:
        """In the run's directory, and in the directories of ``parts`` (a directory of one file
        per item takes a while to list)."""
        directories = [o.path for p in self._named(parts) for o in p.outputs() if o.directory]
        remove_stale_temps([self.paths.dir, *directories])

    def _open_files(self) -> None:
        for p in self._named(self.current):
            p.open()
        self._opened = True

    def _reset(self, *names: str) -> None:
        """Forget these projections' files and state: they are folded again from zero. The
        checkpoint on disk stops vouching for them (durably) before a file is deleted."""
        invalidate(self.paths.checkpoint, [n for n in names if n not in self.staging])
        for p in self._named(names):
            p.close()
            for output in p.outputs():
                remove_output(output, self._where(output.path))
            p.part = p.part_type()
            if p.name in self.current:
                p.open()
        self.refolded.update(names)
        self._dirty = True

    def catch_up(self, parts: Iterable[str] | None = None) -> None:
        """Apply what the log has beyond the checkpoint. The cyclic garbage collector is paused
        meanwhile: decoded events make millions of short-lived containers and no cycles, and
        its passes over them cost a third of a large rebuild."""
        parts = tuple(self.current if parts is None else parts)
        start = min((p.part.offset for p in self._named(parts)), default=None)
        if start is None:
            return
        batch: list[Frame] = []
        with _gc_paused():
            for frame in iter_frames(self.paths.log, start, decode=decode_many_view):
                batch.append(frame)
                if len(batch) >= 256:
                    self.apply_frames(batch, parts)
                    batch = []
            self.apply_frames(batch, parts)

    def _redo_with_reparses(self, parts: Iterable[str]) -> None:
        """A fold from zero ran without re-parse overrides (finding them costs a pass of its
        own, and most logs have none); if the log turned out to hold re-parses or reviews,
        fold those projections again with them."""
        redo = tuple(p for p in parts if p in self.refolded)
        if self.overrides or not redo or not (self.state.reparse_sessions or self.state.reviews):
            return
        self.overrides = overrides(self.paths.log)
        if self.overrides:
            self._reset(*redo)
            self.catch_up(redo)

    # -- folding from zero (staged files, swapped in when complete) -----------------------

    def _stage(self, p: Projection) -> None:
        """Point ``p`` at new, empty files beside the run's and forget its state (``open``
        starts writing them)."""
        self.refolded.add(p.name)
        self.staging.add(p.name)
        p.close()
        for output in p.outputs():
            staged = self._staged[output.path] = staged_path(output)
            remove_tree(staged, ignore_errors=True)
        p.part = p.part_type()

    def _discard_staged(self) -> None:
        """A failed fold from zero: remove its staged files; the run's own are untouched."""
        for p in self._named(self.staging):
            with suppress(OSError):  # an unwritten buffer goes with the staged file
                p.close()
            for output in p.outputs():
                remove_tree(self._staged.pop(output.path), ignore_errors=True)
        self.staging.clear()

    def _commit(self, p: Projection, clean: bool, reopen: bool = False) -> None:
        """Swap ``p``'s staged files in: the checkpoint stops vouching for the old files
        (durably), the staged ones are renamed over them, then the new checkpoint is written
        (once nothing is staged any more). Old directories are deleted last, under a temp
        name nothing vouches for. ``reopen``: keep writing the new files (an open that goes
        on live)."""
        p.write()
        p.close()
        invalidate(self.paths.checkpoint, (p.name,))
        old = [swap(output, self._staged.pop(output.path)) for output in p.outputs()]
        self.staging.discard(p.name)
        fsync_dir(self.paths.dir)  # the swap is durable before a checkpoint vouches for it
        if reopen:
            p.open()
        if not self.staging:
            for other in self._named(self.current - {p.name}):
                other.write()  # e.g. the rows' state may be ahead of summary.json
            self._write_checkpoint_file(clean)
        for path in old:
            if path is not None:
                remove_tree(path)

    # -- applying ------------------------------------------------------------------------

    def apply_frames(self, frames: Sequence[Frame], parts: Iterable[str] | None = None) -> None:
        """Fold durable frames into ``parts`` (default: every projection kept current)."""
        if not frames or self.broken:
            return
        self._dirty = self._unwritten = True
        try:
            for p in self._named(self.current if parts is None else parts):
                p.apply(frames, self.overrides)
        except BaseException:
            self.broken = True  # the folds moved on, the files did not: the last checkpoint stays
            raise
        self.maybe_refresh()

    # -- writing -------------------------------------------------------------------------

    def maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_refresh >= self.refresh:
            self.write_files()
        if now - self._last_ckpt >= self.checkpoint_every:
            self.write_checkpoint()

    def write_files(self) -> None:
        """Every current projection's rewritten files (summary.json ...), as of its state."""
        self._last_refresh = time.monotonic()
        self._unwritten = False
        for p in self._named(self.current):
            p.write()

    def flush_if_idle(self) -> None:
        """The files as of the last frames applied, when no frame came since the last write
        (the live projector thread calls it after ``refresh`` seconds without a frame): a run
        whose events are sparse -- a batch run polling, a slow endpoint -- must not show
        files older than its log for as long as nothing new arrives."""
        if self._unwritten and not self.broken and not self.staging:
            self.write_files()

    def write_checkpoint(self, clean: bool = False) -> None:
        """The files first: a checkpoint must never be newer than the files it vouches for."""
        if self.broken or self.staging:
            return
        self.write_files()
        self._write_checkpoint_file(clean)

    def _write_checkpoint_file(self, clean: bool) -> None:
        self._last_ckpt = time.monotonic()
        self.ckpt.clean = clean
        self.ckpt.reparsed = bool(self.overrides)
        for p in self.projections:
            put_part(self.ckpt, p.name, p.version, p.part)
        write_atomic(self.paths.checkpoint, encode_checkpoint(self.ckpt))

    def close(self) -> None:
        if self._opened and not self.broken:
            outputs = [o.path for p in self._named(self.current) for o in p.outputs()] + [self.paths.checkpoint]
            if self._dirty or not all(os.path.exists(path) for path in outputs):
                self.write_checkpoint(clean=True)
        self._opened = False
        for p in self.projections:
            p.close()


def rebuild(paths: RunPaths, parts: Sequence[str] = NAMES, *,
            timings: dict[str, float] | None = None) -> Projector:
    """Fold the whole log again into new files for ``parts``, beside the run's, and swap each
    projection's files in only once its fold has succeeded (``Projector._commit``): a rebuild
    that fails or is killed leaves the old files and checkpoint as they were, and the next
    open removes its staged files. The quick projections in one pass over the log, then each
    slow one (``_passes``): ``responses.jsonl`` and ``summary.json`` do not wait for the
    conversation files. A projection not in ``parts`` stays as its checkpoint has it.
    ``timings`` receives the seconds each projection's pass took."""
    projector = Projector(paths, refresh=float("inf"), checkpoint_every=float("inf"), writers=4)
    projector._remove_stale_temps(())  # the run's directory: a killed rebuild's staged files
    old = read_checkpoint(paths.checkpoint)
    if old is not None:
        projector.ckpt = old
        for p in projector.projections:
            part = get_part(old, p.name, p.version, p.part_type)
            if part is not None:
                p.part = part
        if ROWS not in parts and (old.reparsed or projector.state.reparse_sessions or projector.state.reviews):
            projector.overrides = overrides(paths.log)  # the rows' state is not refolded here
    clean, rebuilt = projector.ckpt.clean, set()  # a projection's files are untouched until its commit
    # ``clean`` vouches that no file of a directory projection (a file per item, checked by
    # file times on open) is ahead of the checkpoint; files are whole-file rewrites or
    # CRC-checked otherwise. Rebuilding every directory projection makes it true again.
    by_file = {p.name for p in projector.projections if any(o.directory for o in p.outputs())}
    projector.current = set()
    try:
        for group in _passes(projector._named(parts)):
            start = time.perf_counter()
            names = tuple(p.name for p in group)
            for p in group:
                projector._stage(p)
                projector.current.add(p.name)
            try:
                for p in group:
                    p.open()
                projector.catch_up(names)
                projector._redo_with_reparses(names)
            except BaseException:
                projector._discard_staged()
                raise
            for p in group:
                rebuilt.add(p.name)
                clean = clean or rebuilt >= by_file
                projector._commit(p, clean)
            if timings is not None:
                timings.update(dict.fromkeys(names, time.perf_counter() - start))
    finally:
        projector.close()
    return projector


def _passes(projections: list[Projection]) -> list[list[Projection]]:
    """A rebuild's passes over the log: every quick projection in one, then each slow one
    (a file per item) in its own, so that the quick files never wait for the slow ones."""
    quick = [p for p in projections if not p.slow]
    return ([quick] if quick else []) + [[p] for p in projections if p.slow]


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def checkpointed_state(paths: RunPaths) -> RunState:
    """The rows fold's state as of the last checkpoint, without taking the run (a live run's
    projector owns it); an empty state when there is no readable checkpoint."""
    ckpt = read_checkpoint(paths.checkpoint)
    part = get_part(ckpt, ROWS, Rows.version, Rows.part_type) if ckpt is not None else None
    return part.state if part is not None else RunState()  # type: ignore[attr-defined]


def refresh(paths: RunPaths, parts: Sequence[str] = (ROWS,)) -> RunState | None:
    """Bring ``responses.jsonl`` and ``summary.json`` (and any other ``parts``) up to date,
    unless a live run owns them. Conversation files are left to the next run, resume or
    replay by default: a reader of rows (exports) should not wait for them.

    Takes the run's lock, so that no two processes ever write the same projection files.
    Returns the rows fold's state, or None when a writer holds the run (its own projector
    keeps the files current; read them as they are).
    """
    try:
        lock = RunLock.acquire(paths.lock)
    except LogLockedError:
        return None
    try:
        projector = Projector.open(paths, parts)
        projector.close()
        return projector.state
    finally:
        lock.release()
