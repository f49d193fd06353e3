"""A tiny OpenAI-compatible server on loopback whose replies are broken on purpose.

The built-in simulator covers 429s, 500s, hangs, resets and one malformed body; this one
answers with what the simulator cannot: HTTP 200 replies missing fields, or with fields of
the wrong type, HTML from a proxy, an ``error`` object, a body cut short, an outage window,
a server that echoes the Authorization header into its messages. ``plan(item_id, attempt)``
says what the Nth request for an item gets ("ok" for a good reply, "hang", "rate_limited_429"
or a key of SHAPES); every request is logged as (time, x-ledger-key, attempt, shape).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["BrokenServer", "SHAPES", "good_reply"]


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
}


class BrokenServer:
    """Serve ``plan`` on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, plan: Callable[[str, int], str], *, hang: float = 0.0) -> None:
        self.plan = plan
        self.hang = hang
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
        key = request.headers.get("x-ledger-key", "")
        item = key.split("/")[0]
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
        if shape == "rate_limited_429":
            return JSONResponse({"error": {"message": "Rate limit reached", "type": "requests"}}, status_code=429,
                                headers={"retry-after": "0.1"})
        status, out = SHAPES[shape](reply, request.headers.get("authorization", ""))
        if isinstance(out, bytes):
            return Response(out, status_code=status, media_type="application/json")
        return JSONResponse(out, status_code=status)

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
