"""The tables ``ledger sql`` queries, one builder each, in one registry (``VIEWS``).

Each builder takes the runs of a runs directory and returns an Arrow table that DuckDB scans
in place (registered, never copied into a database of its own). They read what every other
reader reads, without the writer's lock, so a live run is seen as it is at that moment:

``runs``    one row per run, from ``runs.run_status`` (the status and counts ``ledger status``
            shows) and ``summary.json``: run_id, model, dataset, source ("" for a run made by
            ``ledger run``, "imported"), status, planned, done, failed, in_flight, pending,
            accuracy, accuracy_reviewed (with a person's verdicts, `ledger review`), scored, correct,
            parse_success_rate, prompt_tokens, completion_tokens,
            cost_usd, latency_p50, wall_time_s, events (the log's last seq), parser, samples,
            started (run_started's time), finished (the last event's time; null while running),
            experiment and arm (the experiment the run is an arm of, `ledger run eval.toml`; null
            for a run of its own).
            The summary's figures are null when ``summary.json`` does not vouch for the log
            (as ``ledger status`` shows no accuracy then).
``rows``    one row per (item, sample): ``ledger export``'s columns (``export.rows_table``:
            run_id, item_id, sample, a column per metadata field, model, prompt, response,
            parsed, expected, correct, tokens, latency, attempts, error, finished_at, seq,
            conversation), run after run, then ``experiment`` (as in ``runs``). A run with no
            ``responses.jsonl`` yet contributes no rows, with a note (``rows_absent``): a sharded
            run until its shards are merged (the merge writes its top level's rows), a live run
            before its projector wrote the file.
``events``  the raw event table of ``export --events`` (run_id, seq, ts, type, item_id, sample,
            turn, attempt, data: the event as JSON); built only when a query names it.
``reviews`` every ``reviewed`` event of every run (``reviews.review_table``: run_id, item_id,
            sample, turn, seq, target_seq, reply_sha256, verdict, note, who, ts, stale, latest).

Adding a table is one builder and one line in ``VIEWS`` (with, if a run may have nothing to
give it yet, a function saying why: ``View.absent``).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.layout import RunPaths

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["View", "VIEWS", "runs_table", "rows_table", "rows_absent", "events_table", "reviews_table"]


class View(NamedTuple):
    build: Callable[[Sequence[RunPaths]], "pa.Table"]
    about: str  # one line, for `ledger sql --help` and the prompt's `.tables`
    # Why a run has nothing for this view yet (None: it has): such a run is left out of the
    # view with this note, rather than failing every query of the directory.
    absent: Callable[[RunPaths], str | None] | None = None


def _runs_schema() -> pa.Schema:
    import pyarrow as pa

    when = pa.timestamp("us", tz="UTC")
    return pa.schema([
        ("run_id", pa.string()), ("model", pa.string()), ("dataset", pa.string()), ("source", pa.string()),
        ("status", pa.string()), ("planned", pa.int64()), ("done", pa.int64()), ("failed", pa.int64()),
        ("in_flight", pa.int64()), ("pending", pa.int64()), ("accuracy", pa.float64()), ("accuracy_reviewed", pa.float64()), ("scored", pa.int64()),
        ("correct", pa.int64()), ("parse_success_rate", pa.float64()), ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()), ("latency_p50", pa.float64()),
        ("wall_time_s", pa.float64()), ("events", pa.int64()), ("parser", pa.string()), ("samples", pa.int64()),
        ("started", when), ("finished", when), ("experiment", pa.string()), ("arm", pa.string()),
    ])


def runs_table(runs: Sequence[RunPaths]) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist([_run_row(paths) for paths in runs], schema=_runs_schema())


def _run_row(paths: RunPaths) -> dict[str, Any]:
    """A run's row. A non-live run's projections are brought up to date first (as an export
    does), so that its summary vouches for its log; a damaged run is a row saying so."""
    from llm_ledger.ledger.lock import is_locked

    from .projector import refresh
    from .runs import first_event, read_summary, run_status

    try:
        # None for a live run (its own projector keeps the files current) and for a sharded run
        # not merged yet: its top level's log holds only run_started, nothing to fold.
        state = None if _unmerged(paths) or is_locked(paths.lock) else refresh(paths)
        started = first_event(paths)
        info = run_status(paths)
    except LedgerError as exc:
        return {"run_id": paths.run_id, "status": f"damaged: {exc}"}
    summary = read_summary(paths) if info.summary_current else {}
    config = started.config if started is not None else {}
    tokens = summary.get("tokens") or {}
    return {
        "run_id": paths.run_id, "model": str(config.get("model", "")) or summary.get("model"),
        "dataset": started.dataset if started else None, "source": started.source if started else None,
        "status": info.status, "planned": info.planned, "done": info.done, "failed": info.failed,
        "in_flight": info.in_flight, "pending": info.pending, "accuracy": info.accuracy,
        "accuracy_reviewed": summary.get("accuracy_reviewed"),
        "scored": summary.get("scored"), "correct": summary.get("correct"),
        "parse_success_rate": summary.get("parse_success_rate"), "prompt_tokens": tokens.get("prompt"),
        "completion_tokens": tokens.get("completion"), "cost_usd": summary.get("cost_usd"),
        "latency_p50": (summary.get("latency_s") or {}).get("p50"), "wall_time_s": summary.get("wall_time_s"),
        "events": info.events, "parser": config.get("parser"), "samples": config.get("samples"),
        "started": _time(started.ts) if started else None,
        "finished": _time(state.last_ts) if state is not None and info.status != "running" and state.last_ts else None,
        **_experiment(config),
    }


def _experiment(config: dict[str, Any]) -> dict[str, Any]:
    """The experiment and arm a run belongs to (null for a run of its own)."""
    from .runs import experiment_of

    found = experiment_of(config)
    return {"experiment": found.get("name") or None, "arm": found.get("arm") or None}


def _time(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


def rows_table(runs: Sequence[RunPaths]) -> pa.Table:
    import pyarrow as pa

    from .export import rows_table as table
    from .runs import first_event

    rows = table(runs)
    experiment: dict[str, str | None] = {}
    for paths in runs:
        try:
            started = first_event(paths)
        except LedgerError:
            started = None
        experiment[paths.run_id] = _experiment(started.config if started is not None else {})["experiment"]
    names = [experiment.get(run) for run in rows.column("run_id").to_pylist()] if "run_id" in rows.column_names else []
    return rows.append_column("experiment", pa.array(names, pa.string()))


def _unmerged(paths: RunPaths) -> bool:
    """A sharded run whose top level is not its shards as they are (never merged, running, or
    stopped before merging: merge_status.unmerged, the test export and compare apply too)."""
    from .merge_status import unmerged

    return bool(unmerged(paths))


def rows_absent(paths: RunPaths) -> str | None:
    """Why a run has no rows to read yet, or None. A run that is not live and lacks its
    ``responses.jsonl`` has it written here from its log (``refresh``), as an export would."""
    from llm_ledger.ledger.lock import is_locked

    from .projector import refresh
    from .runs import run_status

    if _unmerged(paths):
        how = (", as it ends" if run_status(paths).status == "running"
               else f": ledger merge {paths.run_id}, or ledger resume {paths.run_id} to finish it")
        return f"run {paths.run_id} has no rows yet (a sharded run's rows appear when its shards are merged{how})"
    if not os.path.isfile(paths.responses):
        if not is_locked(paths.lock):
            refresh(paths)
        if not os.path.isfile(paths.responses):  # a writer holds the run: its projector writes the file
            return f"run {paths.run_id} has no rows yet (it is running and has recorded no reply so far)"
    return None


def reviews_table(runs: Sequence[RunPaths]) -> pa.Table:
    from .reviews import review_table

    return review_table(runs)


def events_table(runs: Sequence[RunPaths]) -> pa.Table:
    import pyarrow as pa

    from .event_table import SCHEMA, event_batches

    return pa.Table.from_batches(list(event_batches(runs)), schema=SCHEMA)


VIEWS: dict[str, View] = {
    "runs": View(runs_table, "one row per run: status, counts, accuracy, cost, started/finished"),
    "rows": View(rows_table, "one row per (item, sample): the export's columns, with run_id", rows_absent),
    "events": View(events_table, "the raw event table: run_id, seq, ts, type, item_id, sample, turn, attempt, data"),
    "reviews": View(reviews_table, "a person's verdicts (`ledger review`): run_id, item_id, sample, verdict, note, who, ts, stale"),
}
