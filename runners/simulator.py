"""The built-in OpenAI-compatible endpoint: the embedded default model, every test's double
and every benchmark's target.

Replies are a deterministic function of (seed, the last user message): the same prompt gets
the same answer, so tests can check content. If the prompt contains ``answer:`` the reply
ends with the text after it (``"... answer: B"`` -> ``"The answer is B"``), which lets
datasets with known answers score 100% on the simulator. ``accuracy`` below 1 makes it a
worse model: a prompt whose hash (seed, prompt) falls at or above ``accuracy`` in [0, 1) gets
another answer of the same kind (another letter, another number, the other of yes/no, a
word), so about that share of such questions is answered right, the same ones on every
run with the same seed (a lower accuracy adds wrong answers to those of a higher one).

Faults are drawn per request from a seeded RNG: 429 with ``Retry-After``, 500, a hang past
the client's timeout, a dropped connection and a malformed body, each with its own rate.
Every request is logged (one JSON line: time, item key if sent, outcome) so tests can count
what was sent and what was paid for. The key is the ``x-ledger-key`` header with the item
id decoded (the client percent-encodes it so that any id is a valid header value): the log
says ``café/0/0``, as the run's events name the item.

The reply logic (``answer``) knows nothing of HTTP: ``Simulator`` serves it over loopback
HTTP (``ledger simulate``, the embedded default), ``sim_transport`` calls it in-process.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError

from .sim_batch import BatchSim

__all__ = ["SimConfig", "Simulator", "Answer", "RESET", "new_state", "answer", "build_app", "reply_text", "wrong_answer", "ledger_key"]

_json = msgspec.json.Encoder()

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


class SimConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Knobs of the simulator. Rates are probabilities per request, in [0, 1]."""

    model: str = "sim-1"
    seed: int = 0
    latency: float = 0.0  # seconds, mean
    latency_jitter: float = 0.0  # seconds, uniform +/- around the mean
    rate_429: float = 0.0
    retry_after: float = 0.05  # seconds sent in Retry-After with each 429
    rate_500: float = 0.0
    rate_hang: float = 0.0
    hang_seconds: float = 30.0
    rate_reset: float = 0.0
    rate_malformed: float = 0.0
    request_log: str = ""  # path of the JSONL request log; "" keeps none
    down: bool = False  # every request gets a 503 (an outage)
    capacity_rps: float = 0.0  # > 0: a real rate limit (token bucket, 0.1 s burst); over it, 429
    accuracy: float = 1.0  # share of "answer: X" prompts answered X; the others get another answer
    # The Batch API (sim_batch.py): the "24 h" window and a batch's run, in seconds; faults for
    # the first N batches created.
    batch_window: float = 10.0
    batch_seconds: float = 0.0
    batch_fail_validation: int = 0
    batch_expire: int = 0
    batch_error_lines: int = 0
    batch_create_500: int = 0
    batch_torn_lines: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy <= 1.0:  # NaN fails too
            raise InputError(f"simulator accuracy {self.accuracy}: must be a share in [0, 1], e.g. 0.7")
        if not self.batch_window > 0 or not 0 <= self.batch_seconds < float("inf"):  # NaN fails too
            raise InputError(f"simulator batch_window {self.batch_window} / batch_seconds {self.batch_seconds}: "
                             "the window must be > 0 seconds, a batch's run >= 0")
        for name in ("batch_fail_validation", "batch_expire", "batch_error_lines", "batch_create_500", "batch_torn_lines"):
            if getattr(self, name) < 0:
                raise InputError(f"simulator {name} {getattr(self, name)}: a count of batches, >= 0")


