"""Parsers: what a reply means. Pure functions from text to a value (or an error).

Spec strings (``--parser``): ``text``, ``regex:PATTERN`` (group 1 if any, else the match),
``json`` or ``json:field.path``, ``choice`` (a letter A-J, robust to "The answer is (B)"),
``number`` (the last number, commas and units stripped), ``yesno`` (the last yes/no or
true/false, as a boolean), ``module:function`` (user code
returning the value; raising marks the parse failed). Each parser has a version string that
goes into the ``parsed`` event, so a later change of a parser is visible in the log.

Adding a built-in kind: its function here and one line in ``PARSERS`` (name, how it takes
its argument, its usage for the error message). Nothing else names the kinds.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from llm_ledger.ledger.errors import InputError

__all__ = ["Parser", "ParseResult", "Kind", "PARSERS", "make_parser"]


class ParseResult(NamedTuple):
    ok: bool
    value: Any
    error: str | None


class Parser(NamedTuple):
    spec: str
    version: str
    fn: Callable[[str], Any]

    def __call__(self, text: str) -> ParseResult:
        try:
            return ParseResult(True, self.fn(text), None)
        except Exception as exc:  # a parser's failure is data (parsed ok=False), never a crash
            return ParseResult(False, None, f"{type(exc).__name__}: {exc}")


class NoMatch(ValueError):
    pass


def _text(text: str) -> str:
    return text.strip()


class Kind(NamedTuple):
    """A built-in parser kind: ``make`` compiles the spec's argument (the text after the
    first ``:``, ``""`` when none) into the parse function, raising InputError when it is
    bad. ``arg``: ``"none"`` (the kind takes no argument) or ``"optional"``.
    ``version`` goes into every ``parsed`` event: bump it when the kind's output changes."""

    make: Callable[[str], Callable[[str], Any]]
    arg: str
    usage: str
    version: str = "1"


def make_parser(spec: str) -> Parser:
    """Compile a parser spec; a bad spec is an InputError before anything is sent. A
    built-in kind is looked up in ``PARSERS``; anything else shaped ``module:function`` is
    user code (so ``text:foo`` is the function ``foo`` of a module named ``text``)."""
    name, _, arg = spec.partition(":")
    kind = PARSERS.get(name)
    if kind is not None and _takes(kind, arg):
        return Parser(spec, kind.version, kind.make(arg))
    if arg and re.fullmatch(r"[\w.]+", name) and re.fullmatch(r"\w+", arg):
        return Parser(spec, "1", _user(name, arg))
    kinds = ", ".join(k.usage for k in PARSERS.values())
    raise InputError(f"--parser {spec!r}: use {kinds} or module:function")


def _takes(kind: Kind, arg: str) -> bool:
    """Whether the spec's argument fits the kind: ``choice:x`` is no choice (it may be a
    user's module ``choice``), while ``regex`` alone and ``json`` alone are."""
    return kind.arg == "optional" or not arg


def _regex(pattern: str) -> Callable[[str], Any]:
    if not pattern:  # it would match every reply at its start: every answer "", unsaid
        raise InputError("--parser regex: needs a pattern, e.g. 'regex:answer is (.+)$' (the first group is the answer)")
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise InputError(f"--parser regex:{pattern}: {exc}") from exc

    def parse(text: str) -> str:
        match = compiled.search(text)
        if match is None:
            raise NoMatch(f"no match for {pattern!r}")
        return (match.group(1) if compiled.groups else match.group(0)).strip()

    return parse


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json(path: str) -> Callable[[str], Any]:
    keys = [k for k in path.split(".") if k]

    def parse(text: str) -> Any:
        fenced = _FENCE.search(text)
        body = fenced.group(1) if fenced else text[text.find("{") :] if "{" in text else text
        value = json.JSONDecoder().raw_decode(body.strip())[0]
        for key in keys:
            value = value[int(key)] if isinstance(value, list) else value[key]
        return value

    return parse


# Most specific first. A letter followed by a lower-case word is prose, not a choice: the
# article in "the answer is a tricky one", or "A cat", "I am sure".
_CHOICE_PATTERNS = [
    re.compile(r"(?i:answer\s*(?:is|:)?\s*\(?\b([A-J])\b\)?)(?!\s+[a-z])"),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"^\s*([A-J])[\s.):]*$", re.MULTILINE),
    re.compile(r"\b([A-J])\b(?!\s+[a-z])"),
]


def _choice(text: str) -> str:
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    raise NoMatch("no choice letter A-J")


# A minus sign only where it cannot be a hyphen or a range dash ("3-5", "2024-01-15").
_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _number(text: str) -> int | float:
    found = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3})", "", text))
    if not found:
        raise NoMatch("no number")
    value = float(found[-1])
    return int(value) if value.is_integer() and "." not in found[-1] and "e" not in found[-1].lower() else value


# yes/no, true/false as whole words; the last one wins ("No, wait... yes." is a yes). Not
# "y"/"n" alone: a lone letter is as likely a variable or a choice as an answer.
_YESNO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)


def _yesno(text: str) -> bool:
    found = _YESNO.findall(text)
    if not found:
        raise NoMatch("no yes/no (or true/false)")
    return found[-1].lower() in ("yes", "true")


def _user(module: str, name: str) -> Callable[[str], Any]:
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"--parser {module}:{name}: {exc}") from exc
    if not callable(fn):
        raise InputError(f"--parser {module}:{name}: not callable")
    return fn


# The built-in kinds, by the name a spec starts with. Adding a kind is one function above
# and one line here (its usage is then in --parser's error message too).
PARSERS: dict[str, Kind] = {
    "text": Kind(lambda _arg: _text, "none", "text"),
    "regex": Kind(_regex, "optional", "regex:PATTERN"),
    "json": Kind(_json, "optional", "json[:field]"),
    "choice": Kind(lambda _arg: _choice, "none", "choice"),
    "number": Kind(lambda _arg: _number, "none", "number"),
    "yesno": Kind(lambda _arg: _yesno, "none", "yesno"),
}
