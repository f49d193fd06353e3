"""One run killed with SIGKILL again and again -- in `ledger run`, then in the resumes, at
seeded moments -- and finally resumed to completion, checking every invariant on the way.

Used by test_kill.py (a few chains in CI) and bench/soak.py (hundreds of kills).

Kill moments (``trigger``), drawn from the chain's seed:

    requests  after the embedded simulator has logged N new requests (+ a few ms): mid-run,
              with replies, parses and projection writes in flight
    projection  after responses.jsonl has grown by N lines (+ up to 10 ms): while the
              projector is writing lines, conversation files, the summary
    startup   once the child holds the run lock (+ up to 0.2 s): during log recovery, the
              index and projector catching up, planning, the first requests of a resume
    late      after every outstanding request was sent: while draining, writing the last
              projections, the summary, the checkpoint, session_ended (may miss: it exited)
    checkpoint  the moment projections.ckpt is replaced (a temp checkpoint appears, or the
              file's inode changes): while the projector writes its checkpoint
    rebuild   (resumes only) the index is deleted first, and the kill comes while the
              resume rebuilds it from the log (+ up to 50 ms after the lock is taken)

What "acknowledged" means here: for a `ledger run` process the durable events are the log as
a reader finds it right after the kill (kill -9 loses nothing that was written; a torn frame
is not an event). Each kill's durable log must be a prefix of every later one.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .invariants import (check_final_log, check_prefix, check_projections, check_reopen, encoded, lost_events,
                         read_log, reply_keys, resent)
from .procs import checkpoint_replaced, kill_when, lines_after, lock_held_by, start_cli

__all__ = ["Chain", "Kill", "KINDS", "REGEX_PARSER"]

REGEX_PARSER = "regex:answer is (.+)$"
KINDS = ("qa", "big", "chat", "ids")
TRIGGERS = ("requests", "projection", "startup", "late", "checkpoint", "rebuild")


@dataclass
class Kill:
    n: int
    command: str
    trigger: str
    code: int
    events: int = 0
    req_offset: int = 0
    durable: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    mid_projection: bool = False  # the kill left a partial line or a temp file behind

    @property
    def killed(self) -> bool:
        return self.code == -9


def _records(kind: str, n: int) -> list[dict]:
    if kind == "chat":
        return [{"id": f"m{i}", "turns": [f"Item {i} turn {t}. answer: R{i}-{t}" for t in range(3)],
                 "expected": f"R{i}-2"} for i in range(n)]
    pad = "Consider the following context carefully. " * 100 if kind == "big" else ""
    ids = [_odd_id(i) if kind == "ids" else f"q{i}" for i in range(n)]
    return [{"id": ids[i], "prompt": f"{pad}What is item {i}? answer: A{i}", "expected": f"A{i}"} for i in range(n)]


def _odd_id(i: int) -> str:
    """Ids that once broke the index or the request header: over LMDB's 511-byte key limit,
    accents, CJK, emoji, spaces, slashes and tabs."""
    forms = (f"café-{i}", f"问题 {i}", f"🙂{i}🚀", f"a/b/{i}", f"tab\t{i}", f"long-{i}-" + "é" * 300)
    return forms[i % len(forms)]


class Chain:
    """A run in ``base`` of ``kind`` ("qa": 2 samples at concurrency 16; "big": 4 KB prompts at
    concurrency 64, so that projection writes are large and constant; "chat": 3 turns)."""

    def __init__(self, base: Path, seed: int, kind: str = "qa", *, mode: str = "fork", items: int | None = None) -> None:
        self.base, self.seed, self.kind, self.mode = base, seed, kind, mode
        self.rng = random.Random(seed)
        base.mkdir(parents=True, exist_ok=True)
        self.scratch = base / "scratch"
        self.scratch.mkdir(exist_ok=True)
        n = items or {"qa": 60, "big": 80, "chat": 24, "ids": 60}[kind]
        self.samples = 2 if kind in ("qa", "ids") else 1
        records = _records(kind, n)
        self.dataset = base / "data.jsonl"
        self.dataset.write_text("".join(json.dumps(r) + "\n" for r in records))
        turns = 3 if kind == "chat" else 1
        self.all_keys = {f"{r['id']}/{s}/{t}" for r in records for s in range(self.samples) for t in range(turns)}
        self.req_log = base / "requests.jsonl"
        self.runs = base / "runs"
        self.run_dir = self.runs / "chaos"
        self.kills: list[Kill] = []
        self._snapshot: list[bytes] = []
        self.final_failures: list[str] = []
        self.final_events = 0
        self.lost = 0  # events durable at a kill, missing or changed later

    @property
    def label(self) -> str:
        return f"seed={self.seed} kind={self.kind} mode={self.mode}"

    def _sim(self) -> str:
        return json.dumps({"seed": self.seed, "latency": 0.01, "latency_jitter": 0.008, "rate_429": 0.04,
                           "retry_after": 0.01, "request_log": str(self.req_log)})

    def _command(self) -> list[str]:
        if not self.kills or not (self.run_dir / "events.log").exists():
            concurrency = {"qa": "16", "big": "64", "chat": "8", "ids": "16"}[self.kind]
            return ["run", str(self.dataset), "--runs-dir", str(self.runs), "--run-id", "chaos", "--samples",
                    str(self.samples), "--concurrency", concurrency, "--parser", REGEX_PARSER, "--sim", self._sim()]
        return ["resume", "chaos", "--runs-dir", str(self.runs)]

    def _remaining(self) -> int:
        durable = self.kills[-1].durable if self.kills else set()
        return len(self.all_keys - durable)

    def _size(self) -> int:
        return self.req_log.stat().st_size if self.req_log.exists() else 0

    def step(self) -> Kill:
        """Start the next session, kill it at a seeded moment, check everything."""
        args = self._command()
        first = args[0] == "run"
        weights = (3, 4, 2, 1, 1, 1) if self.kind == "big" else (5, 2, 2, 1, 1, 1)
        trigger = self.rng.choices(TRIGGERS, weights)[0]
        if first and trigger in ("startup", "late", "rebuild"):
            trigger = "requests"  # (a run killed before run_started is durable: test_kill.py)
        if trigger == "rebuild":
            shutil.rmtree(self.run_dir / "index.lmdb", ignore_errors=True)
        start = self._size()
        responses = self.run_dir / "responses.jsonl"
        responses_size = responses.stat().st_size if responses.exists() else 0
        proc = start_cli(*args, cwd=self.base, mode=self.mode, name=f"k{len(self.kills)}")
        remaining = self._remaining()
        if trigger in ("startup", "rebuild"):
            spread = 0.2 if trigger == "startup" else 0.05
            fire, delay = lock_held_by(self.run_dir / "events.log.lock", proc.pid), self.rng.uniform(0, spread)
        elif trigger == "checkpoint":
            fire, delay = checkpoint_replaced(self.run_dir), 0.0
        elif trigger == "projection":
            target = self.rng.randint(1, max(1, int(remaining * 0.5)))
            fire, delay = (lambda: lines_after(responses, responses_size) >= target), self.rng.uniform(0, 0.01)
        else:
            target = remaining if trigger == "late" else self.rng.randint(1, max(1, int(remaining * 0.6)))
            fire, delay = (lambda: lines_after(self.req_log, start) >= target), self.rng.uniform(0, 0.03)
        code, _ = kill_when(proc, fire, delay)
        kill = Kill(len(self.kills), args[0], trigger, code, req_offset=self._size())
        events, error = read_log(self.run_dir / "events.log")  # before anything reopens the log
        snapshot = encoded(events)
        kill.events, kill.durable = len(events), reply_keys(events)
        if error:
            kill.failures.append(error)
        kill.failures += check_prefix(self._snapshot, snapshot, f"kill {kill.n}")
        self.lost += lost_events(self._snapshot, snapshot)
        if code not in (-9, 0):
            kill.failures.append(f"kill {kill.n}: `ledger {args[0]}` exited {code} before the kill: {proc.stderr[-500:]}")
        if kill.killed and events:
            kill.mid_projection = _mid_projection(self.run_dir)
            kill.failures += check_reopen(self.run_dir, self.scratch, snapshot)
            kill.failures += check_projections(self.run_dir, self.scratch, repair=True)
        self._snapshot = max(self._snapshot, snapshot, key=len)
        self.kills.append(kill)
        return kill

    def finish(self) -> list[str]:
        """Resume to completion and check the run as a whole."""
        proc = start_cli("resume", "chaos", "--runs-dir", str(self.runs), cwd=self.base, mode=self.mode, name="final")
        code = proc.wait(180)
        failures = []
        if code != 0:
            failures.append(f"final resume exited {code}: {proc.stderr[-1500:]}")
        events, error = read_log(self.run_dir / "events.log")
        self.final_events = len(events)
        if error:
            return failures + [error]
        failures += check_prefix(self._snapshot, encoded(events), "final")
        self.lost += lost_events(self._snapshot, encoded(events))
        failures += check_final_log(events, self.all_keys)
        for kill in self.kills:
            again = resent(self.req_log, kill.req_offset, kill.durable)
            if again:
                failures.append(f"kill {kill.n}: {len(again)} durable replies requested again, e.g. {again[:3]}")
        failures += check_projections(self.run_dir, self.scratch, repair=False)
        rows = [json.loads(line) for line in (self.run_dir / "responses.jsonl").read_bytes().splitlines()]
        last = {(r["item_id"], r["sample"]): r for r in rows}
        if len(last) != len(self.all_keys) // (3 if self.kind == "chat" else 1) or not all(r["correct"] for r in last.values()):
            failures.append(f"responses.jsonl: {len(last)} keys, {sum(bool(r['correct']) for r in last.values())} correct")
        summary = json.loads((self.run_dir / "summary.json").read_bytes())
        if summary["counts"]["done"] != summary["counts"]["planned"] or summary["status"] != "completed":
            failures.append(f"summary.json: {summary['status']} {summary['counts']}")
        self.final_failures = failures
        return failures

    def run(self, kills: int) -> list[str]:
        """``kills`` sessions killed (or ended) one after another, then the final resume.
        Returns every failure, each labelled with the seed."""
        for _ in range(kills):
            self.step()
        failures = [f for k in self.kills for f in k.failures] + self.finish()
        return [f"{self.label}: {f}" for f in failures]

    def tally(self) -> dict[str, int]:
        """Figures for bench/soak.py. ``events_acknowledged``: events durable in the log when a
        session was killed (read right after the kill), each counted once."""
        failures = [f for k in self.kills for f in k.failures] + self.final_failures
        return {
            "kills": sum(k.killed for k in self.kills),
            "missed": sum(not k.killed for k in self.kills),
            "events_acknowledged": len(self._snapshot),
            "events_lost": self.lost,
            "requests_resent": sum(len(resent(self.req_log, k.req_offset, k.durable)) for k in self.kills),
            "invariant_failures": len(failures),
            "kills_mid_projection": sum(k.mid_projection for k in self.kills),
        }

    def moments(self) -> dict[str, int]:
        """Kills that landed, per moment (trigger), and those in a run of odd ids."""
        landed = [k for k in self.kills if k.killed]
        counts = {trigger: sum(k.trigger == trigger for k in landed) for trigger in TRIGGERS}
        counts["odd_ids"] = len(landed) if self.kind == "ids" else 0
        return counts

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _mid_projection(run_dir: Path) -> bool:
    """Did the kill interrupt a projection write (a partial last line, a temp file)?"""
    responses = run_dir / "responses.jsonl"
    if responses.exists():
        data = responses.read_bytes()
        if data and not data.endswith(b"\n"):
            return True
    for d in (run_dir, run_dir / "conversations"):
        if d.is_dir() and any(".tmp." in p.name for p in d.iterdir()):
            return True
    return False
