"""`in flight` on the progress line counts requests sent and awaiting their reply: items
waiting for a rate limit (or an experiment's shared provider slot, or a retry's backoff)
are not in flight. Counted at the simulator while the run goes."""

from __future__ import annotations

import json

from llm_ledger.runners.config import RunConfig
from llm_ledger.runners.prepare import prepare
from llm_ledger.runners.session import run_prepared
from llm_ledger.runners.simulator import SimConfig, Simulator


def test_items_waiting_for_the_rate_limit_are_not_in_flight(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"say {i}"}) + "\n" for i in range(12)))
    sim = Simulator(SimConfig(latency=0.05)).start()
    seen: list[tuple[int, int]] = []
    try:
        config = RunConfig(base_url=sim.base_url, base_urls=[sim.base_url], concurrency=12, rpm=600, cache=False)
        session, reason = run_prepared(prepare(str(data), config, str(tmp_path / "runs"), "r"),
                                       on_tick=lambda p: seen.append((p.in_flight, sim.state.in_flight)))
    finally:
        sim.stop()
    assert reason == "completed" and session.runner.progress.in_flight == 0
    # --rpm 600: one request every 0.1 s, each answered in 0.05 s: at most a couple at once,
    # while all 12 items are being worked from the start
    assert len(seen) >= 5 and max(ours for ours, _ in seen) <= 3, seen
