"""`ledger run DATASET ...` and `ledger resume RUN`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import LedgerError
from llm_ledger.ledger.layout import find_run
from llm_ledger.projections.numbers import count, plural
from llm_ledger.runners.parsers import PARSERS

from .app import app
from .common import RunsDir, err, error_line, fail, handled, out, resume_line

if TYPE_CHECKING:
    from rich.table import Table

    from llm_ledger.runners.prepare import Prepared
    from llm_ledger.runners.session import Session


PARSER_KINDS = ", ".join(kind.usage for kind in PARSERS.values())


# options of `run` that `resume` takes too (how requests are sent, never what)
TransportOption = Annotated[Optional[str], typer.Option(help="How a request reaches the model: http (default; aiohttp, lean), openai (the openai SDK over HTTP), simulator (the built-in simulator in-process, no socket).")]
CacheOption = Annotated[Optional[bool], typer.Option("--cache/--no-cache", help="Serve a request whose reply a run under --runs-dir already holds (same endpoint, model and whole body) from that log instead of sending it. On by default: a sampled request (temperature above 0 or unset, or n > 1) per sample index, so --samples 3 after --samples 1 buys two new samples; --no-cache: send everything (fresh draws).")]
CacheMaxAgeOption = Annotated[Optional[str], typer.Option("--cache-max-age", metavar="AGE", help="Serve only cached replies received within AGE, e.g. 12h, 30d, 2w.")]


@app.command("run")
def run(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="JSONL, CSV, Parquet or OpenAI Batch input file.")],
    model: Annotated[Optional[str], typer.Option(help="Model name. Without --model and --base-url: the built-in simulator; with --base-url alone: the endpoint's only model.")] = None,
    base_url: Annotated[Optional[list[str]], typer.Option("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; repeat to spread over several.")] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    samples: Annotated[int, typer.Option(help="Ask each item N times (samples 0 to N-1), for pass@k and agreement.")] = 1,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N items.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most (1 to 10,000).")] = 32,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds for each request, connect to last byte.")] = 60.0,
    retries: Annotated[int, typer.Option(help="Retries per request after a 429, a 5xx, a timeout or a lost connection.")] = 5,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature sent with each request (default: the endpoint's).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Longest reply, in tokens, for each request (default: the endpoint's).")] = None,
    system: Annotated[Optional[str], typer.Option(help="System message for every conversation.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Prompt template, e.g. 'Q: {prompt}\\nA:': {prompt}, {id} and any other field of the item by name; \\n and \\t are a newline and a tab (\\\\ a backslash).")] = None,
    parser: Annotated[str, typer.Option(help=f"{PARSER_KINDS} or module:function.")] = "text",
    runner: Annotated[Optional[str], typer.Option(help="How the plan is worked (default per-request: one request per turn); an unknown name lists the known ones.")] = None,
    transport: TransportOption = None,
    price_in: Annotated[Optional[float], typer.Option("--price-in", help="USD per million prompt tokens.")] = None,
    price_out: Annotated[Optional[float], typer.Option("--price-out", help="USD per million completion tokens.")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Name the run; an existing id resumes it.")] = None,
    skip_failed: Annotated[bool, typer.Option("--skip-failed", help="On resume, do not retry finally failed items.")] = False,
    sim: Annotated[Optional[str], typer.Option("--sim", help="Embedded simulator settings as JSON, e.g. '{\"rate_429\": 0.2}'.")] = None,
    sim_accuracy: Annotated[Optional[float], typer.Option("--sim-accuracy", metavar="SHARE", help="Built-in simulator (no --base-url): share of questions (prompts ending 'answer: X') answered right, the same ones for the same simulator seed (--sim '{\"seed\": N}'); e.g. 0.7.")] = None,
    rpm: Annotated[Optional[int], typer.Option(help="Requests per minute, at most.")] = None,
    tpm: Annotated[Optional[int], typer.Option(help="Tokens per minute, at most (estimated, corrected by reported usage).")] = None,
    give_up_after: Annotated[Optional[float], typer.Option("--give-up-after", help="Seconds all endpoints may stay down before the run stops (exit 75, resumable).")] = None,
    max_context: Annotated[Optional[int], typer.Option("--max-context", help="Tokens; longer conversations fail without a request.")] = None,
    no_preflight: Annotated[bool, typer.Option("--no-preflight", help="Skip the GET /models check.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="With --limit: a reproducible random subset (without --limit it has no effect).")] = None,
    batch: Annotated[bool, typer.Option("--batch", help="Send through the provider's Batch API (/v1/files + /v1/batches): half the price, results within 24 h; `ledger resume` picks up the batches.")] = False,
    batch_window: Annotated[Optional[str], typer.Option("--batch-window", metavar="DURATION", help="With --batch: stop waiting after this long (e.g. 30m, 24h); the batches keep running and `ledger resume` collects them.")] = None,
    batch_discount: Annotated[Optional[float], typer.Option("--batch-discount", metavar="SHARE", help="With --batch: the share taken off the per-request price (default 0.5: half price).")] = None,
    batch_max_requests: Annotated[Optional[int], typer.Option("--batch-max-requests", metavar="N", help="With --batch: requests per batch file, at most (default and OpenAI's limit: 50,000).")] = None,
    batch_max_bytes: Annotated[Optional[int], typer.Option("--batch-max-bytes", metavar="BYTES", help="With --batch: bytes per batch file, at most (default and OpenAI's limit: 200,000,000).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Send nothing (no API key, no network): write plan.jsonl and print the estimate.")] = False,
    cache: CacheOption = None,
    cache_max_age: CacheMaxAgeOption = None,
    show_first: Annotated[bool, typer.Option("--show-first", help="Print the first request and reply in full.")] = False,
    shards: Annotated[int, typer.Option(help="Split the plan into N shards, each its own process and log, merged at the end (--concurrency, --rpm, --tpm are split between them).")] = 1,
    workers: Annotated[str, typer.Option(help="Where shards run: local (processes on this machine) or ray[:ADDRESS] (Ray tasks; needs `pip install 'llm-ledger\\[ray]'` and a runs directory every node sees).")] = "local",
    runs_dir: RunsDir = "runs",
) -> None:
    """Run every item of a dataset (PATH) against a model; stop at any moment, resume later.

    A PATH ending in .toml is an experiment: one run per arm, run together (see README)."""
    if dataset.endswith(".toml"):
        from .experiment_cmd import run_experiment

        raise typer.Exit(run_experiment(ctx, dataset, runs_dir, dry_run=dry_run, skip_failed=skip_failed))
    from llm_ledger.runners.cache import parse_age
    from llm_ledger.runners.config import SIMULATOR_MODEL, RunConfig
    from llm_ledger.runners.dataset import interpret_escapes
    from llm_ledger.runners.plan import plan_only
    from llm_ledger.runners.prepare import prepare
    from llm_ledger.runners.registry import TRANSPORTS

    with handled():
        batching = _batch_settings(batch, runner, batch_window, batch_discount,
                                   {"batch_max_requests": batch_max_requests, "batch_max_bytes": batch_max_bytes})
        config = RunConfig(
            model=model or ("" if base_url else SIMULATOR_MODEL), base_url=(base_url or [""])[0],
            base_urls=list(base_url or []), api_key_env=api_key_env,
            samples=samples, limit=limit, rpm=rpm, tpm=tpm, give_up_after=give_up_after, max_context=max_context,
            preflight=not no_preflight, seed=seed,
            concurrency=concurrency, timeout=timeout, retries=retries, temperature=temperature, max_tokens=max_tokens,
            system=system, template=interpret_escapes(template) if template else template, parser=parser,
            price_in=price_in, price_out=price_out, simulator=_sim(sim, sim_accuracy, base_url), shards=shards, workers=workers,
            cache=cache, cache_max_age=parse_age(cache_max_age) if cache_max_age is not None else None,
            **{k: v for k, v in (("runner", runner), ("transport", transport)) if v is not None}, **batching,
        )
        if model and not base_url and getattr(TRANSPORTS.get(config.transport), "remote", True):
            config.base_url = "https://api.openai.com/v1"
        prepared = prepare(dataset, config, runs_dir, run_id, skip_failed, typed=_typed(ctx), dry_run=dry_run)
        for note in prepared.notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        if dry_run:
            out.print(_plan_table(plan_only(prepared), config.batch_discount if config.runner == "batch" else None))
            return
        raise typer.Exit(_execute(prepared, show_first))


# option name -> the RunConfig fields it sets, where they differ
_FIELDS = {"base_url": ("base_url", "base_urls"), "sim": ("simulator",), "sim_accuracy": ("simulator",), "no_preflight": ("preflight",),
           "batch": ("runner",)}


def _batch_settings(batch: bool, runner: str | None, window: str | None, discount: float | None,
                    limits: dict[str, int | None]) -> dict:
    """--batch is ``runner = "batch"``; its window, discount and file limits (RunConfig fields,
    checked with the others by ``check_config``)."""
    from llm_ledger.ledger.errors import InputError
    from llm_ledger.runners.batch_window import parse_window

    settings: dict = {}
    if batch:
        if runner not in (None, "batch"):
            raise InputError(f"--batch runs the batch runner: it cannot go with --runner {runner}")
        settings["runner"] = "batch"
    limits = {k: v for k, v in limits.items() if v is not None}
    if (window is not None or discount is not None or limits) and not (batch or runner == "batch"):
        raise InputError("--batch-window, --batch-discount and --batch-max-* go with --batch")
    settings.update(limits)
    if window is not None:
        settings["batch_window"] = parse_window(window)
    if discount is not None:
        settings["batch_discount"] = discount
    return settings


def _typed(ctx: typer.Context) -> set[str]:
    """The RunConfig fields the user set (command line or environment), not left at defaults."""
    given = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # by name: typer may carry its own copy of click's enum
    return {f for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") in given
            for f in _FIELDS.get(name, (name,))}


def _plan_table(report: dict, batch_discount: float | None = None) -> "Table":
    from rich.table import Table

    table = Table(title="dry run: nothing sent", show_header=False)
    price = report["prompt_cost_usd_estimate"], report["completion_cost_usd_max"]
    bound = report["completion_tokens_max"]
    rows = [
        ("plan", report["plan"]),
        ("model", report["model"]),
        ("items x samples", f"{report['items']:,} x {report['samples']:,}"),
        ("requests (all turns)", f"{report['requests']:,}"),
        ("cache", _cache_row(report)),
        ("prompt tokens (estimate)", f"~{report['prompt_tokens_estimate']:,}"),
        ("completion tokens (at most)", f"{bound:,}" if bound is not None else
         f"no bound: {report['requests_without_max_tokens']:,} requests without --max-tokens"),
        ("prompt cost (estimate)", f"~{_usd(price[0])}" if price[0] is not None else "- (no --price-in)"),
        ("completion cost (at most)", _usd(price[1]) if price[1] is not None else
         "- (no --price-out)" if bound is not None else "- (no bound)"),
    ]
    if batch_discount is not None:  # the prices above are the batch's already (prepare.py)
        rows.append(("price", f"Batch API: {100 * (1 - batch_discount):g}% of the per-request price "
                              f"(--batch-discount {batch_discount:g})"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _cache_row(report: dict) -> str:
    cached, state = report.get("cached_requests", 0), report.get("cache", "on")
    if state != "on":
        return state
    if not cached:
        return "no request is answered by an earlier run's log"
    return (f"{cached:,} of {report['requests']:,} answered by earlier runs: "
            "not sent, not paid, not counted below")


def _usd(value: float) -> str:
    from llm_ledger.projections.numbers import usd

    return usd(value)


@app.command("resume")
def resume(
    run: Annotated[str, typer.Argument(help="Run id (or run directory), or an experiment's name (every arm).")],
    skip_failed: Annotated[bool, typer.Option("--skip-failed", help="Do not retry finally failed items.")] = False,
    concurrency: Annotated[Optional[int], typer.Option(help="Requests in flight at most, for this session.")] = None,
    rpm: Annotated[Optional[int], typer.Option(help="Requests per minute, for this session.")] = None,
    tpm: Annotated[Optional[int], typer.Option(help="Tokens per minute, for this session.")] = None,
    base_url: Annotated[Optional[list[str]], typer.Option("--base-url", help="Other endpoint(s) serving the same model, for this session.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="Environment variable holding the key, for this session.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Deadline in seconds for each request (connect to last byte), for this session.")] = None,
    give_up_after: Annotated[Optional[float], typer.Option("--give-up-after", help="Seconds all endpoints may stay down, for this session.")] = None,
    batch_window: Annotated[Optional[str], typer.Option("--batch-window", metavar="DURATION", help="A --batch run: stop waiting after this long, for this session (e.g. 30m).")] = None,
    workers: Annotated[Optional[str], typer.Option(help="A sharded run: where its shards run now, local or ray[:ADDRESS].")] = None,
    transport: TransportOption = None,
    cache: CacheOption = None,
    cache_max_age: CacheMaxAgeOption = None,
    runs_dir: RunsDir = "runs",
) -> None:
    """Continue a stopped or crashed run: only unfinished work is sent.

    What is sent is fixed by the run; only how it is sent can change (endpoints, limits,
    timeouts), for this session only, and the run's log records the change."""
    from llm_ledger.runners.prepare import prepare_resume

    overrides = {"concurrency": concurrency, "rpm": rpm, "tpm": tpm, "api_key_env": api_key_env, "timeout": timeout,
                 "give_up_after": give_up_after, "workers": workers, "transport": transport, "cache": cache}
    if base_url:
        overrides.update(base_url=base_url[0], base_urls=list(base_url))
    from .experiment_cmd import is_experiment, resume_experiment

    if is_experiment(runs_dir, run):  # `ledger resume EXPERIMENT`: every arm with work left
        raise typer.Exit(resume_experiment(run, runs_dir, skip_failed, {k: v for k, v in overrides.items() if v is not None}))
    with handled():
        if batch_window is not None:
            from llm_ledger.runners.batch_window import parse_window

            overrides["batch_window"] = parse_window(batch_window)
        if cache_max_age is not None:
            from llm_ledger.runners.cache import parse_age

            overrides["cache_max_age"] = parse_age(cache_max_age)
        prepared = prepare_resume(find_run(runs_dir, run), skip_failed, {k: v for k, v in overrides.items() if v is not None})
        raise typer.Exit(_execute(prepared, False))


