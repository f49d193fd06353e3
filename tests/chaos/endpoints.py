"""A tiny OpenAI-compatible server on loopback whose replies are broken on purpose.

The built-in simulator covers 429s, 500s, hangs, resets and one malformed body; this one
answers with what the simulator cannot: HTTP 200 replies missing fields, or with fields of
the wrong type, HTML from a proxy, an ``error`` object, a body cut short, an outage window,
a server that echoes the Authorization header into its messages -- raw, or escaped the
ways real servers escape it (PHP's ``\\/``, ``\\uXXXX``, URL-encoding, base64) --, replies
that arrive but are hostile to process (JSON nested thousands deep, token counts beyond
64 bits), and a body that trickles a byte at a time. ``plan(item_id, attempt)`` says what
the Nth request for an item gets ("ok" for a good reply, "hang", "trickle",
"rate_limited_429" or a key of SHAPES); every request is logged as (time, x-ledger-key
with the id decoded, attempt, shape). Every loop is bounded; the server listens on
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["BrokenServer", "SHAPES", "good_reply", "key_forms", "DEEP"]

DEEP = 2_500  # nesting depth of the "deep_json" reply: past every JSON decoder's recursion limit


def good_reply(prompt: str, model: str = "broken-1") -> dict[str, Any]:
    text = "The answer is " + prompt.rsplit("answer:", 1)[1].strip() if "answer:" in prompt else "ok"
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}


def _without(reply: dict, *path: str) -> dict:
    reply = json.loads(json.dumps(reply))
    target = reply
    for key in path[:-1]:
        target = target[key] if not isinstance(target, list) else target[int(key)]
    del target[path[-1]]
    return reply


def _ledger_key(header: str) -> str:
    """``ID/SAMPLE/TURN`` from the header, the id percent-decoded (it may hold ``/``)."""
    from urllib.parse import unquote

    parts = header.rsplit("/", 2)
    return f"{unquote(parts[0])}/{parts[1]}/{parts[2]}" if len(parts) == 3 else header


def _key(auth: str) -> str:
    return auth.split()[-1] if auth.split() else ""


def key_forms(key: str) -> dict[str, str]:
    """Every form in which a server may send ``key`` back (what the tests look for in every
    byte written): raw, JSON-escaped three ways, URL-encoded in both hex cases, and base64 of
    longer strings holding it at each alignment, standard and URL-safe alphabets."""
    from urllib.parse import quote

    url = quote(key, safe="")
    forms = {
        "raw": key,
        "json_slash": key.replace("/", "\\/"),
        "json_u_lower": "".join(f"\\u{ord(c):04x}" for c in key),
        "json_u_upper": "".join(f"\\u{ord(c):04X}" for c in key),
        "json_u_slash_only": key.replace("/", "\\u002f"),
        "url": url,
        "url_lower_hex": "%".join(p[:2].lower() + p[2:] if i else p for i, p in enumerate(url.split("%"))),
    }
    for prefix in ("", "u:", "x"):
        whole = (prefix + key + "!").encode()
        forms[f"base64_{len(prefix)}"] = base64.b64encode(whole).decode()
        forms[f"base64url_{len(prefix)}"] = base64.urlsafe_b64encode(whole).decode()
    return forms


def _with_content(reply: dict, text: str) -> dict:
    return {**reply, "choices": [{**reply["choices"][0], "message": {"role": "assistant", "content": text}}]}


def _php_json(value: Any) -> bytes:
    """PHP's json_encode default: ``/`` written as ``\\/``."""
    return json.dumps(value).replace("/", "\\/").encode()


def _echo_escaped(reply: dict, auth: str) -> bytes:
    """The key in the text and in a field of its own, every character \\u-escaped."""
    key = _key(auth)
    body = json.dumps({**_with_content(reply, f"you sent {key}"), "system_fingerprint": key})
    return body.replace(key, "".join(f"\\u{ord(c):04x}" for c in key)).encode()


def _echo_encoded(reply: dict, auth: str) -> dict:
    """The key URL-encoded and base64-encoded (in longer strings, at every alignment)."""
    forms = key_forms(_key(auth))
    text = " ".join(f"{name}={value}" for name, value in forms.items() if name.startswith(("url", "base64")))
    return {**_with_content(reply, text), "x_debug": {"authorization": base64.b64encode(auth.encode()).decode()}}


def _deep_json(reply: dict) -> bytes:
    return json.dumps({**reply, "x_extra": "@"}).replace('"@"', "[" * DEEP + "]" * DEEP).encode()


