"""kill -9 a writer at a random moment: every acknowledged event is in the log, seq gapless."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llm_ledger.ledger.events import Resumed
from llm_ledger.ledger.reader import iter_events
from llm_ledger.ledger.writer import LogWriter

HELPER = str(Path(__file__).with_name("helpers_writer.py"))


def acks(lines: list[bytes]) -> dict[int, str]:
    """seq -> item_id of every complete line the writer printed."""
    out = {}
    for line in lines:
        seq, item_id = line.decode().split()
        out[int(seq)] = item_id
    return out


@pytest.mark.parametrize("seed", [11, 22, 33, 44, 55, 66])
def test_every_acknowledged_event_survives_kill_9(tmp_path, seed):
    rng = random.Random(seed)
    log = str(tmp_path / "events.log")
    kill_after = rng.randint(1, 400)  # acknowledged events to see before the kill
    proc = subprocess.Popen(
        [sys.executable, HELPER, "crash", log, str(seed), "3", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines = []
    try:
        while len(lines) < kill_after:
            line = proc.stdout.readline()
            assert line.endswith(b"\n"), f"seed {seed}: writer ended early: {proc.stderr.read().decode()}"
            lines.append(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rest = proc.stdout.read()  # acks printed before the kill landed
    proc.stdout.close()
    proc.stderr.close()
    lines += rest.splitlines(keepends=True)
    printed = acks([line for line in lines if line.endswith(b"\n")])

    writer = LogWriter.open(log)  # recovers whatever the kill tore
    try:
        last = writer.last_seq
        next_event = writer.append(Resumed(endpoint="after"))
    finally:
        writer.close()
    events = list(iter_events(log))
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, last + 2)), f"seed {seed}: seq not gapless"
    assert next_event.seq == last + 1 and events[-1] == next_event, f"seed {seed}"
    in_log = {e.seq: e.item_id for e in events[:-1]}
    missing = {s: i for s, i in printed.items() if in_log.get(s) != i}
    assert not missing, f"seed {seed}: acknowledged but not in the log: {sorted(missing)[:10]}"
    assert len(printed) >= kill_after, f"seed {seed}"
