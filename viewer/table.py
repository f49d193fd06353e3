"""The viewer's item table: several runs side by side, their outcome categories, filters.

A row is one (item, sample) of the union of the runs' keys, in natural item order. On the
keys every run holds (``compare.coverage``'s rule), each row falls into the categories a
person compares by (``Row.categories``):

    only<i>    run i is right and every other run is wrong (two runs: "only A right", "only B right")
    allwrong   every run is wrong ("both wrong")
    differ     the runs' parsed answers are not all the same after ``scoring.normalize``
               (two runs: "all differ"; the old "disagreements")
    alldiffer  three runs or more: every run gave a different answer
    wrong      wrong in any run (any key, shared or not)
    toreview   the review queue: a run's reply failed to parse (a reply with no parsed value
               and a parse error) or the runs' parsed answers differ, and one of those answers
               (the unparsed replies; the parsed ones when they differ) still has no verdict in
               effect (its run's own review, or one carried for the same reply)

``Table.view`` applies the search and the metadata filters, counts each category among
what remains (the numbers on the filter buttons), then keeps the one category asked for and
sorts. Search: a case-insensitive substring of the item id, expected answer, prompt,
responses, answers, errors and metadata values; as a whole token (``w17`` but not ``w170``)
when ``word`` is set or the query is in double quotes.
"""

from __future__ import annotations

import re
import threading

import msgspec
from dataclasses import dataclass, field
from typing import Any, Callable

from llm_ledger.projections.charts import accuracy
from llm_ledger.projections.compare import AnswerIndex, AnswerText, Coverage, as_text, coverage, key_order, normalized, reviewed
from llm_ledger.projections.reviews import Verdict

from .metadata import fields_of

_json = msgspec.json.Encoder(order="deterministic")

__all__ = ["Row", "Table", "Query", "CATEGORIES"]

Key = tuple[str, int]
CATEGORIES = ("allwrong", "differ", "alldiffer", "wrong", "toreview")  # plus only0, only1, ... per run


@dataclass
class Row:
    key: Key
    answers: list[AnswerText | None]
    metadata: dict[str, str] = field(default_factory=dict)
    agree: bool | None = None  # None: not in every run (the rule of ``compare.coverage``), or one run alone
    categories: frozenset[str] = frozenset()
    verdicts: list[Verdict | None] = field(default_factory=list)  # per run: the review bearing on its answer

    @property
    def expected(self) -> Any:
        return next((a.expected for a in self.answers if a is not None), None)

    @property
    def prompt(self) -> str | None:
        return next((as_text(a.prompt) for a in self.answers if a is not None and a.prompt is not None), None)

    def texts(self) -> list[str]:
        texts = [self.key[0], as_text(self.expected), self.prompt, *self.metadata.values()]
        for a in self.answers:
            if a is not None:
                texts += [a.response, as_text(a.parsed), a.error]
        return [t.casefold() for t in texts if t]


def _parse_failed(a: AnswerText | None) -> bool:
    """A reply came and the parser found no value in it (a failure without a reply is not
    something a person can judge)."""
    return a is not None and a.response is not None and a.parsed is None and a.error is not None


def _to_review(answers: list[AnswerText | None], verdicts: list[Verdict | None]) -> bool:
    """In the review queue: an answer that needs a person's look has no verdict yet. Those are
    the replies that failed to parse, and, when the parsed answers differ, every parsed one."""
    failed = [i for i, a in enumerate(answers) if _parse_failed(a)]
    parsed = [i for i, a in enumerate(answers) if a is not None and a.response is not None and i not in failed]
    differ = len({_json.encode(normalized(answers[i].parsed)) for i in parsed}) > 1  # type: ignore[union-attr]
    look = failed + (parsed if differ else [])
    return any(verdicts[i] is None or not verdicts[i].applied for i in look)  # type: ignore[union-attr]


def _categories(answers: list[AnswerText | None], verdicts: list[Verdict | None] | None = None) -> tuple[bool | None, frozenset[str]]:
    verdicts = verdicts or [None] * len(answers)
    found = {"wrong"} if any(a is not None and a.correct is False for a in answers) else set()
    if len(answers) < 2 or any(a is None for a in answers):
        if _to_review(answers, verdicts):
            found.add("toreview")
        return None, frozenset(found)
    parsed = [normalized(a.parsed) for a in answers]  # type: ignore[union-attr]
    agree = all(p == parsed[0] for p in parsed[1:])
    if not agree:
        found.add("differ")
        if len(answers) > 2 and all(parsed[i] != parsed[j] for i in range(len(parsed)) for j in range(i)):
            found.add("alldiffer")
    correct = [a.correct for a in answers]  # type: ignore[union-attr]
    if all(c is False for c in correct):
        found.add("allwrong")
    right = [i for i, c in enumerate(correct) if c is True]
    if len(right) == 1 and all(c is False for i, c in enumerate(correct) if i != right[0]):
        found.add(f"only{right[0]}")
    if _to_review(answers, verdicts):
        found.add("toreview")
    return agree, frozenset(found)


@dataclass(frozen=True)
class Query:
    """What the page asks for; every field is a URL parameter (see app.py)."""

    q: str = ""
    word: bool = False
    show: str = ""  # one category, "" for all
    meta: tuple[tuple[str, str], ...] = ()  # (field, value) pairs, all must hold
    sort: str = "item"
    desc: bool = False