def reply_text(prompt: str, seed: int = 0, accuracy: float = 1.0) -> str:
    """The deterministic reply to a prompt."""
    if "answer:" in prompt:
        right = prompt.rsplit("answer:", 1)[1].strip()
        if accuracy < 1.0:
            digest = hashlib.sha256(f"{seed}:accuracy:{prompt}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 >= accuracy:
                return "The answer is " + wrong_answer(right, digest[8])
        return "The answer is " + right
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return " ".join(WORDS[b % len(WORDS)] for b in digest[: 3 + digest[0] % 6])


_FLIPS = {"yes": "no", "no": "yes", "true": "false", "false": "true"}


def wrong_answer(right: str, pick: int) -> str:
    """An answer of the same kind as ``right`` that no parser scores as it: another choice
    letter (A-D, or A-J past D), another number, the other of yes/no, else a word."""
    letters = "ABCD" if len(right) == 1 and right.upper() in "ABCD" else "ABCDEFGHIJ"
    if len(right) == 1 and right.upper() in letters:
        i = letters.index(right.upper())
        return letters[(i + 1 + pick % (len(letters) - 1)) % len(letters)]
    if right.casefold() in _FLIPS:
        return _FLIPS[right.casefold()]
    try:
        number = float(right.replace(",", ""))
    except ValueError:
        word = WORDS[pick % len(WORDS)].capitalize()
        return word if word.casefold() != right.casefold() else WORDS[(pick + 1) % len(WORDS)].capitalize()
    shifted = number + 1 + pick % 9
    return str(int(shifted)) if shifted.is_integer() else f"{shifted:g}"


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


@dataclass
class _State:
    config: SimConfig
    rng: random.Random
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    log_file: Any = None
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    tokens: float = 0.0
    refilled: float = 0.0


class Answer(NamedTuple):
    """The simulator's answer to one request, before any transport carries it."""

    status: int  # RESET: the connection drops mid-body
    body: bytes
    headers: dict[str, str]


RESET = 0
_ERRORS = {"down": (503, {"error": {"message": "service unavailable"}}),
           "500": (500, {"error": {"message": "internal error"}})}


def new_state(config: SimConfig) -> _State:
    """A simulator's state (its RNG, counters and request log), for one app or transport."""
    state = _State(config=config, rng=random.Random(config.seed))
    if config.request_log:
        state.log_file = fs.open_file(config.request_log, "a", buffering=1)
    return state


async def answer(state: _State, body: dict[str, Any], key: str) -> Answer:
    """The reply logic, shared by the HTTP app and the in-process transport (sim_transport):
    draw the outcome, log it, wait the latency, answer. ``key`` is the decoded item key."""
    state.requests += 1
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        return await _answer(state, body, key)
    finally:
        state.in_flight -= 1


async def _answer(state: _State, body: dict[str, Any], key: str) -> Answer:
    config = state.config
    outcome = "down" if config.down else _over_capacity(state) or _draw_fault(state)
    _log(state, key, outcome)
    if config.latency or config.latency_jitter:
        await asyncio.sleep(max(0.0, config.latency + state.rng.uniform(-1, 1) * config.latency_jitter))
    match outcome:
        case "down" | "500":
            status, error = _ERRORS[outcome]
            return Answer(status, _json.encode(error), {})
        case "429" | "capacity":
            wait = config.retry_after if outcome == "429" else (1.0 - state.tokens) / config.capacity_rps
            error = {"error": {"message": "rate limited", "type": "rate_limit"}}
            return Answer(429, _json.encode(error), {"retry-after": f"{round(wait, 3):g}"})
        case "hang":
            await asyncio.sleep(config.hang_seconds)
        case "reset":
            return Answer(RESET, b'{"choices": [', {})
        case "malformed":
            return Answer(200, b'{"choices": [ {"message": ', {})
    return Answer(200, _json.encode(_completion(config, body)), {})


def build_app(config: SimConfig) -> tuple[Starlette, _State]:
    state = new_state(config)

    async def chat(request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        reply = await answer(state, body, ledger_key(request.headers.get("x-ledger-key", "")))
        if reply.status == RESET:
            return _ResetResponse()
        return Response(reply.body, status_code=reply.status, headers=reply.headers, media_type="application/json")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": state.config.model, "object": "model", "owned_by": "ledger"}]})

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        *BatchSim(config).routes(),  # /v1/files, /v1/batches
    ]
    return Starlette(routes=routes), state


def ledger_key(header: str) -> str:
    """``ID/SAMPLE/TURN`` from the header's ``QUOTED-ID/SAMPLE/TURN`` (any id, ``/`` included)."""
    parts = header.rsplit("/", 2)
    if len(parts) != 3:
        return header
    return f"{unquote(parts[0])}/{parts[1]}/{parts[2]}"


def _over_capacity(state: _State) -> str:
    """A token bucket like a provider's: refills at capacity_rps, holds 0.1 s worth."""
    rate = state.config.capacity_rps
    if rate <= 0:
        return ""
    now = time.monotonic()
    burst = max(1.0, rate * 0.1)
    state.tokens = min(burst, state.tokens + (now - state.refilled) * rate) if state.refilled else burst
    state.refilled = now
    if state.tokens >= 1.0:
        state.tokens -= 1.0
        return ""
    return "capacity"


def _draw_fault(state: _State) -> str:
    config, roll = state.config, state.rng.random()
    for name, rate in (
        ("429", config.rate_429),
        ("500", config.rate_500),
        ("hang", config.rate_hang),
        ("reset", config.rate_reset),
        ("malformed", config.rate_malformed),
    ):
        if roll < rate:
            return name
        roll -= rate
    return "ok"


def _completion(config: SimConfig, body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages") or []
    prompt = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    text = reply_text(str(prompt), config.seed, config.accuracy)
    prompt_tokens = sum(_tokens(str(m.get("content") or "")) for m in messages)
    completion_tokens = _tokens(text)
    return {
        "id": "chatcmpl-" + hashlib.sha1(f"{prompt}".encode()).hexdigest()[:12],
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model") or config.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _log(state: _State, key: str, outcome: str) -> None:
    if state.log_file is not None:
        line = _json.encode({"t": time.time(), "key": key, "outcome": outcome})
        with state.log_lock:
            state.log_file.write(line.decode() + "\n")


class _ResetConnection(Exception):
    """Raised after the reply has started: uvicorn can only drop the connection."""


class _ResetResponse(Response):
    """Headers and half a body, then the connection drops (a reset mid-body)."""

    def __init__(self) -> None:
        super().__init__(b"", media_type="application/json")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"400")]})
        await send({"type": "http.response.body", "body": b'{"choices": [', "more_body": True})
        raise _ResetConnection()


class Simulator:
    """The app served by uvicorn on loopback in a background thread (port 0 = any free)."""

    def __init__(self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = f"{host}:{port}"
        self.config = config or SimConfig()
        self.app, self.state = build_app(self.config)
        uv_config = uvicorn.Config(
            self.app, host=host, port=port, log_level="critical", access_log=False,
            log_config=None, lifespan="off", timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._server.run, name="ledger-simulator", daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "Simulator":
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise InputError(f"simulator: cannot listen on {self._address} (port in use?)")
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(5)
        if self.state.log_file is not None:
            self.state.log_file.close()

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
