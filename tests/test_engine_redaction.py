"""Redaction of the API key in every form a server can send it back (runners/redaction.py),
and the x-ledger-key header for any item id."""

from __future__ import annotations

import base64
import json
import random
from urllib.parse import quote

import pytest

from llm_ledger.runners.engine import request_key
from llm_ledger.runners.redaction import Redactor
from llm_ledger.runners.simulator import ledger_key

KEYS = ["sk-live/ab+CD/9f8e7d6c5b4a3210", "sk-proj-abcdefghijklmnop", "tok with space/é", "k\"ey\\with/escapes"]


def _forms(key: str) -> list[str]:
    forms = [key, key.replace("/", "\\/"), json.dumps(key)[1:-1], json.dumps(key, ensure_ascii=True)[1:-1],
             "".join(f"\\u{ord(c):04x}" for c in key), "".join(f"\\u{ord(c):04X}" for c in key),
             quote(key, safe=""), quote(key), quote(key, safe="").replace("%2F", "%2f"), quote(key).replace("%20", "+")]
    return forms


@pytest.mark.parametrize("key", KEYS)
def test_every_escaped_form_is_redacted_in_text_and_bytes(key):
    red = Redactor((key,), bearer=False)
    for form in _forms(key):
        text = f"before {form} after"
        assert red.text(text) == "before [redacted] after", form
        assert red.bytes(text.encode()) == b"before [redacted] after", form


@pytest.mark.parametrize("key", KEYS)
def test_base64_at_every_alignment_and_in_both_alphabets(key):
    red = Redactor((key,), bearer=False)
    rng = random.Random(7)
    for shift in range(6):
        for tail in range(4):
            whole = bytes(rng.randrange(256) for _ in range(shift)) + key.encode() + b"!" * tail
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                encoded = encode(whole).decode()
                out = red.text(f"x {encoded} y")
                assert "[redacted]" in out, (shift, tail, encoded)
                assert all(key.encode() not in _decode_any(part) for part in out.split()), out


def _decode_any(text: str) -> bytes:
    out = b""
    for offset in range(4):
        chunk = text[offset:].rstrip("=")
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                out += decode(chunk)
            except ValueError:
                pass
    return out


def test_decoded_json_is_redacted_string_by_string_and_stays_valid():
    key = KEYS[0]
    red = Redactor((key,), bearer=False)
    body = json.dumps({"a": [f"k={key}", {key: 1}], "b": 2}).replace("/", "\\/").encode()
    assert key.encode() not in body  # PHP escaping hides it from a bytes search ...
    value = red.value(json.loads(red.bytes(body)))
    assert value == {"a": ["k=[redacted]", {"[redacted]": 1}], "b": 2}  # ... not from the decoded pass
    clean = {"a": ["nothing here"], "n": 1}
    assert red.value(clean) is clean  # no copy when nothing is found


def test_bearer_tokens_are_cut_in_messages_but_never_past_a_json_string():
    red = Redactor(("sk-abcdefgh",))
    assert red.text("header was Bearer xyz123") == "header was [redacted]"
    body = b'{"m": "header was Bearer xyz123"}'
    assert json.loads(red.bytes(body)) == {"m": "header was [redacted]"}
    assert Redactor(("sk-abcdefgh",), bearer=False).text("use Bearer <token>") == "use Bearer <token>"


def test_placeholder_or_no_keys_change_nothing():
    assert Redactor(("",), bearer=False).text("EMPTY answer 50% \\u0041") == "EMPTY answer 50% \\u0041"
    assert Redactor(("abc",), bearer=False).text("abc") == "abc"  # too short to be a key


@pytest.mark.parametrize("item_id", ["café", "東京", "🙂", "a b", "a/b/0/0", "tab\there", "x" * 200, "%41", "q1"])
def test_the_request_key_header_is_ascii_and_names_the_item(item_id):
    header = request_key(item_id, 3, 1)
    header.encode("ascii")
    assert "\t" not in header and " " not in header
    assert ledger_key(header) == f"{item_id}/3/1"
    assert request_key("q1", 0, 0) == "q1/0/0"  # plain ids read as before


def _completion_bytes(text: str, escape) -> bytes:
    body = {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "x": text}
    return escape(body)


ESCAPES = {
    "plain": lambda v: json.dumps(v, ensure_ascii=False).encode(),
    "ascii": lambda v: json.dumps(v).encode(),
    "php": lambda v: json.dumps(v).replace("/", "\\/").encode(),
}


@pytest.mark.parametrize("escape", sorted(ESCAPES))
@pytest.mark.parametrize("key", KEYS)
def test_a_reply_never_keeps_the_key_whatever_the_json_escaping(key, escape):
    """Through the client's own decode path (the pre-check on the bytes decides whether the
    decoded strings are walked: it must never skip a body that needs it)."""
    from llm_ledger.runners.completion import decode_reply as _reply

    red = Redactor((key,), bearer=False)
    texts = [f"see {form} here" for form in _forms(key)]
    for shift in range(3):
        whole = b"ab"[:shift] + key.encode() + b"?"
        texts += [f"b64 {base64.b64encode(whole).decode()}", f"b64 {base64.urlsafe_b64encode(whole).decode()}"]
    for text in texts:
        reply = _reply(_completion_bytes(text, ESCAPES[escape]), 0.0, red)
        stored = json.dumps(reply.raw, ensure_ascii=False) + reply.text
        assert "[redacted]" in reply.text and key not in stored, (text, reply.text)
        assert not any(key.encode() in _decode_any(word) for word in reply.text.split()), reply.text
