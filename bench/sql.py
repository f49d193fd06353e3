"""`ledger sql` speed: a cold query of 1,000,000 rows across 10 runs.

Builds 10 runs of ``--items`` items each (default 100,000: 1M rows) the way a run writes its
log (started, response, parsed per item, with a ``topic`` metadata field; groups of 64
events), brings their rows projection up to date (``projector.rebuild``), then times, each in
a fresh subprocess (nothing cached in memory; the page cache is warm for all alike):

* ``sql_cold_s``: the whole command, ``ledger sql "SELECT run_id, topic, count(*), avg(correct)
  FROM rows GROUP BY ALL" --format json``, interpreter start-up included;
* ``sql_query_s``: the same query in-process (``projections.sql.query``): building the
  ``rows`` view from the 10 runs' projections plus DuckDB's query;
* ``export_read_s``: the baseline, the export reading the same rows into Arrow
  (``export.row_batches`` drained), which is what the view is built from;
* ``sql_over_export``: ``sql_query_s / export_read_s`` (the cost of DuckDB on top);
* ``runs_query_s``: ``SELECT * FROM runs`` (reads no rows: the views are built on demand);
* ``rows_per_s``: rows / ``sql_query_s``.

    python bench/sql.py [--items 100000] [--runs 10] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

QUERY = "SELECT run_id, topic, count(*) AS n, avg(correct) AS accuracy FROM rows GROUP BY ALL"
TOPICS = ("geography", "arithmetic", "history", "science")


def build(run_dir: str, items: int) -> None:
    from llm_ledger.ledger.index import RunIndex
    from llm_ledger.ledger.events import Parsed, Response, RunStarted, SessionEnded, SessionStarted, Started, Usage
    from llm_ledger.ledger.writer import LogWriter
    from llm_ledger.projections.projector import ROWS, rebuild
    from llm_ledger.ledger.layout import RunPaths

    os.makedirs(run_dir, exist_ok=True)
    writer = LogWriter.open(os.path.join(run_dir, "events.log"))
    writer.linger = 0
    writer.append(RunStarted(run_id=os.path.basename(run_dir), config={"model": "sim-1", "samples": 1, "parser": "number"},
                             dataset="synthetic", items=items))
    writer.append(SessionStarted(pid=os.getpid()))
    batch: list = []
    usage = Usage(prompt_tokens=17, completion_tokens=5, total_tokens=22)
    for i in range(items):
        key = {"item_id": str(i), "sample": 0, "turn": 0}
        body = {"model": "sim-1", "messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}]}
        answer = 2 * i if i % 4 else 2 * i + 1  # three in four right
        batch.append(Started(**key, request=body, expected=2 * i, line=i + 1, metadata={"topic": TOPICS[i % 4]}))
        batch.append(Response(**key, text=f"The answer is {answer}", finish_reason="stop", usage=usage, latency=0.1))
        batch.append(Parsed(**key, parser="number", value=answer))
        if len(batch) >= 64:
            writer.append_many(batch)
            batch = []
    if batch:
        writer.append_many(batch)
    writer.append(SessionEnded(reason="completed"))
    writer.close()
    paths = RunPaths(run_dir)
    RunIndex.open_for_log(paths.index, paths.log).close()  # as a run leaves it: status reads the index
    rebuild(paths, (ROWS,))


def phase(name: str, runs_dir: str) -> dict:
    """One measurement in a subprocess of its own (cold: nothing of the runs in memory)."""
    if name == "cli":
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "llm_ledger.cli", "sql", QUERY, "--format", "json", "--runs-dir", runs_dir],
                              capture_output=True, text=True, check=True)
        return {"seconds": time.perf_counter() - start, "groups": len(json.loads(done.stdout))}
    proc = subprocess.run([sys.executable, __file__, "--phase", name, "--dir", runs_dir], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def run_phase(name: str, runs_dir: str) -> None:
    from llm_ledger.projections import sql as sql_mod

    start = time.perf_counter()
    if name == "query":
        table = sql_mod.query(runs_dir, QUERY)
        rows = sum(table.column("n").to_pylist())
    elif name == "runs":
        rows = sql_mod.query(runs_dir, "SELECT * FROM runs").num_rows
    else:  # the baseline: the export reading the same rows
        from llm_ledger.projections.export import row_batches

        _, batches = row_batches(sql_mod.run_paths(runs_dir))
        rows = sum(b.num_rows for b in batches)
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": rows}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000, help="items per run")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--dir", default=None, help="where to build the runs (default: a temp dir, removed after)")
    parser.add_argument("--phase", default=None)
    args = parser.parse_args()
    if args.phase:
        run_phase(args.phase, args.dir)
        return
    base = args.dir or tempfile.mkdtemp(prefix="ledger-bench-sql-")
    runs_dir = os.path.join(base, "runs")
    try:
        start = time.perf_counter()
        for k in range(args.runs):
            build(os.path.join(runs_dir, f"run{k:02d}"), args.items)
        built = time.perf_counter() - start
        export = phase("export", runs_dir)
        query = phase("query", runs_dir)
        cli = phase("cli", runs_dir)
        runs = phase("runs", runs_dir)
        rows = args.items * args.runs
        assert export["rows"] == query["rows"] == rows, (export, query)
        print(json.dumps({
            "runs": args.runs, "rows": rows, "build_s": round(built, 2),
            "sql_cold_s": round(cli["seconds"], 3), "sql_query_s": round(query["seconds"], 3),
            "export_read_s": round(export["seconds"], 3),
            "sql_over_export": round(query["seconds"] / export["seconds"], 3),
            "runs_query_s": round(runs["seconds"], 3), "rows_per_s": round(rows / query["seconds"]),
        }))
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
