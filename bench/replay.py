"""Replay, rebuild and export speed on a synthetic run of 1,000,000 events (250,000 items).

Builds a log the way a run writes it (started, response, parsed per item, plus one
retried failure per 20 items, groups of 64 events) and prints one JSON object:

* ``msgspec_decode_per_s``: raw decode of the log's frame payloads (the ceiling);
* ``replay_events_per_s``: ``iter_events`` over the file (framing, CRC, seq checks);
* ``rebuild_s`` / ``rebuild_events_per_s``: ``projections.projector.rebuild`` of
  ``responses.jsonl`` + ``summary.json`` (the rows projection) and its ratio to the raw
  decode rate;
* ``conversations_rebuild_s``: the rebuild of the other projection, one file per
  conversation (250,000 file creates: the file system's pace, not the fold's);
* ``arrow_rows_per_s`` / ``parquet_rows_per_s``: ``ledger export`` of the rebuilt run;
* ``*_peak_rss_mb``: each phase runs in its own subprocess so peaks do not mix.

Targets: rebuild >= 25% of the raw decode rate, exports >= 200,000 rows/s, peak RSS < 500 MB.

    python bench/replay.py [--items 250000] [--no-conversations] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time



def build(run_dir: str, items: int) -> int:
    from llm_ledger.ledger.events import Failed, Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started, Usage
    from llm_ledger.ledger.writer import LogWriter

    os.makedirs(run_dir, exist_ok=True)
    writer = LogWriter.open(os.path.join(run_dir, "events.log"))
    writer.linger = 0
    n = 0
    writer.append(RunStarted(run_id="bench", config={"model": "sim-1", "samples": 1}, dataset="synthetic", items=items))
    writer.append(SessionStarted(pid=os.getpid()))
    batch = []
    for i in range(items):
        key = {"item_id": str(i), "sample": 0, "turn": 0}
        body = {"model": "sim-1", "messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}? answer: {2 * i}"}]}
        batch.append(Started(**key, attempt=1, request=body, expected=str(2 * i)))
        if i % 20 == 0:
            batch.append(Failed(**key, attempt=1, error_type="rate_limit", message="rate limited", status=429, retryable=True))
            batch.append(Started(**key, attempt=2, request=body, expected=str(2 * i)))
        text = f"The answer is {2 * i}"
        raw = {"id": f"c{i}", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22}}
        batch.append(Response(**key, attempt=1, text=text, finish_reason="stop", usage=Usage(prompt_tokens=17, completion_tokens=5, total_tokens=22), latency=0.1 + (i % 100) / 1000, raw=raw))
        batch.append(Parsed(**key, parser="regex:answer is (.+)$", value=str(2 * i)))
        if len(batch) >= 64:
            n += len(writer.append_many(batch))
            batch = []
    if batch:
        n += len(writer.append_many(batch))
    writer.append(SessionEnded(reason="completed"))
    writer.close()
    return n + 3


def phase(name: str, run_dir: str, out: str) -> dict:
    """Run one phase in this script's own subprocess; returns its JSON plus peak RSS."""
    proc = subprocess.run([sys.executable, __file__, "--phase", name, "--run-dir", run_dir, "--out", out],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    return result


def run_phase(name: str, run_dir: str, out: str) -> None:
    from llm_ledger.ledger.events import decode_many
    from llm_ledger.ledger.layout import RunPaths
    from llm_ledger.ledger.reader import iter_events, iter_frames
    from llm_ledger.projections.export import export
    from llm_ledger.projections.projector import CONVERSATIONS, ROWS, rebuild

    paths = RunPaths(run_dir)
    start = time.perf_counter()
    result: dict = {}
    if name == "decode":
        payloads = [bytes(_payload(paths.log, f)) for f in iter_frames(paths.log)]
        start = time.perf_counter()
        n = sum(len(decode_many(p)) for p in payloads)
        result = {"events": n}
    elif name == "replay":
        result = {"events": sum(1 for _ in iter_events(paths.log))}
    elif name == "rebuild":
        projector = rebuild(paths, (ROWS,))
        result = {"events": projector.state.last_seq}
    elif name == "conversations":
        rebuild(paths, (CONVERSATIONS,))
        result = {}
    else:
        result = {"rows": export([paths], name, out)}
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def _payload(log: str, frame) -> bytes:
    from llm_ledger.ledger.framing import FRAME_OVERHEAD

    with open(log, "rb") as f:
        f.seek(frame.offset + 24)
        return f.read(frame.end - frame.offset - FRAME_OVERHEAD)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=250_000)
    ap.add_argument("--phase")
    ap.add_argument("--run-dir")
    ap.add_argument("--out", default="")
    ap.add_argument("--no-conversations", action="store_true", help="skip the conversation files' rebuild")
    ap.add_argument("--dir", default=None, help="where the run goes (default: the system's temporary directory)")
    args = ap.parse_args()
    if args.phase:
        run_phase(args.phase, args.run_dir, args.out)
        return
    tmp = tempfile.mkdtemp(dir=args.dir)
    try:
        run_dir = os.path.join(tmp, "bench")
        t = time.perf_counter()
        events = build(run_dir, args.items)
        out: dict = {"items": args.items, "events": events, "dir": tmp, "log_mb": round(os.path.getsize(os.path.join(run_dir, "events.log")) / 2**20, 1),
                     "build_s": round(time.perf_counter() - t, 1)}
        decode = phase("decode", run_dir, "")
        replay = phase("replay", run_dir, "")
        rebuilt = phase("rebuild", run_dir, "")
        out["msgspec_decode_per_s"] = round(decode["events"] / decode["seconds"])
        out["replay_events_per_s"] = round(replay["events"] / replay["seconds"])
        out["replay_vs_decode"] = round(out["replay_events_per_s"] / out["msgspec_decode_per_s"], 3)
        out["rebuild_s"] = round(rebuilt["seconds"], 2)
        out["rebuild_events_per_s"] = round(rebuilt["events"] / rebuilt["seconds"])
        out["rebuild_vs_decode"] = round(out["rebuild_events_per_s"] / out["msgspec_decode_per_s"], 3)
        out["replay_peak_rss_mb"] = replay["peak_rss_mb"]
        out["rebuild_peak_rss_mb"] = rebuilt["peak_rss_mb"]
        if not args.no_conversations:
            conversations = phase("conversations", run_dir, "")
            out["conversations_rebuild_s"] = round(conversations["seconds"], 2)
            out["conversations_peak_rss_mb"] = conversations["peak_rss_mb"]
        for fmt in ("arrow", "parquet"):
            r = phase(fmt, run_dir, os.path.join(tmp, f"out.{fmt}"))
            out[f"{fmt}_rows_per_s"] = round(r["rows"] / r["seconds"])
            out[f"{fmt}_peak_rss_mb"] = r["peak_rss_mb"]
        out["targets_met"] = {
            "rebuild_ge_25pct_decode": out["rebuild_vs_decode"] >= 0.25,
            "exports_ge_200k_rows_s": min(out["arrow_rows_per_s"], out["parquet_rows_per_s"]) >= 200_000,
            "peak_rss_lt_500mb": max(out[k] for k in out if k.endswith("peak_rss_mb")) < 500,
        }
        print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
