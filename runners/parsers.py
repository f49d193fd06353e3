"""Parsers: what a reply means. Pure functions from text to a value (or an error).

Spec strings (``--parser``): ``text``, ``regex:PATTERN`` (group 1 if any, else the match),
``json`` or ``json:field.path``, ``choice`` (a letter A-J, robust to "The answer is (B)"),
``number`` (the last number, commas and units stripped), ``module:function`` (user code
returning the value; raising marks the parse failed). Each parser has a version string that
goes into the ``parsed`` event, so a later change of a parser is visible in the log.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from llm_ledger.ledger.errors import InputError

__all__ = ["Parser", "ParseResult", "make_parser"]


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


def make_parser(spec: str) -> Parser:
    """Compile a parser spec; a bad spec is an InputError before anything is sent."""
    kind, _, arg = spec.partition(":")
    if kind == "text" and not arg:
        return Parser(spec, "1", lambda text: text.strip())
    if kind == "regex":
        return Parser(spec, "1", _regex(arg))
    if kind == "json":
        return Parser(spec, "1", _json(arg))
    if kind == "choice" and not arg:
        return Parser(spec, "1", _choice)
    if kind == "number" and not arg:
        return Parser(spec, "1", _number)
    if arg and re.fullmatch(r"[\w.]+", kind) and re.fullmatch(r"\w+", arg):
        return Parser(spec, "1", _user(kind, arg))
    raise InputError(f"--parser {spec!r}: use text, regex:PATTERN, json[:field], choice, number or module:function")


def _regex(pattern: str) -> Callable[[str], Any]:
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


def _user(module: str, name: str) -> Callable[[str], Any]:
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"--parser {module}:{name}: {exc}") from exc
    if not callable(fn):
        raise InputError(f"--parser {module}:{name}: not callable")
    return fn
