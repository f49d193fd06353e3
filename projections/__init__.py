"""Pure folds of events into what people read: responses.jsonl, conversation files,
summary.json, exports, comparisons. No network I/O; depends only on ``ledger``.
"""

__all__ = ["fold", "projector", "summary", "export", "replay", "compare"]
