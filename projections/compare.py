"""``ledger compare``: several runs paired over the (item_id, sample) keys they all share.

Reads each run's ``responses.jsonl`` and nothing else, read-only (so it is safe while a
run is still going: a partial last line is left for later, and the last line per key
wins, as for every reader of that file). Over the shared keys:

* accuracy of each run on the scored keys (``correct`` not null) with its 95% Wilson
  interval;
* the agreement matrix: the share of shared keys where two runs' parsed answers are equal
  after ``scoring.normalize`` (two runs with no parsed answer at all also agree);
* for each pair, McNemar's exact test on the keys both runs scored: ``b`` keys only the
  first got right, ``c`` only the second; the two-sided p-value is
  ``min(1, 2 * P[X <= min(b, c)])`` for ``X ~ Binomial(b + c, 1/2)`` (1.0 when ``b + c = 0``).

Both verdicts: ``correct`` (the machine's) and ``correct_reviewed`` (a person's where one
is in effect: the run's own review, or one carried from another run of the runs directory
for the same reply text, ``reviews.verdicts``). Each run's accuracy and each pair's McNemar
test are given on both (``accuracy_reviewed``, ``pairs[].reviewed``).

Keys that are not in every run are left out and counted per run: ``coverage`` is the one
rule ``compare`` and the viewer follow for runs that do not hold the same items (different
datasets, or one still going). Both say "the runs share N of M items" (M: keys in any run);
compare computes on the N shared keys and refuses (exit 2) when N is 0; the viewer shows
every key and counts disagreements on the shared ones only, under a banner saying the same. Figures keep full precision
in JSON and CSV (a p-value of 1.9e-9 is never written as 0.0); only the screen rounds.
``AnswerIndex`` is the incremental reader the viewer shares: it re-reads only what was
appended since its last refresh, and starts over when the file was replaced or truncated.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.layout import RunPaths

from .merge_status import require_merged
from .reviews import Verdict, verdicts
from .scoring import normalize
from .summary import wilson

__all__ = ["reviewed", "Answer", "AnswerText", "AnswerIndex", "Comparison", "Coverage", "coverage", "compare_runs", "key_order", "mcnemar_exact", "normalized", "write_csv", "as_text"]

Key = tuple[str, int]
TEXT_LIMIT = 4000  # characters of a response (and of a prompt) an AnswerText keeps in memory
_json = msgspec.json.Encoder(order="deterministic")


class Answer(msgspec.Struct):
    """What compare needs of one line of ``responses.jsonl``."""

    item_id: str
    sample: int
    parsed: Any = None
    expected: Any = None
    correct: bool | None = None
    error: str | None = None
    # a person's verdict where the run's own review is in effect, else ``correct`` (a line
    # written before reviews has none: UNSET, read as ``correct``)
    correct_reviewed: bool | None | msgspec.UnsetType = msgspec.UNSET
    cached_from: Any = None  # {run, seq, ts}: the reply was copied from the cross-run cache


class AnswerText(Answer):
    """An answer with its texts (cut to ``TEXT_LIMIT``), for the viewer."""

    model: str = ""
    prompt: Any = None
    response: str | None = None
    latency: float | None = None  # null: no reply of it was timed (copied from the cache, a Batch output)
    attempts: int = 0


def as_text(value: Any) -> str | None:
    """A JSON value as one string: a string as itself, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return _json.encode(value).decode()


class AnswerIndex:
    """A run's answers by key, brought up to date with ``refresh()`` (cheap when unchanged)."""

    def __init__(self, path: str, kind: type[Answer] = Answer) -> None:
        self.path = path
        self.kind = kind
        self.answers: dict[Key, Answer] = {}
        self.version = 0
        self._decode = msgspec.json.Decoder(kind).decode
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of what we read
        self._offset = 0

    def refresh(self) -> bool:
        """Read what was appended; True when the answers changed."""
        try:
            st = fs.stat(self.path)
        except FileNotFoundError:
            return self._reset() if self.answers else False
        if self._file != (st.st_dev, st.st_ino) or st.st_size < self._offset:
            self._reset()
            self._file = (st.st_dev, st.st_ino)
        if st.st_size == self._offset:
            return False
        start = self._offset
        with fs.open_file(self.path, "rb") as f:
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a partial last line waits for its newline
                self._add(line)
                self._offset += len(line)
        self.version += self._offset > start
        return self._offset > start

    def _add(self, line: bytes) -> None:
        try:
            answer = self._decode(line)
        except msgspec.DecodeError:
            return  # not a line the projector wrote whole; the next rebuild rewrites it
        if answer.correct_reviewed is msgspec.UNSET:
            answer.correct_reviewed = answer.correct
        if isinstance(answer, AnswerText):
            answer.response = _cut(answer.response)
            answer.prompt = _cut(as_text(answer.prompt))
        self.answers[(answer.item_id, answer.sample)] = answer

    def _reset(self) -> bool:
        self.answers, self._offset, self._file = {}, 0, None
        self.version += 1
        return True


