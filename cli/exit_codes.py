"""The exit code of `ledger run` / `ledger resume`, from what the session returned.

0 all done; 1 failures, an error, or work left pending by a completed session; 2 never here
(bad input stops before a session); 75 every endpoint stayed down past --give-up-after
(EX_TEMPFAIL: resumable); 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

from typing import Any

__all__ = ["exit_code"]


def exit_code(reason: str, stop_reason: str, projections_failed: bool, summary: dict[str, Any]) -> int:
    """``reason``: the session's end (completed / interrupted / error); ``stop_reason``: the
    runner's progress.stop_reason; ``summary``: the run's summary.json."""
    if reason == "error" or projections_failed:
        return 1
    if stop_reason.startswith("endpoint down"):
        return 75
    if reason == "interrupted":
        return 130
    counts = summary.get("counts", {})
    return 1 if counts.get("failed") or counts.get("pending") else 0