def _sim(text: str | None, accuracy: float | None = None, base_url: list[str] | None = None) -> dict:
    from llm_ledger.ledger.errors import InputError

    if accuracy is not None:
        if base_url:
            raise InputError("--sim-accuracy is for the built-in simulator: with --base-url the endpoint answers")
        return {**_sim(text), "accuracy": accuracy}
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--sim: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise InputError("--sim: expected a JSON object")
    return value


def _execute(prepared: "Prepared", show_first: bool) -> int:
    if prepared.config.shards > 1:
        from .merge_cmd import execute_sharded

        return execute_sharded(prepared)
    from llm_ledger.runners.session import run_prepared

    from .exit_codes import exit_code
    from .interrupts import install_interrupts
    from .progress import RunDisplay, make_live, start_live, stop_live, summary_table, ticker

    config = prepared.config
    display = RunDisplay((config.price_in, config.price_out), config.concurrency)
    live = make_live(display)
    opened = []

    def planned(session: "Session") -> None:  # the display appears once the run is open: errors stay one line
        opened.append(True)
        _print_header(prepared, session)
        start_live(live)

    try:
        with handled():
            try:
                session, reason = run_prepared(prepared, on_planned=planned, on_running=install_interrupts,
                                               on_tick=ticker(live, display, show_first))
            except (LedgerError, OSError) as exc:
                if not opened or isinstance(exc, BrokenPipeError):
                    raise
                stop_live(live)  # the error's one line says how to continue, too
                text, code = error_line(exc)
                raise fail(escape(f"{text}; {resume_line(prepared.paths)}"), code) from None
    except KeyboardInterrupt:  # a Ctrl-C outside the run's own handlers (starting, or closing the log)
        stop_live(live)
        err.print("interrupted", markup=False, highlight=False)
        if opened:
            _say_resume(prepared)
        return 130
    except Exception as exc:  # a bug: one line, not a traceback, with the way back
        if isinstance(exc, typer.Exit):
            raise
        stop_live(live)
        resume = f"; {resume_line(prepared.paths)}" if opened else ""
        from llm_ledger.runners.prepare import secrets_of
        from llm_ledger.runners.redaction import redact

        text = redact(" ".join(f"{type(exc).__name__}: {exc}".split())[:500], secrets_of(prepared.api_key, prepared.config))
        err.print(f"error: internal error: {text}{resume}", markup=False, highlight=False)  # one line, no key
        return 1
    finally:
        stop_live(live)
    with fs.open_file(prepared.paths.summary, "rb") as f:
        summary = json.loads(f.read())
    out.print(summary_table(summary))
    out.print(f"outputs: {prepared.paths.dir}")
    stop_reason = session.runner.progress.stop_reason if session.runner else ""
    code = exit_code(reason, stop_reason, session.projection_error is not None, summary)
    for line in end_lines(prepared, session, summary, code):
        err.print(line, markup=False, highlight=False)
    return code