@functools.lru_cache(maxsize=65536, typed=True)
def _normalized(value: Any) -> Any:
    return normalize(value)


def normalized(value: Any) -> Any:
    """``scoring.normalize``, remembered for hashable values (answers repeat: labels, numbers)."""
    try:
        return _normalized(value)
    except TypeError:  # a list or dict answer
        return normalize(value)


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + " …"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class Coverage:
    """How far a set of runs hold the same (item, sample) keys."""

    run_ids: tuple[str, ...]
    shared: int  # keys in every run
    total: int  # keys in any run
    left_out: tuple[int, ...]  # per run: its keys that are not in every run
    sampled: bool = False  # some key has a sample above 0: the keys are answers, not items

    @property
    def complete(self) -> bool:
        return self.shared == self.total

    def message(self) -> str:
        """The sentence both ``compare`` and the viewer print."""
        unit = "answers (item x sample)" if self.sampled else "items"
        if self.complete:
            return f"the runs share all {self.shared} {unit}"
        left = ", ".join(f"{r} {n}" for r, n in zip(self.run_ids, self.left_out) if n)
        return f"the runs share {self.shared} of {self.total} {unit}; not in every run: {left}"

    def to_json(self) -> dict[str, Any]:
        return {"shared": self.shared, "total": self.total, "complete": self.complete,
                "left_out": dict(zip(self.run_ids, self.left_out)), "message": self.message()}


def coverage(run_ids: Sequence[str], keys: Sequence[Collection[Key]]) -> Coverage:
    """The rule for runs that do not hold the same keys, in one place (see the module doc)."""
    if not keys:
        return Coverage(tuple(run_ids), 0, 0, ())
    smallest = min(keys, key=len)
    shared = sum(all(k in other for other in keys) for k in smallest)
    union: set[Key] = set()
    for k in keys:
        union.update(k)
    return Coverage(tuple(run_ids), shared, len(union), tuple(len(k) - shared for k in keys),
                    any(sample for _, sample in union))


@dataclass
class Comparison:
    run_ids: list[str]
    runs: list[dict[str, Any]]
    shared: list[Key]
    answers: list[dict[Key, Answer]] = field(repr=False)
    agreement: list[list[float | None]]
    pairs: list[dict[str, Any]]
    coverage: Coverage
    verdicts: list[dict[Key, Verdict]] = field(default_factory=list, repr=False)

    def same(self, key: Key) -> bool:
        first = normalized(self.answers[0][key].parsed)
        return all(normalized(a[key].parsed) == first for a in self.answers[1:])

    def differences(self) -> list[dict[str, Any]]:
        return [self._item(key) for key in self.shared if not self.same(key)]

    def items(self) -> list[dict[str, Any]]:
        return [self._item(key) for key in self.shared]

    def _item(self, key: Key) -> dict[str, Any]:
        first = self.answers[0][key]
        item = {"item_id": key[0], "sample": key[1], "expected": first.expected,
                "answers": {r: a[key].parsed for r, a in zip(self.run_ids, self.answers)},
                "correct": {r: a[key].correct for r, a in zip(self.run_ids, self.answers)},
                "correct_reviewed": {r: reviewed(a[key], v, key) for r, a, v in zip(self.run_ids, self.answers, self._verdicts())},
                "cached": {r: a[key].cached_from for r, a in zip(self.run_ids, self.answers)},
                "agree": self.same(key)}
        found = {r: msgspec.to_builtins(v[key]) for r, v in zip(self.run_ids, self._verdicts()) if key in v}
        if found:
            item["reviews"] = found
        return item

    def _verdicts(self) -> list[dict[Key, Verdict]]:
        return self.verdicts or [{} for _ in self.run_ids]

    def to_json(self, only_diff: bool = False) -> dict[str, Any]:
        data = {"runs": self.runs, "shared": len(self.shared), "coverage": self.coverage.to_json(),
                "agreement": self.agreement, "pairs": self.pairs}
        if only_diff:
            data["differences"] = self.differences()
        return data


def compare_runs(runs: Sequence[RunPaths]) -> Comparison:
    """Compare two or more runs over the keys they all share."""
    run_ids = [p.run_id for p in runs]
    if len(runs) < 2:
        raise InputError("name at least two runs to compare")
    if len(set(run_ids)) != len(run_ids):
        raise InputError(f"a run is named twice: {' '.join(run_ids)}")
    for p in runs:  # a sharded run's rows are its last merge's: never the run while its shards hold more
        require_merged(p)
    answers = [_load(p) for p in runs]
    cover = coverage(run_ids, [a.keys() for a in answers])
    if not cover.shared:
        raise InputError(f"runs {', '.join(run_ids)}: {cover.message()}: nothing to compare")
    shared = _shared(answers)
    found = verdicts(runs)
    rows = [_run_row(p, a, shared, v) for p, a, v in zip(runs, answers, found)]
    agreement = [[_agreement(a, b, shared) for b in answers] for a in answers]
    pairs = [_pair(run_ids[i], run_ids[j], answers[i], answers[j], shared, (found[i], found[j]))
             for i in range(len(runs)) for j in range(i + 1, len(runs))]
    return Comparison(run_ids, rows, shared, answers, agreement, pairs, cover, found)


