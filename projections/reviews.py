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
runs (``compare``, the viewer), a row that has no review of its own takes the verdict of
the newest non-stale review, in any run of the same runs directory, of the same item id
with the same expected answer and a reply of the same sha256 (``CarriedReviews``). It is
not written into the other run's log: that run's own files stay a fold of its own log.

``review_rows`` / ``review_table`` give a run's reviews as rows / an Arrow table (the
``reviews`` view of ``ledger sql``). Columns: run_id, item_id, sample, turn, seq,
target_seq, reply_sha256, verdict, note, who, ts (timestamp[us, UTC]), stale, latest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.layout import RunPaths

__all__ = ["ReviewRow", "REVIEWS_FILE", "reply_sha256", "encode_reviews", "read_reviews", "review_rows", "review_table",
           "verdict_value", "CarriedReviews", "Carried", "reviews_path", "reviews_stamp", "SCHEMA_FIELDS"]

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
    """The run's ``reviews.jsonl`` (empty when missing or unreadable: a run from before
    reviews, or one never projected since; ``ledger replay`` writes it)."""
    try:
        with fs.open_file(reviews_path(paths), "rb") as f:
            data = f.read()
    except OSError:
        return []
    try:
        return _decode_lines(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


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


class Carried(msgspec.Struct, frozen=True, kw_only=True):
    """A verdict from another run, for a reply of the same text."""

    run_id: str
    verdict: str
    note: str
    who: str
    ts: float


class CarriedReviews:
    """The latest non-stale verdicts of the runs of one runs directory, by (item id,
    expected answer, reply sha256): what another run of the same item with the same reply
    takes as its ``correct_reviewed`` where it has no review of its own."""

    def __init__(self, runs: Sequence[RunPaths], expected: dict[str, dict[Key, Any]]) -> None:
        """``expected``: per run id, the expected answer of each reviewed key (from its rows)."""
        self._by_reply: dict[tuple[str, str, str], Carried] = {}
        self.item_ids: set[str] = set()
        for paths in runs:
            answers = expected.get(paths.run_id, {})
            for r in read_reviews(paths):
                if not r.latest or r.stale or r.verdict not in ("correct", "incorrect"):
                    continue
                key = (r.item_id, _expected_text(answers.get((r.item_id, r.sample))), r.reply_sha256)
                known = self._by_reply.get(key)
                if known is None or known.ts < r.ts:
                    self._by_reply[key] = Carried(run_id=paths.run_id, verdict=r.verdict, note=r.note, who=r.who, ts=r.ts)
                    self.item_ids.add(r.item_id)

    def __bool__(self) -> bool:
        return bool(self._by_reply)

    def find(self, item_id: str, expected: Any, sha256: str, run_id: str) -> Carried | None:
        """The verdict carried to ``run_id``'s reply of this item (never its own review)."""
        found = self._by_reply.get((item_id, _expected_text(expected), sha256))
        return found if found is not None and found.run_id != run_id else None


def _expected_text(value: Any) -> str:
    return _encoder.encode(value).decode()
