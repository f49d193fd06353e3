"""The built-in simulator as an in-process transport (runners/sim_transport.py, the worked
example of adding a transport). That it fails as the HTTP simulator does through the other
transports is tests/test_transport_contract.py's; here, a whole faulty run through it is recorded as one over HTTP is: every item done, one ``failed``
event per fault the simulator's request log shows, the endpoint named in-process. It
takes no URL.
"""

from __future__ import annotations

from collections import Counter


from llm_ledger.ledger.events import Failed, Response, RunStarted, Started
from llm_ledger.ledger.reader import iter_events
from test_run_e2e import qa_records, read_jsonl, requests_of, sim_json, write_jsonl



def test_a_faulty_run_in_process_is_recorded_like_one_over_http(cli, tmp_path):
    records = qa_records(40)
    dataset = write_jsonl(tmp_path / "qa.jsonl", records)
    req_log = tmp_path / "req.jsonl"
    sim = sim_json(req_log, seed=7, rate_429=0.1, retry_after=0.01, rate_500=0.1, rate_reset=0.05,
                   rate_malformed=0.05, rate_hang=0.03, hang_seconds=5)
    r = cli("run", str(dataset), "--runs-dir", "runs", "--run-id", "inproc", "--transport", "simulator",
            "--parser", "regex:answer is (.+)$", "--timeout", "1", "--retries", "10", "--sim", sim)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "inproc"
    events = list(iter_events(str(run_dir / "events.log")))
    assert isinstance(events[0], RunStarted) and events[0].config["transport"] == "simulator"
    assert events[0].config["runner"] == "per-request"
    sent = requests_of(req_log)
    outcomes = Counter(e["outcome"] for e in sent)
    assert outcomes["ok"] == 40 and sum(outcomes.values()) > 40, outcomes
    expected_types = {"429": "rate_limit", "500": "server_error", "reset": "connection",
                      "malformed": "malformed_response", "hang": "timeout"}
    failed = [e for e in events if isinstance(e, Failed)]
    assert Counter(e.error_type for e in failed) == Counter(expected_types[o] for o in outcomes.elements() if o != "ok")
    assert len([e for e in events if isinstance(e, Started)]) == len(sent)
    assert {e.endpoint for e in events if isinstance(e, Response)} == {"in-process-simulator"}
    rows = read_jsonl(run_dir / "responses.jsonl")
    assert len(rows) == 40 and all(row["correct"] is True for row in rows)


def test_an_in_process_transport_takes_no_url(cli, tmp_path):
    dataset = write_jsonl(tmp_path / "qa.jsonl", qa_records(2))
    r = cli("run", str(dataset), "--runs-dir", "runs", "--transport", "simulator", "--base-url", "http://127.0.0.1:9/v1",
            "--model", "m", "--no-preflight")
    assert r.returncode == 2 and "takes no --base-url" in r.stderr and "Traceback" not in r.stderr, r