# shape -> (status, body maker(good reply, auth header) -> bytes | dict)
SHAPES: dict[str, Callable[[dict, str], tuple[int, Any]]] = {
    "no_choices": lambda r, a: (200, _without(r, "choices")),
    "empty_choices": lambda r, a: (200, {**r, "choices": []}),
    "no_message": lambda r, a: (200, _without(r, "choices", "0", "message")),
    "choices_an_object": lambda r, a: (200, {**r, "choices": {"0": r["choices"][0]}}),
    "choice_null": lambda r, a: (200, {**r, "choices": [None]}),
    "content_a_number": lambda r, a: (200, {**r, "choices": [{**r["choices"][0], "message": {"role": "assistant", "content": 42}}]}),
    "error_object_with_200": lambda r, a: (200, {"error": {"message": "overloaded, try later", "type": "server_error"}}),
    "html_from_a_proxy": lambda r, a: (200, b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "json_array": lambda r, a: (200, b"[1, 2, 3]"),
    "empty_body": lambda r, a: (200, b""),
    "no_usage": lambda r, a: (200, _without(r, "usage")),  # fine: usage is optional
    "content_null": lambda r, a: (200, {**r, "choices": [{**r["choices"][0], "message": {"role": "assistant", "content": None}}]}),
    "usage_not_numbers": lambda r, a: (200, {**r, "usage": {"prompt_tokens": "many", "completion_tokens": [4], "total_tokens": None}}),
    "finish_reason_a_number": lambda r, a: (200, {**r, "choices": [{**r["choices"][0], "finish_reason": 7}]}),
    "finish_reason_an_object": lambda r, a: (200, {**r, "choices": [{**r["choices"][0], "finish_reason": {"why": "stop"}}]}),
    "outage_503": lambda r, a: (503, {"error": {"message": "service unavailable"}}),
    "echo_key_401": lambda r, a: (401, {"error": {"message": f"Incorrect API key provided: {a.split()[-1]}", "code": "invalid_api_key"}}),
    "echo_key_500": lambda r, a: (500, {"error": {"message": f"upstream rejected header Authorization: {a}"}}),
    "echo_key_in_reply": lambda r, a: (200, {**r, "choices": [{**r["choices"][0], "message": {"role": "assistant", "content": f"your header was {a}"}}]}),
    "echo_key_php": lambda r, a: (200, _php_json({**_with_content(r, f"your key: {_key(a)}"), "system_fingerprint": _key(a)})),
    "echo_key_php_500": lambda r, a: (500, _php_json({"error": {"message": f"upstream rejected key {_key(a)}"}})),
    "echo_key_php_401": lambda r, a: (401, _php_json({"error": {"message": f"Incorrect API key provided: {_key(a)}"}})),
    "echo_key_unicode": lambda r, a: (200, _echo_escaped(r, a)),
    "echo_key_encoded": lambda r, a: (200, _echo_encoded(r, a)),
    "deep_json": lambda r, a: (200, _deep_json(r)),
    "huge_usage": lambda r, a: (200, {**r, "usage": {"prompt_tokens": 2**70, "completion_tokens": 3, "total_tokens": 2**70 + 3}}),
}


class BrokenServer:
    """Serve ``plan`` on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, plan: Callable[[str, int], str], *, hang: float = 0.0, trickle: float = 0.5) -> None:
        self.plan = plan
        self.hang = hang
        self.trickle = trickle  # seconds between the bytes of a "trickle" reply
        self.log: list[tuple[float, str, int, str]] = []
        self.attempts: Counter[str] = Counter()
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"]),
                                Route("/v1/models", self._models, methods=["GET"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", access_log=False,
                                log_config=None, lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "broken-1", "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        key = _ledger_key(request.headers.get("x-ledger-key", ""))
        item = key.rsplit("/", 2)[0]
        with self._lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        shape = self.plan(item, attempt)
        self.log.append((time.time(), key, attempt, shape))
        prompt = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        reply = good_reply(str(prompt), body.get("model", "broken-1"))
        if shape == "ok":
            return JSONResponse(reply)
        if shape == "hang":
            await asyncio.sleep(self.hang)
            return JSONResponse(reply)
        if shape == "trickle":
            return StreamingResponse(self._trickle(json.dumps(reply).encode()), media_type="application/json")
        if shape == "rate_limited_429":
            return JSONResponse({"error": {"message": "Rate limit reached", "type": "requests"}}, status_code=429,
                                headers={"retry-after": "0.1"})
        status, out = SHAPES[shape](reply, request.headers.get("authorization", ""))
        if isinstance(out, bytes):
            return Response(out, status_code=status, media_type="application/json")
        return JSONResponse(out, status_code=status)

    async def _trickle(self, body: bytes):
        """The body one byte every ``trickle`` seconds (at most len(body) steps)."""
        for i in range(len(body)):
            yield body[i:i + 1]
            await asyncio.sleep(self.trickle)

    def __enter__(self) -> "BrokenServer":
        self._thread.start()
        while not self._server.started:
            assert self._thread.is_alive(), "the broken server did not start"
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(5)
