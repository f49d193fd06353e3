"""Redaction of the API key in every form in which an endpoint can send it back.

A server that echoes the key (an error that quotes the ``Authorization`` header, a proxy
that reflects the request) may send it:

* raw, or as a ``Bearer`` token;
* JSON-escaped: PHP's ``json_encode`` writes ``/`` as ``\\/``, other encoders write some or
  all characters as ``\\uXXXX`` (either hex case); after decoding, those become the raw key
  again, and a reply *text* may itself hold escaped JSON (a model quoting a body);
* URL-encoded (``%2F`` / ``%2f``, ``+`` for a space);
* base64, standard or URL-safe, at any of the three alignments (the key as part of a
  longer encoded string, e.g. ``user:KEY`` in a Basic header).

One regular expression per key matches all of these: every character of the key may come
as itself, a JSON escape or a URL escape; each base64 form is matched by the part of the
encoding that depends on the key alone (the characters that mix in neighbouring bytes are
dropped at both ends). ``Redactor`` applies it to text, to raw bytes (before decoding) and
to every string of a decoded JSON value (after decoding): the second pass is what catches
escapes the first cannot see, the first is what error messages built from bytes need.
"""

from __future__ import annotations

import base64
import functools
import re
from typing import Any

__all__ = ["Redactor", "redactor", "redact", "REDACTED", "MIN_SECRET"]

REDACTED = "[redacted]"
MIN_SECRET = 4  # shorter "keys" (placeholders) would redact ordinary words
_BEARER = r"(?i:bearer)\s+\S+"
_BEARER_IN_JSON = r'(?i:bearer)\s+[^\s"\\]+'  # in raw bytes: never past the end of a JSON string
_SHORT_ESCAPES = {'"': r'\\"', "\\": r"\\\\", "/": r"\\/", "\b": r"\\b", "\f": r"\\f", "\n": r"\\n", "\r": r"\\r", "\t": r"\\t"}


def _hex(text: str) -> str:
    """A hex string matched in either case."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)


def _json_escape(c: str) -> list[str]:
    """Patterns of ``c`` written as JSON escapes (\\uXXXX, or a surrogate pair)."""
    code = ord(c)
    if code < 0x10000:
        out = [r"\\u" + _hex(f"{code:04x}")]
    else:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        out = [r"\\u" + _hex(f"{high:04x}") + r"\\u" + _hex(f"{low:04x}")]
    if c in _SHORT_ESCAPES:
        out.append(_SHORT_ESCAPES[c])
    return out


def _url_escape(c: str) -> list[str]:
    out = ["".join("%" + _hex(f"{b:02x}") for b in c.encode("utf-8"))]
    if c == " ":
        out.append(r"\+")
    return out


def _char(c: str) -> str:
    return "(?:" + "|".join([re.escape(c), *_json_escape(c), *_url_escape(c)]) + ")"


def _base64_cores(secret: bytes) -> list[str]:
    """The part of base64(prefix + secret + suffix) fixed by the secret alone, for each of the
    three alignments, in both alphabets."""
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret).decode()
        start = (shift * 8 + 5) // 6
        end = ((shift + len(secret)) * 8) // 6  # characters fully inside the secret's bits
        core = encoded[start:end]
        if len(core) >= MIN_SECRET:
            cores.append(core)
            cores.append(core.replace("+", "-").replace("/", "_"))
    return sorted(set(cores), key=len, reverse=True)


def _pattern(secret: str) -> str:
    literal = "".join(_char(c) for c in secret)
    cores = [re.escape(core) for core in _base64_cores(secret.encode("utf-8"))]
    return "|".join([literal, *cores])


class Redactor:
    """Replaces every form of the given secrets with ``[redacted]``; with ``bearer``, any
    ``Bearer`` token too (for error messages, which quote headers; not for reply content,
    where a model may legitimately write about one).

    A text is scanned with the full expression only if it could hold a match: it contains
    a secret or a base64 core as is, or an escape (``\\u``, ``%``, a short JSON escape of a
    character the secrets have). Without any of these, every form but the raw ones is
    impossible; the check is a few ``in`` tests, about twenty times cheaper than the scan."""

    def __init__(self, secrets: tuple[str, ...], bearer: bool = True) -> None:
        self.secrets = tuple(s for s in secrets if s and len(s) >= MIN_SECRET)
        parts = [_pattern(s) for s in self.secrets]
        never = "(?!)"  # matches nothing
        self._text = re.compile("|".join([*parts, _BEARER if bearer else never]))
        self._bytes = re.compile("|".join([*parts, _BEARER_IN_JSON if bearer else never]).encode("utf-8"))
        self._bearer = re.compile(_BEARER) if bearer else None
        self._bearer_bytes = re.compile(_BEARER_IN_JSON.encode()) if bearer else None
        needles = {"\\u", "%", *self.secrets} if self.secrets else set()
        for secret in self.secrets:
            needles.update(_base64_cores(secret.encode("utf-8")))
            if any(c in _SHORT_ESCAPES for c in secret):
                needles.add("\\")  # a short JSON escape (\\/, \\", ...) of one of its characters
            if " " in secret:
                needles.add("+")
        self._needles = tuple(needles)
        self._needles_bytes = tuple(n.encode("utf-8") for n in needles)
        self._idle = not self.secrets and not bearer  # nothing to look for (a local endpoint)
        # In a JSON body, any form hidden in a decoded string shows as one of these: a needle
        # as is, or a character of it escaped (\\u..., \\/ -- base64 has "/" --, or the short
        # escape of a character of the key).
        body = set(self._needles_bytes) | ({b"\\/"} if self.secrets else set())
        for secret in self.secrets:
            body.update(_SHORT_ESCAPES[c].replace("\\\\", "\\").encode() for c in secret if c in _SHORT_ESCAPES)
        self._needles_body = tuple(body)

    def text(self, text: str) -> str:
        if self._idle:
            return text
        if any(n in text for n in self._needles) or (self._bearer is not None and self._bearer.search(text)):
            return self._text.sub(REDACTED, text)
        return text

    def bytes(self, data: bytes) -> bytes:
        if self._idle:
            return data
        if any(n in data for n in self._needles_bytes) or (self._bearer_bytes is not None and self._bearer_bytes.search(data)):
            return self._bytes.sub(REDACTED.encode(), data)
        return data

    def body_may_hold(self, body: bytes) -> bool:
        """False when no string decoded from the JSON ``body`` can hold a secret in any form
        (nor, with ``bearer``, a Bearer token): a few ``in`` tests over the bytes, so that
        the string-by-string pass (``value``) runs only on the rare body that needs it."""
        if self._idle:
            return False
        return any(n in body for n in self._needles_body) or (
            self._bearer_bytes is not None and re.search(rb"(?i)bearer", body) is not None)

    def value(self, value: Any) -> Any:
        """``value`` (decoded JSON) with every string, keys included, redacted; the same
        object when nothing needed redacting (the common case costs no copy)."""
        if self._idle:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            items = [self.value(v) for v in value]
            return value if all(a is b for a, b in zip(items, value)) else items
        if isinstance(value, dict):
            pairs = [(self.value(k), self.value(v)) for k, v in value.items()]
            same = all(a is k and b is v for (a, b), (k, v) in zip(pairs, value.items()))
            return value if same else dict(pairs)
        return value


@functools.lru_cache(maxsize=16)
def redactor(secrets: tuple[str, ...], bearer: bool = True) -> Redactor:
    return Redactor(secrets, bearer)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` without the secrets in any form, nor any Bearer token."""
    return redactor(secrets).text(text)
