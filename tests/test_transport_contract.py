"""The contract every transport keeps (runners/transport.py), run against each one in
``registry.TRANSPORTS``: the same reply, the same typed failures, the same bytes on the wire.

* Every transport, against the simulator's faults (over HTTP for a remote transport,
  in-process for the simulator transport): a reply decoded the same way, and each fault
  the same ``EndpointError`` (type, status, retryable, Retry-After), nothing of the key in
  a message.
* Every remote transport, against a recording server on loopback: the body sent is byte
  for byte ``msgspec.json.encode`` of the body (and of the ``started`` event's ``request``
  in a real run), with the auth header and the item key; ``Retry-After`` in seconds,
  milliseconds or as an HTTP-date; ``x-ratelimit-remaining-*: 0`` becomes a pause on a
  reply; a 400 is not retried; an error body echoing the key is redacted; a reply that
  trickles a byte at a time is cut at the deadline; a reply that is not a chat completion
  is ``malformed_response``; ``HTTP_PROXY`` is used and ``NO_PROXY`` honoured.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import msgspec
import pytest

from llm_ledger.ledger.errors import EndpointError
from llm_ledger.ledger.events import Started
from llm_ledger.ledger.reader import iter_events
from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.prepare import prepare
from llm_ledger.runners.registry import TRANSPORTS
from llm_ledger.runners.session import run_prepared
from llm_ledger.runners.simulator import SimConfig, Simulator
from llm_ledger.runners.transport import TransportSpec
from test_simulator import FAULTS

SECRET = "sk-test-SECRET-123456"
ALL = sorted(TRANSPORTS)
REMOTE = sorted(name for name, kind in TRANSPORTS.items() if kind.remote)
BODY = {"model": "sim-1", "messages": [{"role": "user", "content": "hi answer: ok — ünïcode"}], "temperature": 0.7}


def transport(name: str, url: str = "", knobs: dict | None = None, timeout: float = 5.0):
    return TRANSPORTS[name].make(TransportSpec(url, SECRET, (SECRET,), timeout, 4, knobs or {}))


async def send_once(name: str, url: str = "", knobs: dict | None = None, timeout: float = 5.0, body: dict = BODY):
    t = transport(name, url, knobs, timeout)
    try:
        return await t.send(body, "c%2F1/0/0", timeout)
    finally:
        await t.close()


def through(name: str, knobs: dict, timeout: float = 5.0):
    """One request through ``name`` to a simulator with ``knobs``: over HTTP if remote."""
    if not TRANSPORTS[name].remote:
        return asyncio.run(send_once(name, "", knobs, timeout))
    with Simulator(SimConfig(**knobs)) as sim:
        return asyncio.run(send_once(name, sim.base_url, None, timeout))


@pytest.mark.parametrize("name", ALL)
def test_reply(name):
    reply = through(name, {})
    assert reply.text == "The answer is ok — ünïcode" and reply.finish_reason == "stop"
    assert reply.usage["total_tokens"] == reply.usage["prompt_tokens"] + reply.usage["completion_tokens"] > 0
    assert reply.raw["choices"][0]["message"]["content"] == reply.text
    assert reply.latency >= 0 and reply.pause is None


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("knob,error_type,status,retry_after", FAULTS)
def test_faults_are_the_same_typed_errors(name, knob, error_type, status, retry_after):
    with pytest.raises(EndpointError) as info:
        through(name, knob, timeout=0.3)
    exc = info.value
    assert (exc.error_type, exc.status, exc.retryable, exc.retry_after) == (error_type, status, True, retry_after)
    assert SECRET not in exc.message and SECRET not in str(exc)


# -- a recording server: each case is a path prefix (http://host:port/CASE/v1) --------------

TRICKLE = b'{"choices": [{"message": {"content": "slow"}, "finish_reason": "stop"}]}'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        case = urlsplit(self.path).path.strip("/").split("/")[0]  # a proxy gets an absolute URL
        self.server.seen.append({"case": case, "path": self.path, "body": body, "headers": dict(self.headers.items())})
        status, headers, payload = 200, {}, None
        match case:
            case "ok" | "proxy":
                payload = {"choices": [{"message": {"role": "assistant", "content": case}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
            case "retry-ms":
                status, headers, payload = 429, {"retry-after-ms": "1500"}, {"error": {"message": "slow down"}}
            case "retry-date":
                when = email.utils.formatdate(time.time() + 30, usegmt=True)
                status, headers, payload = 503, {"retry-after": when}, {"error": {"message": "busy"}}
            case "budget":
                headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30s"}
                payload = {"choices": [{"message": {"content": "last one"}, "finish_reason": "stop"}]}
            case "bad-request":
                status, payload = 400, {"error": {"message": f"invalid model; key {SECRET} was used"}}
            case "unauthorized":
                status, payload = 401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}
            case "not-a-completion":
                payload = {"object": "list", "data": []}
            case "trickle":
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(TRICKLE)))
                self.end_headers()
                for byte in TRICKLE:  # a byte every 0.1 s: each read succeeds, the whole never comes
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)
                return
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {"content-type": "application/json", "content-length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # GET /models for a run's preflight
        data = json.dumps({"object": "list", "data": [{"id": "sim-1", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[dict] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, case: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{case}/v1"


@pytest.fixture(scope="module")
def server():
    with Recorder() as s:
        yield s
        s.shutdown()


def _fails(name: str, url: str, timeout: float = 5.0) -> EndpointError:
    with pytest.raises(EndpointError) as info:
        asyncio.run(send_once(name, url, timeout=timeout))
    assert SECRET not in info.value.message
    return info.value


@pytest.mark.parametrize("name", REMOTE)
def test_the_body_on_the_wire_is_the_logged_body(name, server):
    server.seen.clear()
    reply = asyncio.run(send_once(name, server.url("ok")))
    assert reply.text == "ok"
    (got,) = server.seen
    assert got["path"] == "/ok/v1/chat/completions"
    assert got["body"] == msgspec.json.encode(BODY)  # byte for byte
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["x-ledger-key"] == "c%2F1/0/0"
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("name", REMOTE)
def test_a_run_sends_what_its_started_events_log(name, server, tmp_path):
    dataset = tmp_path / "ds.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Q{i} \u00e9\u20ac \"quoted\" {{}}"}) + "\n" for i in range(5)))
    server.seen.clear()
    config = RunConfig(model="sim-1", base_url=server.url("ok"), transport=name, temperature=0.25, max_tokens=7,
                       api_key_env="LEDGER_CONTRACT_KEY")
    os.environ["LEDGER_CONTRACT_KEY"] = SECRET
    try:
        _, reason = run_prepared(prepare(str(dataset), config, str(tmp_path / "runs"), "r"))
    finally:
        del os.environ["LEDGER_CONTRACT_KEY"]
    assert reason == "completed"
    logged = sorted(msgspec.json.encode(e.request) for e in iter_events(str(tmp_path / "runs" / "r" / "events.log"))
                    if isinstance(e, Started))
    sent = sorted(s["body"] for s in server.seen if s["path"].endswith("/chat/completions"))
    assert len(logged) == 5 and sent == logged


@pytest.mark.parametrize("name", REMOTE)
def test_retry_after_in_milliseconds_and_as_a_date(name, server):
    exc = _fails(name, server.url("retry-ms"))
    assert (exc.error_type, exc.status, exc.retryable, exc.retry_after) == ("rate_limit", 429, True, 1.5)
    exc = _fails(name, server.url("retry-date"))
    assert (exc.error_type, exc.status, exc.retryable) == ("server_error", 503, True)
    assert 25 <= exc.retry_after <= 31


@pytest.mark.parametrize("name", REMOTE)
def test_a_used_up_budget_on_a_reply_is_a_pause(name, server):
    reply = asyncio.run(send_once(name, server.url("budget")))
    assert reply.text == "last one" and reply.pause == 90.0


@pytest.mark.parametrize("name", REMOTE)
def test_client_errors_are_final_and_redacted(name, server):
    exc = _fails(name, server.url("bad-request"))
    assert (exc.error_type, exc.status, exc.retryable) == ("http_error", 400, False)
    assert "invalid model" in exc.message and "[redacted]" in exc.message
    exc = _fails(name, server.url("unauthorized"))
    assert (exc.error_type, exc.status, exc.retryable) == ("http_error", 401, False)
    assert "Incorrect API key" in exc.message


@pytest.mark.parametrize("name", REMOTE)
def test_a_reply_that_is_no_chat_completion_is_malformed(name, server):
    exc = _fails(name, server.url("not-a-completion"))
    assert (exc.error_type, exc.retryable) == ("malformed_response", True)


@pytest.mark.parametrize("name", REMOTE)
def test_the_deadline_bounds_a_trickling_reply(name, server):
    start = time.monotonic()
    exc = _fails(name, server.url("trickle"), timeout=0.8)
    took = time.monotonic() - start
    assert (exc.error_type, exc.retryable) == ("timeout", True)
    assert took < len(TRICKLE) * 0.1 / 2  # cut at the deadline, not after the whole trickle


@pytest.mark.parametrize("name", REMOTE)
def test_http_proxy_from_the_environment_and_no_proxy(name, server, monkeypatch):
    with Recorder() as proxy:
        for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
        target = "http://ledger-contract.invalid:9/proxy/v1"  # resolvable only by the proxy
        assert asyncio.run(send_once(name, target)).text == "proxy"
        (got,) = proxy.seen
        assert got["path"] == target + "/chat/completions"  # absolute-form: sent to the proxy
        assert got["body"] == msgspec.json.encode(BODY)
        monkeypatch.setenv("NO_PROXY", "ledger-contract.invalid")
        monkeypatch.setenv("no_proxy", "ledger-contract.invalid")
        exc = _fails(name, target)  # now direct, and nobody answers there
        assert (exc.error_type, exc.retryable) in {("connection", True), ("timeout", True)}
        assert len(proxy.seen) == 1
        proxy.shutdown()
