"""Soak: hundreds of kill -9s of `ledger run` / `ledger resume`, with every invariant checked.

    python bench/soak.py --kills 100 --seed 1 --items 60 [--per-chain 5] [--workers 2]

Runs chains (tests/chaos/chains.py) one after another, two at a time: a run of ``--items``
items (kinds rotate: "qa" with 2 samples at concurrency 16, "big" with 4 KB prompts at
concurrency 64, "chat" with 3 turns), killed ``--per-chain`` times at seeded moments -- mid-run,
mid-projection, during a resume's recovery and catch-up, while draining -- then resumed to
completion. After each kill, on copies: the durable log is a prefix of every later one, the
writer reopens it losing nothing, it verifies clean, the index catches up, the projections as
the crash left them, repaired, equal a rebuild. At the end of each chain: exactly one reply
per item/sample/turn, no reply durable at a kill requested again, live projections equal a
rebuild.

Prints one JSON object:

    kills               sessions killed by SIGKILL (``missed``: the session had already ended)
    events_acknowledged events durable in the log when a session was killed (read right after
                        the kill), each counted once: the events a user was promised
    events_lost         of those, missing or changed later                  -- promised 0
    requests_resent     requests for an item/sample/turn whose reply was durable at an
                        earlier kill                                        -- promised 0
    invariant_failures  every failed check above, all kinds                 -- promised 0
    kills_mid_projection kills that left a partial responses.jsonl line or a temp file
    kills_by_moment     kills that landed per moment (requests, projection, startup, late,
                        checkpoint write, index rebuild) and in runs of long/unicode ids

and, on stderr, the first failures with their seeds. Exit 1 if any promised zero is not.
Children are forked from a warm server (tests/chaos/procs.py); nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

KEYS = ("kills", "missed", "events_acknowledged", "events_lost", "requests_resent", "invariant_failures",
        "kills_mid_projection")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="kills in all (sessions killed or missed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--items", type=int, default=60, help="items per run")
    parser.add_argument("--per-chain", type=int, default=5, help="kills per run before it is resumed to completion")
    parser.add_argument("--workers", type=int, default=2, help="chains side by side")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args()

    from chaos.chains import KINDS, Chain

    base = Path(tempfile.mkdtemp(prefix="ledger-soak-"))
    chains = -(-args.kills // args.per_chain)
    specs = [(args.seed * 100_000 + n, KINDS[n % len(KINDS)], min(args.per_chain, args.kills - n * args.per_chain))
             for n in range(chains)]
    started = time.monotonic()

    def one(spec):
        seed, kind, kills = spec
        chain = Chain(base / f"chain-{seed}", seed, kind, items=args.items)
        try:
            failures = chain.run(kills)
        except Exception as exc:  # a crash of the harness itself counts as a failure
            failures = [f"{chain.label}: harness error {type(exc).__name__}: {exc}"]
            chain.final_failures.append(failures[0])
        tally = {**chain.tally(), "moments": chain.moments()}
        if not failures and not args.keep:
            chain.cleanup()
        print(f"{chain.label}: {json.dumps(tally)}", file=sys.stderr, flush=True)
        return tally, failures

    totals = dict.fromkeys(KEYS, 0)
    moments: dict[str, int] = {}
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for tally, fails in pool.map(one, specs):
            for key in KEYS:
                totals[key] += tally[key]
            for moment, n in tally["moments"].items():
                moments[moment] = moments.get(moment, 0) + n
            failures += fails
    report = {**totals, "kills_by_moment": moments, "chains": len(specs), "items_per_run": args.items, "seed": args.seed,
              "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(report))
    for failure in failures[:20]:
        print(failure, file=sys.stderr)
    if failures or args.keep:
        print(f"run directories kept under {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if totals["events_lost"] or totals["requests_resent"] or totals["invariant_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
