"""The cross-run cache's key: what makes two requests the same request.

The key is the SHA-256 of one canonical JSON document (msgspec, keys sorted at every level)::

    {"v": 1, "endpoint": IDENTITY, "body": BODY, "sample": N or null}

* ``endpoint`` -- who answers: for a remote endpoint, the base URL(s) without credentials
  (scheme and host lower-cased, no trailing ``/``; several ``--base-url`` serving one model are
  one identity, sorted); for the built-in simulator (embedded over HTTP or in-process: the same
  replies) ``builtin-simulator`` with the two settings that change its replies (seed, accuracy).
  The transport (http / openai SDK) is not part of it: it sends the same bytes.
* ``body`` -- the whole request body as sent: model, messages, every sampling parameter
  (``temperature``, ``max_tokens``, an item's own ``seed``, ``top_p``, ...). A float with an
  integral value at the top level is written as an integer (``temperature: 0`` and ``0.0``
  are one request to every OpenAI-compatible server).
* ``sample`` -- the sample index, only when sampling is not deterministic, so that two
  samples are two keys: when the body's ``temperature`` is absent (the endpoint's default is
  1.0 at OpenAI and at most servers) or above 0, or its ``n`` is above 1. At temperature 0
  (with ``n`` 1 or absent) every sample of a request is the same request: one key. A ``seed``
  differing per sample differs in the body already.

Changing any of these (another model, a changed ``max_tokens``, one more word in the prompt)
is another key: nothing stale can be served for it. The parts are kept (``KeyParts``) so
that ``ledger cache explain`` can say which one differs.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = ["KeyParts", "KEY_VERSION", "SIMULATOR_IDENTITY", "deterministic", "describe", "identity", "key_parts", "make_key",
           "params_of", "messages_digest"]

KEY_VERSION = 1  # part of every key: a change to what is hashed makes every earlier key a miss, never a wrong hit
SIMULATOR_IDENTITY = "builtin-simulator"
_canonical = msgspec.json.Encoder(order="sorted").encode
_sha256 = hashlib.sha256
_SIM_TRANSPORTS = ("simulator",)  # in-process transports that are the built-in simulator


class KeyParts(NamedTuple):
    """What a key was made of (``explain`` shows them)."""

    endpoint: str
    model: str
    sample: int | None  # None: deterministic, every sample is one key
    messages: Any
    params: dict[str, Any]  # the body without model and messages


def identity(config: dict[str, Any]) -> str:
    """The endpoint identity of a run's config (``RunConfig.to_dict()``, overrides applied)."""
    urls = [u for u in (config.get("base_urls") or [config.get("base_url") or ""]) if u]
    if not urls or config.get("transport") in _SIM_TRANSPORTS:
        sim = config.get("simulator") or {}
        settings = {"seed": sim.get("seed", 0), "accuracy": float(sim.get("accuracy", 1.0))}
        return f"{SIMULATOR_IDENTITY} {_canonical(settings).decode()}"
    return " ".join(sorted({_plain_url(u) for u in urls}))


def _plain_url(url: str) -> str:
    """The URL without credentials, query or fragment, scheme and host lower-cased."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def deterministic(body: dict[str, Any]) -> bool:
    """Whether every sample of this body is the same reply (see the module docstring)."""
    temperature = body.get("temperature")
    return (temperature.__class__ is int or temperature.__class__ is float) and temperature == 0 \
        and body.get("n", 1) in (None, 1)


def _normal(value: Any) -> Any:
    if value.__class__ is float and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def params_of(body: dict[str, Any]) -> dict[str, Any]:
    return {k: _normal(v) for k, v in body.items() if k not in ("model", "messages")}


def key_parts(endpoint: str, body: dict[str, Any], sample: int) -> KeyParts:
    return KeyParts(endpoint, str(body.get("model", "")), None if deterministic(body) else sample,
                    body.get("messages"), params_of(body))


def make_key(endpoint: str, body: dict[str, Any], sample: int) -> bytes:
    """The 32-byte key of one request (``body`` as sent, ``sample`` its sample index): the
    lookup every request pays for, so one pass over the body's top level, one encode, one hash."""
    normal = body
    for value in body.values():
        if value.__class__ is float:
            normal = {k: _normal(v) for k, v in body.items()}
            break
    document = {"v": KEY_VERSION, "endpoint": endpoint, "body": normal,
                "sample": None if deterministic(body) else sample}
    return _sha256(_canonical(document)).digest()


def describe(endpoint: str, body: dict[str, Any], sample: int) -> tuple[bytes, str, int, bytes, dict[str, Any]]:
    """(key, model, sample in the key or -1, messages digest, params): a store entry's parts,
    made once per logged reply when the store is rebuilt."""
    keyed = -1 if deterministic(body) else sample
    return (make_key(endpoint, body, sample), str(body.get("model", "")), keyed,
            _sha256(_canonical(body.get("messages"))).digest()[:16], params_of(body))


def messages_digest(messages: Any) -> bytes:
    """16 bytes naming the messages (``explain``: same messages or not, without storing them)."""
    return _sha256(_canonical(messages)).digest()[:16]
