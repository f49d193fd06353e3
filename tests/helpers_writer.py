"""A log writer in a subprocess, driven by the tests (not a test module itself).

    python helpers_writer.py crash LOG SEED THREADS TASKS
        Append forever from THREADS threads and TASKS asyncio tasks; after each
        acknowledgement print one line per event, "SEQ ITEM_ID", flushed at once.
        Runs until it is killed (the test sends SIGKILL).

    python helpers_writer.py hold LOG
        Open the writer, print "ready PID", then obey stdin, one command per line:
        "append N" appends N events (one group each) and prints "acked SEQ..." ;
        "close" closes the writer and prints "closed"; end of input exits.

    python helpers_writer.py try-open LOG
        Try to open the writer once; print "locked PID" or "opened".
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading

from llm_ledger.ledger.errors import LogLockedError
from llm_ledger.ledger.events import Failed, Parsed, Response, Started
from llm_ledger.ledger.writer import LogWriter


def say(line: str) -> None:
    """One write per line: atomic on a pipe, nothing left in a buffer when killed."""
    os.write(1, (line + "\n").encode())


def make_event(rng: random.Random, item_id: str):
    size = rng.choice((0, 10, 300, 5000, 40000))
    kind = rng.randrange(4)
    if kind == 0:
        return Started(item_id=item_id, request={"prompt": "é" * size})
    if kind == 1:
        return Response(item_id=item_id, text="ü" * size, latency=0.5)
    if kind == 2:
        return Parsed(item_id=item_id, value={"v": size})
    return Failed(item_id=item_id, message="x" * size, status=500)


def report(events) -> None:
    say("\n".join(f"{e.seq} {e.item_id}" for e in events))


def crash(log: str, seed: int, threads: int, tasks: int) -> None:
    writer = LogWriter.open(log)

    def thread_main(t: int) -> None:
        rng = random.Random(seed * 1000 + t)
        for i in range(10**9):
            if rng.random() < 0.5:
                report([writer.append(make_event(rng, f"t{t}-{i}"))])
            else:
                n = rng.randint(1, 4)
                report(writer.append_many([make_event(rng, f"t{t}-{i}-{k}") for k in range(n)]))

    async def task_main(k: int) -> None:
        rng = random.Random(seed * 1000 + 500 + k)
        for i in range(10**9):
            report([await writer.append_async(make_event(rng, f"a{k}-{i}"))])

    async def all_tasks() -> None:
        await asyncio.gather(*(task_main(k) for k in range(tasks)))

    for t in range(threads):
        threading.Thread(target=thread_main, args=(t,), daemon=True).start()
    asyncio.run(all_tasks())


def hold(log: str) -> None:
    writer = LogWriter.open(log)
    say(f"ready {os.getpid()}")
    n = writer.last_seq
    for line in sys.stdin:
        command = line.split()
        if command[0] == "append":
            seqs = []
            for _ in range(int(command[1])):
                n += 1
                seqs.append(writer.append(Started(item_id=f"q{n}", request={"n": n})).seq)
            say("acked " + " ".join(map(str, seqs)))
        elif command[0] == "close":
            writer.close()
            say("closed")


def try_open(log: str) -> None:
    try:
        writer = LogWriter.open(log)
    except LogLockedError as exc:
        say(f"locked {exc.pid}")
    else:
        writer.close()
        say("opened")


if __name__ == "__main__":
    mode, log, *rest = sys.argv[1:]
    if mode == "crash":
        crash(log, *map(int, rest))
    elif mode == "hold":
        hold(log)
    elif mode == "try-open":
        try_open(log)
    else:
        sys.exit(f"unknown mode {mode}")