def reviewed(answer: Answer, found: dict[Key, Verdict], key: Key) -> bool | None:
    """An answer's ``correct_reviewed``, with a verdict carried from another run if one applies."""
    own = answer.correct if answer.correct_reviewed is msgspec.UNSET else answer.correct_reviewed
    verdict = found.get(key)
    return own if verdict is None else verdict.value(own)  # type: ignore[return-value]


def _load(paths: RunPaths) -> dict[Key, Answer]:
    index = AnswerIndex(paths.responses)
    index.refresh()
    return index.answers


def _shared(answers: Sequence[dict[Key, Answer]]) -> list[Key]:
    """Keys in every run, in natural item order ("q2" before "q10"), then by sample."""
    rest = [a.keys() for a in answers[1:]]
    return sorted((key for key in answers[0] if all(key in r for r in rest)), key=key_order)


def key_order(key: Key) -> tuple:
    """Sort key of an (item_id, sample): digit runs in the id compare as numbers."""
    parts = re.split(r"(\d+)", key[0])
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in parts), key[1]


def _run_row(paths: RunPaths, answers: dict[Key, Answer], shared: list[Key], found: dict[Key, Verdict]) -> dict[str, Any]:
    scored = [answers[k].correct for k in shared if answers[k].correct is not None]
    right = sum(scored)
    judged = [c for k in shared if (c := reviewed(answers[k], found, k)) is not None]
    verdicts = [found[k] for k in shared if k in found]
    return {"run_id": paths.run_id, "model": _model(paths), "finished": len(answers), "left_out": len(answers) - len(shared),
            "scored": len(scored), "correct": right, "accuracy": right / len(scored) if scored else None,
            "ci95": wilson(right, len(scored)),
            "scored_reviewed": len(judged), "correct_reviewed": sum(judged),
            "accuracy_reviewed": sum(judged) / len(judged) if judged else None, "ci95_reviewed": wilson(sum(judged), len(judged)),
            "reviewed": sum(v.applied for v in verdicts), "carried": sum(v.applied and v.carried for v in verdicts),
            "stale_reviews": sum(v.stale for v in verdicts), "cached": sum(answers[k].cached_from is not None for k in shared),
            "failed": sum(answers[k].error is not None for k in shared)}


def _model(paths: RunPaths) -> str:
    from .runs import read_summary

    return str(read_summary(paths).get("model") or "")


def _agreement(a: dict[Key, Answer], b: dict[Key, Answer], shared: list[Key]) -> float:
    same = sum(normalized(a[k].parsed) == normalized(b[k].parsed) for k in shared)
    return same / len(shared)


def _pair(name_a: str, name_b: str, a: dict[Key, Answer], b: dict[Key, Answer], shared: list[Key],
          found: tuple[dict[Key, Verdict], dict[Key, Verdict]] = ({}, {})) -> dict[str, Any]:
    machine = _mcnemar([(a[k].correct, b[k].correct) for k in shared])
    by_people = _mcnemar([(reviewed(a[k], found[0], k), reviewed(b[k], found[1], k)) for k in shared])
    return {"a": name_a, "b": name_b, "agreement": _agreement(a, b, shared), **machine, "reviewed": by_people}


def _mcnemar(pairs: Iterable[tuple[bool | None, bool | None]]) -> dict[str, Any]:
    """The paired table of the keys both runs scored, and McNemar's exact test on it."""
    table = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for x, y in pairs:
        if x is not None and y is not None:
            table[(x, y)] += 1
    only_a, only_b = table[(True, False)], table[(False, True)]
    p = mcnemar_exact(only_a, only_b)
    return {"both_correct": table[(True, True)], "only_a_correct": only_a, "only_b_correct": only_b,
            "both_wrong": table[(False, False)], "p_value": p, "significant": p < 0.05}


def write_csv(comparison: Comparison, path: str, only_diff: bool = False) -> int:
    """The per-item table (every shared key, or only those that differ) as CSV; row count."""
    items = comparison.differences() if only_diff else comparison.items()
    header = ["item_id", "sample", "expected"]
    for run in comparison.run_ids:
        header += [f"{run}.parsed", f"{run}.correct", f"{run}.correct_reviewed"]
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with fs.open_file(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([*header, "agree"])
            writer.writerows(_csv_row(item, comparison.run_ids) for item in items)
        fs.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            fs.unlink(tmp)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return len(items)


def _csv_row(item: dict[str, Any], run_ids: Iterable[str]) -> list[Any]:
    row = [item["item_id"], item["sample"], as_text(item["expected"])]
    for run in run_ids:
        correct, judged = item["correct"][run], item["correct_reviewed"][run]
        row += [as_text(item["answers"][run]), "" if correct is None else str(correct).lower(),
                "" if judged is None else str(judged).lower()]
    return [*row, str(item["agree"]).lower()]
