"""A person's verdicts on replies (``reviewed`` events): ``reviews.jsonl`` and how they read.

The rows fold (``fold.py``) keeps every ``reviewed`` event of a run as a ``ReviewRow`` and
the rows projection rewrites ``reviews.jsonl`` from them (one JSON line per event, in log
order; empty when nobody reviewed). A review is **stale** when the item's current reply
(its latest final ``response``) no longer hashes to the review's ``reply_sha256``: the
verdict was given for another text, and is not applied. The **latest** review of a key is
the one in effect (``cleared`` puts the machine's verdict back); earlier ones are history.

``correct_reviewed`` in ``responses.jsonl`` is the fold's (a rebuild applies each key's
latest review at the item's finishing parse, like a re-parse: ``overrides.py``). A review
also **carries over** to other runs of the same item: when projecting or reading across
runs (``compare``, the viewer), a row that has no review of its own in effect takes the
verdict of the newest non-stale review, in any run of the same runs directory, of the same
item id with the same expected answer and a reply of the same sha256 (``verdicts``); a
review of that item for another reply is shown as stale and not applied. It is not written
into the other run's log: that run's own files stay a fold of its own log.

``review_rows`` / ``review_table`` give a run's reviews as rows / an Arrow table (the
``reviews`` view of ``ledger sql``). Columns: run_id, item_id, sample, turn, seq,
target_seq, reply_sha256, verdict, note, who, ts (timestamp[us, UTC]), stale, latest.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import ProjectionError
from llm_ledger.ledger.layout import RunPaths

__all__ = ["ReviewRow", "REVIEWS_FILE", "reply_sha256", "encode_reviews", "read_reviews", "review_rows", "review_table",
           "verdict_value", "Verdict", "verdicts", "sibling_runs", "reviews_path", "reviews_stamp", "SCHEMA_FIELDS"]

REVIEWS_FILE = "reviews.jsonl"
Key = tuple[str, int]
_encoder = msgspec.json.Encoder(order="deterministic")


class ReviewRow(msgspec.Struct, kw_only=True, gc=False):
    """One ``reviewed`` event as the fold keeps it; ``stale`` and ``latest`` move as later
    events arrive (a new reply of the item, a newer review of it)."""

    item_id: str
    sample: int = 0
    turn: int = 0
    seq: int = 0  # the reviewed event's own seq
    target_seq: int = 0
    reply_sha256: str = ""
    verdict: str = ""
    note: str = ""
    who: str = ""
    ts: float = 0.0
    stale: bool = False
    latest: bool = True


_decode_lines = msgspec.json.Decoder(ReviewRow).decode_lines
SCHEMA_FIELDS = ("run_id", "item_id", "sample", "turn", "seq", "target_seq", "reply_sha256", "verdict", "note", "who",
                 "ts", "stale", "latest")


def reply_sha256(text: str | None) -> str:
    """The hash a review keeps of the reply text it judged (UTF-8; "" for no reply)."""
    if text is None:
        return ""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def verdict_value(verdict: str) -> bool | None:
    """A verdict as the ``correct_reviewed`` value it stands for (None: cleared)."""
    return True if verdict == "correct" else False if verdict == "incorrect" else None


def encode_reviews(rows: Sequence[ReviewRow]) -> bytes:
    return _encoder.encode_lines(rows) if rows else b""


def reviews_path(paths: RunPaths) -> str:
    return os.path.join(paths.dir, REVIEWS_FILE)


def read_reviews(paths: RunPaths) -> list[ReviewRow]:
    """The run's ``reviews.jsonl`` (empty when missing: a run from before reviews, or one
    never projected since). A file that is there but cannot be read or decoded is an error,
    not "no reviews": reading it as empty would show machine verdicts as if nobody had
    reviewed, and a rebuild (``ledger replay RUN --rebuild``) writes it again from the log."""
    path = reviews_path(paths)
    try:
        with fs.open_file(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ProjectionError(f"{path}: cannot be read ({exc.strerror or exc}): {_REBUILD.format(paths.run_id)}") from exc
    try:
        return _decode_lines(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProjectionError(f"{path}{_bad_line(data)}: damaged ({exc}): {_REBUILD.format(paths.run_id)}") from exc


_REBUILD = "`ledger replay {} --rebuild` writes it again from the log"


def _bad_line(data: bytes) -> str:
    """``:N``, the first line that does not decode (the whole-file decode does not say)."""
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            msgspec.json.decode(line, type=ReviewRow)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return f":{n}"
    return ""


def review_rows(paths: RunPaths) -> list[dict[str, Any]]:
    """Every review of a run, in log order, as plain rows with ``run_id`` first."""
    return [{"run_id": paths.run_id, **msgspec.structs.asdict(r)} for r in read_reviews(paths)]


def review_table(runs: Iterable[RunPaths]) -> Any:
    """The reviews of these runs as one Arrow table (``SCHEMA_FIELDS``; zero rows when none)."""
    import pyarrow as pa

    schema = pa.schema([
        ("run_id", pa.string()), ("item_id", pa.string()), ("sample", pa.int64()), ("turn", pa.int64()),
        ("seq", pa.int64()), ("target_seq", pa.int64()), ("reply_sha256", pa.string()), ("verdict", pa.string()),
        ("note", pa.string()), ("who", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("stale", pa.bool_()),
        ("latest", pa.bool_()),
    ])
    rows = [row for paths in runs for row in review_rows(paths)]
    columns = {name: [row[name] for row in rows] for name in schema.names}
    columns["ts"] = [int(ts * 1_000_000) for ts in columns["ts"]]
    return pa.table(columns, schema=schema)


def reviews_stamp(runs_dir: str) -> tuple:
    """Size and mtime of every run's ``reviews.jsonl`` under ``runs_dir``: while unchanged,
    so are the reviews carried across its runs (the viewer's cache key)."""
    stamps = []
    try:
        names = sorted(fs.listdir(runs_dir))
    except OSError:
        return ()
    for name in names:
        try:
            st = fs.stat(os.path.join(runs_dir, name, REVIEWS_FILE))
        except OSError:
            continue
        stamps.append((name, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The review that bears on one row of a run, as compare and the viewer show it: its own
    (``carried`` false) or one carried from another run for the same reply text. ``stale``:
    given for another reply, so not applied (the row keeps the machine's verdict)."""

    verdict: str
    run_id: str
    note: str = ""
    who: str = ""
    ts: float = 0.0
    stale: bool = False
    carried: bool = False

    def value(self, own: bool | None) -> bool | None:
        """The row's ``correct_reviewed`` with this review: a carried verdict that applies, or
        ``own`` (the row's, from its run's fold: its own review is applied there already)."""
        if self.carried and not self.stale:
            return verdict_value(self.verdict)
        return own

    @property
    def applied(self) -> bool:
        return not self.stale and self.verdict in ("correct", "incorrect")


class _Line(msgspec.Struct, gc=False):
    item_id: str
    sample: int = 0
    expected: Any = None
    response: str | None = None


_decode_rows = msgspec.json.Decoder(_Line).decode


def _rows(paths: RunPaths, item_ids: set[str]) -> dict[Key, _Line]:
    """The last line per key of a run's ``responses.jsonl``, for these item ids only."""
    out: dict[Key, _Line] = {}
    try:
        with fs.open_file(paths.responses, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a live writer's line in progress
                try:
                    row = _decode_rows(line)
                except msgspec.DecodeError:
                    continue
                if row.item_id in item_ids:
                    out[(row.item_id, row.sample)] = row
    except OSError:
        pass
    return out


def sibling_runs(runs: Sequence[RunPaths]) -> list[RunPaths]:
    """Every run of the runs directories these runs are in (where reviews carry from)."""
    seen: dict[str, RunPaths] = {}
    for parent in dict.fromkeys(os.path.dirname(os.path.abspath(p.dir)) for p in runs):
        try:
            names = sorted(fs.listdir(parent))
        except OSError:
            continue
        for name in names:
            paths = RunPaths(os.path.join(parent, name))
            if os.path.isfile(paths.log):
                seen.setdefault(os.path.abspath(paths.dir), paths)
    return list(seen.values())


def verdicts(runs: Sequence[RunPaths], keys: Sequence[Iterable[Key]] | None = None,
             siblings: Sequence[RunPaths] | None = None) -> list[dict[Key, Verdict]]:
    """Per run, the review bearing on each of its rows that has one: its own latest review
    (stale or not), else the newest non-stale verdict another run gave for the same item (id
    and expected answer) and the same reply text (``carried``), else, when other runs
    reviewed the item for other replies, the newest of those, marked stale.

    ``siblings``: the runs reviews carry from (default: every run of the runs' directories);
    ``keys``: per run, the keys to consider (default: all)."""
    siblings = sibling_runs(runs) if siblings is None else siblings
    given = _given(siblings)
    item_ids = {item for item, _, _ in given}
    out: list[dict[Key, Verdict]] = []
    for i, paths in enumerate(runs):
        found: dict[Key, Verdict] = {}
        for r in _readable_reviews(paths):
            if r.latest:
                found[(r.item_id, r.sample)] = Verdict(verdict=r.verdict, run_id=paths.run_id, note=r.note, who=r.who,
                                                       ts=r.ts, stale=r.stale)
        if item_ids:
            wanted = None if keys is None else set(keys[i])
            for key, row in _rows(paths, item_ids).items():
                mine = found.get(key)
                if (mine is not None and not mine.stale) or (wanted is not None and key not in wanted):
                    continue
                carried = _carried(given, paths.run_id, row)
                if carried is not None and (mine is None or not carried.stale):
                    found[key] = carried
        out.append(found)
    return out


def _readable_reviews(paths: RunPaths) -> list[ReviewRow]:
    """``read_reviews``, but a damaged file is a one-line warning on stderr and no reviews:
    compare and the viewer read the reviews of every run of the directory (carried verdicts),
    and one run's damaged file must not stop them -- nor pass unsaid."""
    try:
        return read_reviews(paths)
    except ProjectionError as exc:
        where = os.path.abspath(reviews_path(paths))
        if where not in _warned:  # once: a run is read both as compared and as a sibling
            _warned.add(where)
            print(f"warning: {exc}; its reviews are not applied", file=sys.stderr, flush=True)
        return []


_warned: set[str] = set()


_Given = dict[tuple[str, str, str], list[tuple[str, ReviewRow]]]


def _given(runs: Sequence[RunPaths]) -> _Given:
    """(item id, expected as JSON, reply sha256) -> the latest non-stale verdicts given for
    that reply, with the run that gave each."""
    given: _Given = {}
    for paths in runs:
        reviews = [r for r in _readable_reviews(paths) if r.latest and not r.stale and r.verdict in ("correct", "incorrect")]
        if not reviews:
            continue
        rows = _rows(paths, {r.item_id for r in reviews})
        for r in reviews:
            row = rows.get((r.item_id, r.sample))
            if row is not None:
                given.setdefault((r.item_id, _expected_text(row.expected), r.reply_sha256), []).append((paths.run_id, r))
    return given


def _carried(given: _Given, run_id: str, row: _Line) -> Verdict | None:
    """The newest verdict another run gave for this row's reply; else the newest it gave for
    another reply of the same item (stale); else None."""
    expected = _expected_text(row.expected)
    same = given.get((row.item_id, expected, reply_sha256(row.response)), [])
    others = [(run, r) for (item, exp, _), found in given.items() if item == row.item_id and exp == expected
              for run, r in found] if not any(run != run_id for run, _ in same) else []
    for stale, candidates in ((False, same), (True, others)):
        candidates = [(run, r) for run, r in candidates if run != run_id]
        if candidates:
            run, r = max(candidates, key=lambda c: (c[1].ts, c[0]))
            return Verdict(verdict=r.verdict, run_id=run, note=r.note, who=r.who, ts=r.ts, stale=stale, carried=True)
    return None


def _expected_text(value: Any) -> str:
    return _encoder.encode(value).decode()