def end_lines(prepared: "Prepared", session: "Session", summary: dict, code: int) -> list[str]:
    """What a user must read at the end: internal errors, and work left pending -- how
    much, why, and the command that continues it."""
    progress = session.runner.progress if session.runner else None
    internal = progress.internal if progress else []
    more = (progress.errors.get("internal", 0) if progress else 0) - len(internal)
    lines = internal + ([f"... and {more} more internal errors (each a `failed` event: see `ledger log`)"] if more > 0 else [])
    lines += [f"note: {note}" for note in getattr(session, "notes", [])]
    pending = summary.get("counts", {}).get("pending") or 0
    stop_reason = progress.stop_reason if progress else ""
    unit = "answer" if prepared.config.samples > 1 else "item"  # with --samples, each (item, sample) is one
    items = f"{plural(pending, unit)} pending"
    batch = prepared.config.runner == "batch"
    if stop_reason.startswith("batch window"):  # in batches at the provider: in flight, not waiting to be sent
        lines.append(f"--batch-window passed: {plural(pending, unit)} not finished{batches_left(prepared)}")
    elif code == 75:
        lines.append(f"every endpoint stayed down past --give-up-after; {items}")
    elif code == 130:
        lines.append(f"interrupted; {items}{batches_left(prepared) if batch and pending else ''}")
    elif pending and stop_reason.startswith("error"):
        lines.append(f"stopped by an error ({stop_reason[len('error: '):]}); {items}")
    elif pending:
        lines.append(f"the session ended with {items} (neither done nor failed)")
    if code in (75, 130) or pending:
        lines.append(resume_line(prepared.paths))
    return lines


