"""Kill points for the crash tests: ``LEDGER_BATCH_CRASH=STEP:N`` makes the process kill
itself (SIGKILL, as ``kill -9``: no cleanup, no flush) the N-th time the batch runner reaches
STEP (``*``: any step); the step it dies at is written first to the file named by
``LEDGER_BATCH_CRASH_NOTE``, if set. Unset (always, outside the tests) it costs one
dictionary lookup per call.

Steps, in a chunk's order: ``planned`` (its batch_planned is durable, nothing uploaded),
``uploaded`` (the file is at the provider, its event not written), ``file_event`` (between
the upload's event and the create), ``created`` (the batch exists, its event not written),
``submitted`` (after batch_submitted), ``polled`` (after a batch_status), ``downloaded`` (the
results are read, none recorded), ``results`` (after each group of results is durable),
``done`` (after batch_done).
"""

from __future__ import annotations

import os
import signal

from llm_ledger.ledger import fs

__all__ = ["crash_point", "ENV"]

ENV = "LEDGER_BATCH_CRASH"
_seen: dict[str, int] = {}


def crash_point(step: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name not in (step, "*"):
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(nth or 1):
        note = os.environ.get(ENV + "_NOTE")
        if note:
            with fs.open_file(note, "w") as f:
                f.write(step)
        os.kill(os.getpid(), signal.SIGKILL)
