"""pass@1 and pass@k of a run with several samples count a sample that failed for good as
wrong, as ``accuracy`` does: pass@1 is that accuracy, and pass@k (over the items whose k
samples all finished) is never below pass@1 over the same items."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llm_ledger.projections.summary import _per_sample


def test_failed_samples_count_as_wrong_in_pass_at_1_and_pass_at_k():
    per_item = {"a": [[True, "x"], [False, "y"]], "b": [[False, "y"]], "c": [[True, "x"], [True, "x"], [True, "x"]],
                "n": [[None, "x"], [None, "x"], [None, "x"]]}  # n: no expected answer, scored nowhere
    failed = {("a", 2): SimpleNamespace(expected="x"), ("b", 1): SimpleNamespace(expected="x"),
              ("b", 2): SimpleNamespace(expected="x"), ("d", 0): SimpleNamespace(expected="x")}
    got = _per_sample(per_item, failed, 3)
    # a: T F F(failed) -> pass; b: F F F -> no; c: T T T -> pass; d: only one of 3 finished (failed)
    assert got["mean_accuracy"] == pytest.approx(4 / 10)  # 10 scored samples (d's one included), 4 right
    assert got["pass@3"] == pytest.approx(2 / 3) and got["pass_items"] == 3 and got["items"] == 5
    assert got["pass@3"] >= got["mean_accuracy"]