def batches_left(prepared: "Prepared") -> str:
    """Where a stopped --batch run's pending requests are: at the provider, still running
    (resume collects them), or -- the built-in simulator lives in the session -- gone."""
    if prepared.config.embedded:
        return "; the built-in simulator's batches end with this session: `ledger resume` sends them again"
    return ("; their batches keep running at the provider: `ledger resume` collects them "
            "(`ledger cancel` cancels them)")


def _say_resume(prepared: "Prepared") -> None:
    err.print(resume_line(prepared.paths), markup=False, highlight=False)


def print_run_lines(prepared: "Prepared") -> None:
    """Which run, which model, which items, where the files go (a run's header, a sharded
    run's too)."""
    config = prepared.config
    endpoint = "built-in simulator (no key needed)" if config.embedded else config.base_url
    out.print(f"run {prepared.paths.run_id}", markup=False)
    out.print(f"model {config.model} @ {endpoint}", markup=False)
    out.print(f"dataset {prepared.dataset.path}: {dataset_extent(prepared.dataset.items, config.limit, config.seed, config.samples)}",
              markup=False)
    out.print(f"output {prepared.paths.dir}", markup=False)


def _print_header(prepared: "Prepared", session: "Session") -> None:
    """Once, before the display: which run, which model, which items, where the files go."""
    config = prepared.config
    print_run_lines(prepared)
    if prepared.resume:
        f = session.found
        out.print(f"resume: {f.done:,} done, {f.failed:,} failed{' (skipped)' if prepared.skip_failed else ''}, "
                  f"{f.never_started:,} never started, {in_flight_words(prepared, session)}", markup=False)


