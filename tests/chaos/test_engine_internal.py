"""No item is ever left pending silently.

* Any item id works: accents, CJK, emoji, spaces, ``/``, tabs, 200 characters (the
  ``x-ledger-key`` header percent-encodes it; the simulator's request log still names the
  item as the events do, one request per item).
* Any unexpected exception while working an item becomes a final ``failed`` event of type
  ``internal`` (type, message, place) and a line for the user; the other items go on.
* A circuit-breaker probe that dies of such an exception moves the breaker on: the run
  neither hangs nor leaves work behind.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chaos.endpoints import BrokenServer
from chaos.invariants import read_log
from chaos.procs import run_cli
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter
from llm_ledger.runners.parsers import make_parser
from llm_ledger.runners.breaker import THRESHOLD
from llm_ledger.runners.openai_transport import OpenAITransport
from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.dataset import Item
from llm_ledger.runners.endpoints import Endpoint, Pool
from llm_ledger.runners.engine import Engine
from llm_ledger.runners.runner import Work
from llm_ledger.runners.limits import AdaptiveLimit, RateLimits
from llm_ledger.runners.simulator import Simulator
from llm_ledger.runners.transport import TransportSpec

# Any text but lone surrogates (not valid in a UTF-8 dataset) and "" (an empty id means
# "use the line number").
IDS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(ids=st.lists(IDS, min_size=1, max_size=12, unique=True))
@example(ids=["\x85", "\u2028", "café", "東京の天気", "🙂 emoji", "with space", "a/b/c", "tab\there", "x" * 200, "%2F", "q1/0/0", "ö" * 200])
def test_any_item_id_is_sent_once_and_done(tmp_path_factory, ids):
    base = tmp_path_factory.mktemp("ids")
    data = base / "d.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": f"item {n}? answer: A{n}"}) + "\n" for n, i in enumerate(ids)),
                    encoding="utf-8")
    req_log = base / "requests.jsonl"
    r = run_cli("run", str(data), "--runs-dir", str(base / "runs"), "--run-id", "u",
                "--sim", json.dumps({"request_log": str(req_log)}), cwd=base)
    assert r.returncode == 0, (ids, r)
    assert "Traceback" not in r.stderr and "pending" not in r.stderr, r
    events, error = read_log(base / "runs" / "u" / "events.log")
    assert not error
    assert Counter(e.item_id for e in events if type(e).__name__ == "Parsed") == Counter(ids)
    sent = Counter(json.loads(line)["key"] for line in req_log.read_bytes().splitlines())  # not str.splitlines: U+0085 ...
    assert sent == Counter(f"{i}/0/0" for i in ids)
    rows = [json.loads(line) for line in (base / "runs" / "u" / "responses.jsonl").read_bytes().splitlines()]
    assert sorted(row["item_id"] for row in rows) == sorted(ids)


# -- the rule: an unexpected exception is a failed event of type internal --------------------


def _item(item_id: str, **params) -> Item:
    return Item(id=item_id, line=1, turns=[[{"role": "user", "content": f"{item_id}? answer: ok"}]], params=params)


class _PoolThatBreaksAfterAReply(Pool):
    """An unexpected exception after the reply is durable (returning the endpoint)."""

    async def release(self, endpoint, reply, error) -> None:  # type: ignore[override]
        await super().release(endpoint, reply, error)
        if reply is not None:
            raise RuntimeError("bookkeeping after the reply broke")


async def _run(tmp_path: Path, works: list[Work], *, open_breaker: bool = False, pool: type[Pool] = Pool) -> Engine:
    """An engine on a real log and the real simulator, as a session builds it."""
    with Simulator() as sim:
        writer = LogWriter.open(str(tmp_path / "events.log"))
        config = RunConfig(base_url=sim.base_url, model="sim-1", retries=1, timeout=10, concurrency=1)
        endpoint = Endpoint(sim.base_url, OpenAITransport(TransportSpec(sim.base_url, "EMPTY", (), 10, 1, {})), AdaptiveLimit(1))
        engine = Engine(config, writer, pool([endpoint]), make_parser("text"), (), RateLimits(None, None))
        if open_breaker:  # an outage has just tripped it: the next request is the probe
            for _ in range(THRESHOLD):
                endpoint.breaker.failure("server_error", asyncio.get_running_loop().time())
            assert endpoint.breaker.state == "open"
        try:
            await asyncio.wait_for(engine.run(iter(works)), timeout=30)  # a hang guard only
        finally:
            writer.close()
            await endpoint.transport.close()
    return engine


def _by_item(tmp_path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in iter_events(str(tmp_path / "events.log")):
        out.setdefault(e.item_id, []).append(e)
    return out


def test_an_unexpected_exception_fails_its_item_with_the_reason_and_the_run_goes_on(tmp_path):
    """A NaN request parameter cannot be sent as JSON: the SDK raises ValueError while
    building the request, outside anything the engine expects."""
    works = [Work(_item("bad", temperature=float("nan")), 0), Work(_item("good"), 0)]
    engine = asyncio.run(_run(tmp_path, works))
    events = _by_item(tmp_path)
    (failed,) = [e for e in events["bad"] if type(e).__name__ == "Failed"]
    assert failed.error_type == "internal" and failed.final and not failed.retryable
    assert failed.message.startswith("ValueError: ") and "JSON" in failed.message
    assert [type(e).__name__ for e in events["good"]] == ["Started", "Response", "Parsed"]
    assert engine.progress.failed == 1 and engine.progress.done == 1
    assert len(engine.progress.internal) == 1 and "'bad'" in engine.progress.internal[0]


def test_an_exception_after_the_reply_is_durable_leaves_the_item_done(tmp_path):
    """A final failed event after a durable reply would turn a done item into a failed one,
    and a resume would then buy that reply again. The error is still said, once."""
    engine = asyncio.run(_run(tmp_path, [Work(_item("q1"), 0)], pool=_PoolThatBreaksAfterAReply))
    assert [type(e).__name__ for e in _by_item(tmp_path)["q1"]] == ["Started", "Response", "Parsed"]
    assert engine.progress.done == 1 and engine.progress.failed == 0
    assert engine.progress.errors == {"internal": 1}
    assert len(engine.progress.internal) == 1 and "after its reply was recorded" in engine.progress.internal[0]


def test_a_probe_that_dies_of_an_unexpected_exception_moves_the_breaker_on(tmp_path):
    """The breaker is open; the first request after the cooldown (the probe) is the item
    that cannot be sent. Before: 'probing' stayed set and every later item waited for ever."""
    works = [Work(_item("bad", temperature=float("nan")), 0)] + [Work(_item(f"q{i}"), 0) for i in range(3)]
    engine = asyncio.run(_run(tmp_path, works, open_breaker=True))
    events = _by_item(tmp_path)
    assert [e.error_type for e in events["bad"] if type(e).__name__ == "Failed"] == ["internal"]
    assert all(type(events[f"q{i}"][-1]).__name__ == "Parsed" for i in range(3))
    assert engine.pool.endpoints[0].breaker.state == "closed"


def test_a_probe_from_an_item_with_a_non_ascii_id_ends_the_outage(tmp_path):
    """Five items fail in a row (503, no retries): the breaker opens; the next item, whose
    id is not ASCII, is the probe. Before: its header could not be encoded, the probe never
    ended and the run hung."""
    ids = [f"q{i}" for i in range(5)] + ["café"] + [f"r{i}" for i in range(3)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": f"{i}? answer: ok"}) + "\n" for i in ids), encoding="utf-8")
    with BrokenServer(lambda item, attempt: "outage_503" if item.startswith("q") else "ok") as server:
        r = run_cli("run", str(data), "--runs-dir", str(tmp_path / "runs"), "--run-id", "b", "--base-url", server.base_url,
                    "--model", "broken-1", "--retries", "0", "--concurrency", "1", cwd=tmp_path, timeout=60)
        seen = [key for _, key, _, _ in server.log]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r  # the five q items failed
    assert seen == [f"{i}/0/0" for i in ids]
    events, _ = read_log(tmp_path / "runs" / "b" / "events.log")
    done = {e.item_id for e in events if type(e).__name__ == "Parsed"}
    assert done == {"café", "r0", "r1", "r2"}
    assert [type(e).__name__ for e in events if type(e).__name__ in ("Paused", "Resumed")] == ["Paused", "Resumed"]
