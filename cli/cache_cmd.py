"""`ledger cache stats | explain RUN ITEM [--sample N] | clear [--older-than AGE]`."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from .app import app
from .common import RunsDir, handled, out

cache_app = typer.Typer(name="cache", help="The cross-run request cache: what it holds, why a request missed it, forgetting.",
                        no_args_is_help=True)
app.add_typer(cache_app)


def _print(data: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        out.print(json.dumps(data, ensure_ascii=False, default=str), soft_wrap=True, markup=False)
        return
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@cache_app.command("stats")
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """What the store under --runs-dir holds (brought up to date with every run's log first)."""
    from llm_ledger.projections import numbers as num
    from llm_ledger.runners.cache_explain import stats as store_stats, when

    with handled():
        s = store_stats(runs_dir)
        _print(s, as_json, [
            f"store      {s['store']} ({num.count(s['size_bytes'])} bytes)",
            f"entries    {num.count(s['entries'])} replies ({num.count(s['originals'])} as paid, {num.count(s['copies'])} "
            f"copies whose source is gone), from {num.count(s['runs_with_entries'])} of {num.count(s['runs_walked'])} runs",
            f"keys       {num.count(s['deterministic'])} deterministic (temperature 0), {num.count(s['per_sample'])} per sample",
            f"received   {when(s['oldest'] or 0)} to {when(s['newest'] or 0)}",
            *([f"cleared    replies received before {when(s['cleared_before'])} are forgotten"] if s["cleared_before"] else []),
        ])


@cache_app.command("explain")
def explain(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    item: Annotated[str, typer.Argument(help="Item id (the dataset's id field).")],
    sample: Annotated[int, typer.Option(help="Which sample of the item: 0 to N-1.", metavar="N")] = 0,
    turn: Annotated[Optional[int], typer.Option(metavar="N", help="Which turn of a multi-turn item (default: its last request).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """The cache key of an item's request and its parts; on a miss, the nearest cached request and every part that differs."""
    from llm_ledger.runners.cache_explain import explain as explained

    with handled():
        e = explained(runs_dir, run, item, sample, turn)
        _print(e, as_json, _explain_lines(e))


def _explain_lines(e: dict[str, Any]) -> list[str]:
    parts, how = e["parts"], e["this_run"]
    lines = [
        f"request   run {e['run']}, item {e['item_id']!r}, sample {e['sample']}, turn {e['turn']}",
        f"key       {e['key']}",
        f"endpoint  {parts['endpoint']}",
        f"model     {parts['model']}",
        f"params    {json.dumps(parts['params'], sort_keys=True)}",
        f"messages  {parts['messages']} (sha256 {parts['messages_sha256'][:16]}...)",
        f"sample    {'not in the key: temperature 0, every sample is one request' if e['deterministic'] else parts['sample']}",
    ]
    if how["reply"] == "cached":
        lines.append(f"this run  reply copied from the cache: run {how['from_run']} seq {how['from_seq']} ({how['received']})")
    elif how["reply"] == "sent":
        age = e.get("run_cache_max_age")
        off = " (the run had --no-cache)" if e["run_cache"] is False else \
            f" (the run had --cache-max-age {_age(age)}: older replies were not served)" if age else ""
        lines.append(f"this run  sent{off}: reply seq {how['seq']} ({how['received']})")
    else:
        lines.append("this run  no reply yet")
    look = e["lookup"]
    if look["found"]:
        lines.append(f"lookup    hit: run {look['run']} seq {look['seq']}, item {look['item_id']!r} ({look['received']})")
        return lines
    own = " (only this run's own reply holds the key)" if look.get("own_reply_only") else ""
    lines.append(f"lookup    miss: no other run holds this key{own}")
    if look.get("own_reply_only") and (e["run_cache"] is False or e.get("run_cache_max_age")):
        lines.append("          the store keeps the newest reply to a request: this run's own replaced any older "
                     "one (not served: see above), which its run's log still holds")
    near = e.get("nearest")
    if near is None:
        lines.append("nearest   none: the store holds no other run's request")
        return lines
    lines.append(f"nearest   run {near['run']} seq {near['seq']}, item {near['item_id']!r} sample {near['sample']} ({near['received']})")
    for d in near["differs"]:
        where = f" [message {d['index']}]" if "index" in d else ""
        lines.append(f"  differs {d['part']}{where}: here {json.dumps(d['here'], ensure_ascii=False)}, "
                     f"cached {json.dumps(d['cached'], ensure_ascii=False)}")
    if not near["differs"]:
        lines.append("  differs nothing in the body: the key differs by the sample index")
    return lines


def _age(seconds: float) -> str:
    """Seconds as the largest whole unit --cache-max-age takes (30d, 12h, 90s)."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@cache_app.command("clear")
def clear(
    older_than: Annotated[Optional[str], typer.Option("--older-than", metavar="AGE", help="Only replies received more than AGE ago, e.g. 30d, 12h.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """Forget cached replies (all, or those older than AGE); the runs keep them, later runs send those requests again."""
    from llm_ledger.projections import numbers as num
    from llm_ledger.runners.cache import parse_age
    from llm_ledger.runners.cache_explain import clear as cleared, when

    with handled():
        age = parse_age(older_than, "--older-than") if older_than is not None else None
        c = cleared(runs_dir, age)
        _print(c, as_json, [f"forgot {num.count(c['removed'])} cached replies received before {when(c['before'])}; "
                            f"{num.count(c['remaining'])} remain"])