def in_flight_words(prepared: "Prepared", session: "Session") -> str:
    """What a resume does with the requests in flight at the crash, and how many are left:
    a request another run's log answers is copied from the cache, not sent (never promised
    to be sent, nor its tokens to be paid)."""
    config, f = prepared.config, session.found
    cache = getattr(session, "cache", None)
    cached = cache is not None and cache.enabled  # opened with --no-cache too (its replies feed the store): not looked up
    if config.runner == "batch":
        flight = (f"{f.in_flight:,} in flight (the built-in simulator's batches ended with their session: sent again)"
                  if config.embedded else f"{f.in_flight:,} in flight (their batches are looked up and collected; "
                  "sent again only if a batch ended without them)")
        return f"{flight}; {f.to_send:,} to finish"
    unless = ", unless the cache holds their replies" if cached else ""
    left = " (each looked up in the cache first)" if cached else ""
    return (f"{f.in_flight:,} in flight at the crash (sent again{unless}: ~{f.in_flight_tokens:,} prompt tokens); "
            f"{f.to_send:,} to send{left}")


def dataset_extent(items: int, limit: int | None, seed: int | None, samples: int) -> str:
    """``10 items``, ``50 of 100,000 items (--limit 50, seed 7)``, ``... x 3 samples``."""
    if limit is not None and limit < items:
        chosen = f"seed {seed}" if seed is not None else f"the first {count(limit)}"
        extent = f"{count(limit)} of {plural(items, 'item')} (--limit {limit}, {chosen})"
    else:
        extent = plural(items, "item")
    return extent if samples == 1 else f"{extent} x {plural(samples, 'sample')}"