def _matcher(q: str, word: bool) -> Callable[[Row], bool] | None:
    needle = q.strip()
    if len(needle) >= 2 and needle[0] == needle[-1] == '"':
        needle, word = needle[1:-1], True
    needle = needle.casefold()
    if not needle:
        return None
    if word:
        pattern = re.compile(r"(?<!\w)" + re.escape(needle) + r"(?!\w)")
        return lambda row: any(pattern.search(t) for t in row.texts())
    return lambda row: any(needle in t for t in row.texts())


def _sort_key(sort: str, n_runs: int):
    match = re.fullmatch(r"(parsed|correct)(\d+)", sort)
    if match and int(match[2]) < n_runs:
        i = int(match[2])
        if match[1] == "parsed":
            return lambda r: (r.answers[i] is None, str(as_text(r.answers[i].parsed)) if r.answers[i] else "")
        return lambda r: {False: 0, True: 1, None: 2}[r.answers[i].correct if r.answers[i] else None]
    if sort.startswith("m."):
        name = sort[2:]
        return lambda r: (name not in r.metadata, key_order((r.metadata.get(name, ""), 0)))
    if sort == "expected":
        return lambda r: (r.expected is None, str(as_text(r.expected)))
    if sort == "prompt":
        return lambda r: (r.prompt is None, r.prompt or "")
    if sort == "agree":
        return lambda r: {False: 0, True: 1, None: 2}[r.agree]
    if sort == "sample":
        return lambda r: r.key[1]
    return None  # item order: the table's own


class Table:
    """The items of several runs side by side (union of their keys), in natural item order;
    ``coverage`` says how many of them every run holds (the banner, and what compare uses)."""

    def __init__(self, indexes: list[AnswerIndex], names: list[str], metadata: Callable[[Key], dict[str, str]],
                 notes: list[str] | None = None, verdicts: list[dict[Key, Verdict]] | None = None) -> None:
        self.versions = [i.version for i in indexes]
        self.stamp: tuple = ()  # the reviews it was built with (app.py)
        self.verdicts = verdicts or [{} for _ in indexes]
        self.n_runs = len(indexes)
        self.coverage: Coverage = coverage(names, [i.answers.keys() for i in indexes])
        keys: dict[Key, None] = {}
        for index in indexes:
            keys.update(dict.fromkeys(index.answers))
        self.rows = [self._row(k, indexes, metadata(k), self.verdicts) for k in sorted(keys, key=key_order)]
        self._by_key = {r.key: r for r in self.rows}
        self.fields = fields_of([r.metadata for r in self.rows])
        self.notes = notes or []  # why a run's items have no metadata
        self.disagreements = sum(r.agree is False for r in self.rows)
        self.stats = [{"finished": len(i.answers), **accuracy(a.correct for a in i.answers.values()),
                       "reviewed": self._reviewed_stats(i, v)} for i, v in zip(indexes, self.verdicts)]
        self.values = {f: _value_counts(self.rows, f) for f in self.fields}
        self._views: dict[Query, tuple[list[Row], dict[str, int]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _row(key: Key, indexes: list[AnswerIndex], metadata: dict[str, str], verdicts: list[dict[Key, Verdict]]) -> Row:
        answers: list[AnswerText | None] = [i.answers.get(key) for i in indexes]  # type: ignore[misc]
        found = [v.get(key) if a is not None else None for a, v in zip(answers, verdicts)]
        agree, categories = _categories(answers, found)
        return Row(key, answers, metadata, agree, categories, found)

    @staticmethod
    def _reviewed_stats(index: AnswerIndex, found: dict[Key, Verdict]) -> dict[str, Any]:
        """The run's accuracy with people's verdicts where given, and how many there are."""
        applied = [v for k, v in found.items() if k in index.answers]
        return {**accuracy(reviewed(a, found, k) for k, a in index.answers.items()),
                "verdicts": sum(v.applied for v in applied), "carried": sum(v.applied and v.carried for v in applied),
                "stale": sum(v.stale for v in applied)}

    def row(self, key: Key) -> Row | None:
        return self._by_key.get(key)

    def category_names(self) -> list[str]:
        names = [f"only{i}" for i in range(self.n_runs)] + ["allwrong", "differ"] if self.n_runs > 1 else []
        return names + (["alldiffer"] if self.n_runs > 2 else []) + ["wrong", "toreview"]

    def view(self, query: Query) -> tuple[list[Row], dict[str, int]]:
        """The rows that pass the query, in its order, and the count of each category among
        the rows that pass its search and metadata filters (cached per query)."""
        with self._lock:
            found = self._views.get(query)
            if found is None:
                found = self._views[query] = self._view(query)
                if len(self._views) > 32:
                    self._views.pop(next(iter(self._views)))
            return found

    def _view(self, query: Query) -> tuple[list[Row], dict[str, int]]:
        match = _matcher(query.q, query.word)
        rows = [r for r in self.rows if all(r.metadata.get(f) == v for f, v in query.meta) and (match is None or match(r))]
        counts = {name: 0 for name in self.category_names()}
        for r in rows:
            for c in r.categories:
                if c in counts:
                    counts[c] += 1
        counts["all"] = len(rows)
        if query.show:
            rows = [r for r in rows if query.show in r.categories]
        key = _sort_key(query.sort, self.n_runs)
        if key is not None:
            rows.sort(key=key, reverse=query.desc)
        elif query.desc:
            rows.reverse()
        return rows, counts


def _value_counts(rows: list[Row], name: str) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for r in rows:
        value = r.metadata.get(name)
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    return sorted(counts.items(), key=lambda kv: key_order((kv[0], 0)))
