"""`ledger run DATASET ...` and `ledger resume RUN`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ledger.layout import find_run

from .app import app

if TYPE_CHECKING:
    from runners.session import Prepared, Session
from .common import RunsDir, err, handled, out
from .progress import make_bar, summary_table, ticker


@app.command("run")
def run(
    dataset: Annotated[str, typer.Argument(help="JSONL, CSV, Parquet or OpenAI Batch input file.")],
    model: Annotated[Optional[str], typer.Option(help="Model name. Without --model and --base-url: the built-in simulator.")] = None,
    base_url: Annotated[Optional[list[str]], typer.Option("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; repeat to spread over several.")] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    samples: Annotated[int, typer.Option(help="Run each item N times (s0..sN-1).")] = 1,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N items.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 32,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 60.0,
    retries: Annotated[int, typer.Option(help="Retries per request on 429/5xx/timeouts/connection errors.")] = 5,
    temperature: Annotated[Optional[float], typer.Option()] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens")] = None,
    system: Annotated[Optional[str], typer.Option(help="System message for every conversation.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Prompt template, e.g. 'Q: {prompt}\\nA:' (item fields by name).")] = None,
    parser: Annotated[str, typer.Option(help="text, regex:PATTERN, json[:field], choice, number or module:function.")] = "text",
    price_in: Annotated[Optional[float], typer.Option("--price-in", help="USD per million prompt tokens.")] = None,
    price_out: Annotated[Optional[float], typer.Option("--price-out", help="USD per million completion tokens.")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Name the run; an existing id resumes it.")] = None,
    skip_failed: Annotated[bool, typer.Option("--skip-failed", help="On resume, do not retry finally failed items.")] = False,
    sim: Annotated[Optional[str], typer.Option("--sim", help="Embedded simulator settings as JSON, e.g. '{\"rate_429\": 0.2}'.")] = None,
    rpm: Annotated[Optional[int], typer.Option(help="Requests per minute, at most.")] = None,
    tpm: Annotated[Optional[int], typer.Option(help="Tokens per minute, at most (estimated, corrected by reported usage).")] = None,
    give_up_after: Annotated[Optional[float], typer.Option("--give-up-after", help="Seconds all endpoints may stay down before the run stops (exit 75, resumable).")] = None,
    max_context: Annotated[Optional[int], typer.Option("--max-context", help="Tokens; longer conversations fail without a request.")] = None,
    no_preflight: Annotated[bool, typer.Option("--no-preflight", help="Skip the GET /models check.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="With --limit: a reproducible random subset.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Send nothing: write plan.jsonl and print the estimate.")] = False,
    show_first: Annotated[bool, typer.Option("--show-first", help="Print the first request and reply in full.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """Run every item of DATASET against a model; resumable at any moment."""
    from runners.config import RunConfig
    from runners.session import plan_only, prepare

    with handled():
        config = RunConfig(
            model=model or "sim-1", base_url=(base_url or [""])[0], base_urls=list(base_url or []), api_key_env=api_key_env,
            samples=samples, limit=limit, rpm=rpm, tpm=tpm, give_up_after=give_up_after, max_context=max_context,
            preflight=not no_preflight, seed=seed,
            concurrency=concurrency, timeout=timeout, retries=retries, temperature=temperature, max_tokens=max_tokens,
            system=system, template=template, parser=parser, price_in=price_in, price_out=price_out,
            simulator=_sim(sim),
        )
        if model and not base_url:
            config.base_url = "https://api.openai.com/v1"
        prepared = prepare(dataset, config, runs_dir, run_id, skip_failed)
        if dry_run:
            report = plan_only(prepared)
            out.print(json.dumps(report))
            return
        raise typer.Exit(_execute(prepared, show_first))


@app.command("resume")
def resume(
    run: Annotated[str, typer.Argument(help="Run id (or run directory).")],
    skip_failed: Annotated[bool, typer.Option("--skip-failed", help="Do not retry finally failed items.")] = False,
    runs_dir: RunsDir = "runs",
) -> None:
    """Continue a stopped or crashed run: only unfinished work is sent."""
    from runners.session import prepare_resume

    with handled():
        prepared = prepare_resume(find_run(runs_dir, run), skip_failed)
        raise typer.Exit(_execute(prepared, False))


def _sim(text: str | None) -> dict:
    from ledger.errors import InputError

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
    from runners.session import run_prepared

    config = prepared.config
    bar = make_bar()
    task = bar.add_task("running", total=None, rate="", extra="")

    def planned(session: "Session") -> None:  # the bar appears once the run is open: errors stay one line
        _print_header(prepared, session)
        bar.start()

    try:
        session, reason = run_prepared(prepared, on_planned=planned,
                                       on_tick=ticker(bar, task, (config.price_in, config.price_out), show_first))
    except KeyboardInterrupt:  # a Ctrl-C after the run stopped, while the log was closing
        bar.stop()
        err.print(f"interrupted while closing the run; resume with: {_resume_command(prepared)}", markup=False, highlight=False)
        return 130
    finally:
        bar.stop()
    with open(prepared.paths.summary, "rb") as f:
        summary = json.loads(f.read())
    out.print(summary_table(summary))
    out.print(f"outputs: {prepared.paths.dir}")
    code = session.exit_code(reason, summary)
    for line in _end_lines(prepared, session, summary, code):
        err.print(line, markup=False, highlight=False)
    return code


def _end_lines(prepared: "Prepared", session: "Session", summary: dict, code: int) -> list[str]:
    """What a user must read at the end: internal errors, and work left pending -- how
    much, why, and the command that continues it."""
    progress = session.engine.progress if session.engine else None
    internal = progress.internal if progress else []
    more = (progress.errors.get("internal", 0) if progress else 0) - len(internal)
    lines = internal + ([f"... and {more} more internal errors (each a `failed` event: see `ledger log`)"] if more > 0 else [])
    pending = summary.get("counts", {}).get("pending") or 0
    stop_reason = progress.stop_reason if progress else ""
    items = f"{pending} item{'s' if pending != 1 else ''} pending"
    if code == 75:
        lines.append(f"every endpoint stayed down past --give-up-after; {items}")
    elif code == 130:
        lines.append(f"interrupted; {items}")
    elif pending and stop_reason.startswith("error"):
        lines.append(f"stopped by an error ({stop_reason[len('error: '):]}); {items}")
    elif pending:
        lines.append(f"the session ended with {items} (neither done nor failed)")
    if code in (75, 130) or pending:
        lines.append(f"resume with: {_resume_command(prepared)}")
    return lines


def _resume_command(prepared: "Prepared") -> str:
    import os
    import shlex

    runs_dir = os.path.dirname(os.path.abspath(prepared.paths.dir))
    default = os.path.abspath(os.environ.get("LEDGER_RUNS_DIR") or "runs")
    extra = "" if runs_dir == default else f" --runs-dir {shlex.quote(runs_dir)}"
    return f"ledger resume {shlex.quote(prepared.paths.run_id)}{extra}"


def _print_header(prepared: "Prepared", session: "Session") -> None:
    config = prepared.config
    endpoint = "built-in simulator (no key needed)" if config.embedded else config.base_url
    out.print(f"run {prepared.paths.run_id}")
    out.print(f"model {config.model} @ {endpoint}")
    out.print(f"dataset {prepared.dataset.path} ({prepared.dataset.items} items x {config.samples} samples)")
    out.print(f"output {prepared.paths.dir}")
    if prepared.resume:
        f = session.found
        out.print(f"resume: {f.done} done, {f.failed} failed{' (skipped)' if prepared.skip_failed else ''}, "
                  f"{f.never_started} never started, {f.in_flight} in flight at the crash "
                  f"(sent again, ~{f.in_flight_tokens:,} prompt tokens); {f.to_send} to send")
