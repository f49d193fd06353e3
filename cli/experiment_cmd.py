"""`ledger run eval.toml` and `ledger resume EXPERIMENT`: an experiment's arms, run together.

Called by run_cmd.py (an argument ending in ``.toml`` is an experiment file) and by its
``resume`` (a name that is no run but an experiment's). The library does the work
(runners/experiment.py); this module prints the plan, the header, the live display (one
line per arm), the comparison table and the one line that says how to continue.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from llm_ledger.ledger.errors import InputError, LedgerError
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.projections.numbers import plural

from .common import err, error_line, handled, out, resume_line, run_command

if TYPE_CHECKING:
    from rich.table import Table

    from llm_ledger.runners.experiment import ArmResult, ArmRun

__all__ = ["run_experiment", "resume_experiment", "is_experiment", "print_arm_table", "compare_experiment",
           "experiment_status"]

# `ledger run FILE.toml` takes these besides the file; every other setting is the file's
ALLOWED = {"dataset", "dry_run", "skip_failed", "runs_dir"}
_BATCH = ("is not for experiments: an experiment's arms send per request, together, sharing each provider's "
          "limits; run an arm's settings as one `ledger run DATASET --batch` instead")
NOT_FOR_EXPERIMENTS = {"show_first": "prints one run's first exchange; an experiment's arms run together: "
                                     "`ledger show <experiment>.<arm> ITEM` shows an item of an arm",
                       "shards": "is not for experiments: an experiment's arms run together in one process",
                       **{name: _BATCH for name in ("batch", "batch_window", "batch_discount", "batch_max_requests",
                                                    "batch_max_bytes")}}


def typed_options(ctx: typer.Context) -> list[str]:
    given = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")
    return sorted(name for name in ctx.params
                  if getattr(ctx.get_parameter_source(name), "name", "") in given and name not in ALLOWED)


def run_experiment(ctx: typer.Context, path: str, runs_dir: str, *, dry_run: bool, skip_failed: bool) -> int:
    from llm_ledger.runners.experiment import prepare_experiment
    from llm_ledger.runners.experiment_config import load_experiment

    with handled():
        extra = typed_options(ctx)
        for name in extra:
            if name in NOT_FOR_EXPERIMENTS:
                raise InputError(f"{path}: --{name.replace('_', '-')} {NOT_FOR_EXPERIMENTS[name]}")
        if extra:
            shown = ", ".join("--" + name.replace("_", "-") for name in extra)
            raise InputError(f"{path}: an experiment's settings are in its file; {shown} cannot be given with it "
                             f"(put them in the file, at the top for every arm or in an arm)")
        spec = load_experiment(path)
        arms = prepare_experiment(spec, runs_dir, dry_run=dry_run, skip_failed=skip_failed)
        _notes(arms)
        if dry_run:
            out.print(_plan_table(spec.name, arms, {a.name: a.config.model for a in spec.arms}))
            return 0
    return _execute(spec.name, runs_dir, arms, [a.name for a in spec.arms])


def resume_experiment(name: str, runs_dir: str, skip_failed: bool, overrides: dict[str, Any]) -> int:
    from llm_ledger.projections.experiments import experiment_arms
    from llm_ledger.runners.experiment import prepare_experiment_resume, unstarted_arms

    with handled():
        arms = prepare_experiment_resume(runs_dir, name, skip_failed, overrides)
        path, missing = unstarted_arms(runs_dir, name)
    code = _execute(name, runs_dir, arms, [a.arm for a in experiment_arms(runs_dir, name)])
    if missing:
        err.print(f"note: {plural(len(missing), 'arm')} of {path} never started ({', '.join(missing)}): "
                  f"`ledger run {path}` starts {'it' if len(missing) == 1 else 'them'}", markup=False, highlight=False)
    return code


def is_experiment(runs_dir: str, name: str) -> bool:
    """A name that is no run but names an experiment's arms."""
    from llm_ledger.projections.experiments import experiment_arms

    if os.path.isfile(os.path.join(runs_dir, name, "events.log")) or os.path.isfile(os.path.join(name, "events.log")):
        return False
    try:
        return bool(experiment_arms(runs_dir, name))
    except OSError:  # an unreadable runs directory: the run lookup says so, on one line
        return False


def _notes(arms: list["ArmRun"]) -> None:
    for arm in arms:
        for note in arm.prepared.notes if arm.prepared else []:
            err.print(f"note: arm {arm.name}: {note}", markup=False, highlight=False)


def _plan_table(name: str, arms: list["ArmRun"], models: dict[str, str]) -> "Table":
    """--dry-run: per new arm, the requests, tokens and cost the plan implies; then the total
    (of the new arms). An arm whose run exists is not planned (a resume sends what is left
    of it, which `ledger resume` prices): its row says so and how many items are left."""
    from llm_ledger.projections.numbers import count, usd
    from llm_ledger.runners.plan import plan_only

    from .experiment_progress import fitted_table

    header = ("arm", "model", "items x samples", "requests", "prompt tokens (est.)", "completion (max)",
              "cost (est. + max)")
    rows = []
    totals = {"requests": 0, "cached": 0, "prompt": 0, "completion": 0, "cost": 0.0}
    unbounded = unpriced = False
    notes: list[str] = []  # the arms not planned, and why (a caption: never a column a narrow terminal drops)
    for arm in arms:
        if arm.prepared is None:
            what = "complete: nothing to send" if arm.state == "complete" and not arm.left else \
                f"exists (resume sends what is left: {plural(arm.left, 'item')})"
            rows.append((arm.name, models.get(arm.name, ""), "-", "-", "-", "-", "-"))
            notes.append(f"{arm.name}: {what}")
            continue
        report = plan_only(arm.prepared)
        bound = report["completion_tokens_max"]
        prompt_cost, completion_cost = report["prompt_cost_usd_estimate"], report["completion_cost_usd_max"]
        cost = None if prompt_cost is None or completion_cost is None else prompt_cost + completion_cost
        unbounded |= bound is None
        unpriced |= cost is None
        totals["requests"] += report["requests"]
        totals["cached"] += report["cached_requests"]
        totals["prompt"] += report["prompt_tokens_estimate"]
        totals["completion"] += bound or 0
        totals["cost"] += cost or 0.0
        rows.append((arm.name, report["model"], f"{count(report['items'])} x {count(report['samples'])}",
                     _requests(report["requests"], report["cached_requests"]), f"~{count(report['prompt_tokens_estimate'])}",
                     count(bound) if bound is not None else "no bound", usd(cost) if cost is not None else _why(report)))
    new = sum(a.prepared is not None for a in arms)
    rows.append(("total" if new == len(arms) else f"total ({new} new)", "", "", _requests(totals["requests"], totals["cached"]), f"~{count(totals['prompt'])}",
                 "no bound" if unbounded else count(totals["completion"]),
                 "- (see the arms)" if unpriced else usd(totals["cost"])))
    return fitted_table(f"experiment {escape(name)}: dry run, nothing sent", header, rows, out.width,
                        ("model", "items x samples", "completion (max)"), 2, bold_last=True, notes=notes)


def _requests(requests: int, cached: int) -> str:
    """Requests of the plan; those an earlier run's log answers (the cache) are not sent nor
    priced in the row's tokens and cost."""
    from llm_ledger.projections.numbers import count

    return f"{count(requests)} ({count(cached)} cached)" if cached else count(requests)


def _why(report: dict[str, Any]) -> str:
    if report["completion_tokens_max"] is None:
        return "- (no max_tokens)"
    return "- (no price)"


def _execute(name: str, runs_dir: str, arms: list["ArmRun"], order: list[str]) -> int:
    from llm_ledger.runners.experiment import run_arms

    from .experiment_progress import ExperimentDisplay
    from .interrupts import install_interrupts
    from .progress import make_live, start_live, stop_live

    where = RunPaths(os.path.join(runs_dir, name))  # for the resume line: `ledger resume NAME`
    todo = [a for a in arms if a.prepared is not None]
    display = ExperimentDisplay([(a.name, (a.prepared.config.price_in, a.prepared.config.price_out),  # type: ignore[union-attr]
                                  a.prepared.config.concurrency) for a in todo])  # type: ignore[union-attr]
    live = make_live(display)
    opened: list[bool] = []

    def planned(sessions: list[Any]) -> None:
        opened.append(True)
        _print_header(name, runs_dir, arms, sessions)
        start_live(live)

    results: list[ArmResult] = []
    try:
        with handled():
            if todo:
                results = run_arms(arms, on_planned=planned, on_tick=display.tick, on_running=install_interrupts)
            else:
                _print_header(name, runs_dir, arms, [])
    except KeyboardInterrupt:  # outside the runners' handlers: while opening or closing the arms
        stop_live(live)
        err.print("interrupted", markup=False, highlight=False)
        if opened or _any_started(runs_dir, name):
            err.print(resume_line(where), markup=False, highlight=False)
        return 130
    except Exception as exc:  # a bug: one line, not a traceback, with the way back
        if isinstance(exc, typer.Exit):
            raise
        stop_live(live)
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        err.print(f"error: internal error: {text}" + (f"; {resume_line(where)}" if opened else ""), markup=False,
                  highlight=False)
        return 1
    finally:
        stop_live(live)
    return _finish(name, runs_dir, where, results, order)


def _any_started(runs_dir: str, name: str) -> bool:
    from llm_ledger.projections.experiments import experiment_arms

    try:
        return bool(experiment_arms(runs_dir, name))
    except (LedgerError, OSError):
        return False


def _print_header(name: str, runs_dir: str, arms: list["ArmRun"], sessions: list[Any]) -> None:
    from .run_cmd import dataset_extent, in_flight_words

    states = {s: sum(a.state == s for a in arms) for s in ("new", "continued", "complete")}
    out.print(f"experiment {name}: {plural(len(arms), 'arm')} ({states['new']} new, {states['continued']} continued, "
              f"{states['complete']} complete)", markup=False)
    by_run = {s.paths.run_id: s for s in sessions}
    for arm in arms:
        if arm.prepared is None:
            out.print(f"  {arm.name}: run {arm.run_id}, complete", markup=False)
            continue
        config, info = arm.prepared.config, arm.prepared.dataset
        endpoint = "built-in simulator" if config.embedded else config.base_url
        line = (f"  {arm.name}: run {arm.run_id}, model {config.model} @ {endpoint} ({arm.provider}), "
                f"{dataset_extent(info.items, config.limit, config.seed, config.samples)}")
        session = by_run.get(arm.run_id)
        if arm.prepared.resume and session is not None:
            f = session.found
            line += f"; resume: {f.done:,} done, {f.failed:,} failed, {in_flight_words(arm.prepared, session)}"
        out.print(line, markup=False)
    out.print(f"output {os.path.abspath(runs_dir)}/{name}.<arm>", markup=False)


def _finish(name: str, runs_dir: str, where: RunPaths, results: list["ArmResult"], order: list[str]) -> int:
    import json

    from llm_ledger.ledger import fs

    from .exit_codes import exit_code

    codes = []
    lines = []
    unfinished = False  # an arm with items pending: the resume line is said
    for result in results:
        session, arm = result.session, result.arm
        progress = session.runner.progress if session.runner else None
        if result.error is not None:
            text, code = error_line(result.error) if isinstance(result.error, (LedgerError, OSError)) else (
                " ".join(f"internal error: {type(result.error).__name__}: {result.error}".split())[:500], 1)
            lines.append(f"arm {arm.name}: error: {text}")
            lines += [f"arm {arm.name}: note: {note}" for note in getattr(session, "notes", [])]
            codes.append(code if code != 2 else 1)
            continue
        try:
            with fs.open_file(arm.paths.summary, "rb") as f:
                summary = json.loads(f.read())
        except (OSError, ValueError) as exc:  # no figure of this arm can be vouched for: never a quiet 0
            detail = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else f"not JSON ({exc})"
            lines.append(f"arm {arm.name} (run {arm.run_id}): summary.json unreadable: {detail}; "
                         f"`{run_command('replay', arm.paths, '--rebuild')}` rewrites it")
            lines += [f"arm {arm.name}: {line}" for line in (progress.internal if progress else [])]
            lines += [f"arm {arm.name}: note: {note}" for note in getattr(session, "notes", [])]
            codes.append(1)
            continue
        code = exit_code(result.reason, progress.stop_reason if progress else "", session.projection_error is not None,
                         summary)
        codes.append(code)
        pending = (summary.get("counts") or {}).get("pending") or 0
        unfinished |= bool(pending)
        failed = (summary.get("counts") or {}).get("failed") or 0
        lines += [f"arm {arm.name}: {line}" for line in _arm_end_lines(arm, session, summary, code)]
        if failed and not pending and code != 75:
            lines.append(f"arm {arm.name}: {plural(failed, 'item')} failed (`ledger resume {name}` tries them again)")
    if damaged(print_arm_table(runs_dir, name, order)):  # named under the table
        codes.append(1)
    code = _worst(codes)
    if code == 130:
        lines.append("interrupted")
    for line in lines:
        err.print(line, markup=False, highlight=False)
    if code in (75, 130) or unfinished or any(r.error is not None for r in results):
        err.print(resume_line(where), markup=False, highlight=False)
    return code


# run_cmd's end lines name the command line's flags; an experiment's settings are its file's keys
_FILE_KEYS = {"--give-up-after": "give_up_after", "--batch-window": "batch_window"}


def _arm_end_lines(arm: "ArmRun", session: Any, summary: dict[str, Any], code: int) -> list[str]:
    """What `ledger run` says at a run's end -- internal errors, the session's notes (a cache
    that could not open), items pending and why -- in the same words (run_cmd's own lines),
    the flags named as the file's keys; each arm's resume line is the experiment's, said once."""
    from .run_cmd import end_lines

    own_resume = resume_line(arm.prepared.paths)  # type: ignore[union-attr]
    lines = []
    for line in end_lines(arm.prepared, session, summary, code):  # type: ignore[arg-type]
        if line == own_resume:
            continue
        for flag, key in _FILE_KEYS.items():
            line = line.replace(flag, key)
        lines.append(line)
    return lines


def _worst(codes: list[int]) -> int:
    """One exit code for the arms: an error or failures first (1), then an interrupt, then an
    outage; 0 only when every arm is."""
    for code in (1, 130, 75):
        if code in codes:
            return code
    return max(codes, default=0)


def print_arm_table(runs_dir: str, name: str, order: list[str] | None = None) -> dict[str, Any]:
    from llm_ledger.projections.experiments import arm_table, require_arms

    from .experiment_progress import arm_table_view

    arms = require_arms(runs_dir, name)
    if order:
        rank = {arm: i for i, arm in enumerate(order)}
        arms = sorted(arms, key=lambda a: rank.get(a.arm, len(rank)))
    table = arm_table(arms)
    out.print(arm_table_view(table, out.width))
    if table["coverage"] and not table["coverage"]["complete"]:
        out.print(f"p vs best on shared items only: {table['coverage']['message']}", markup=False)
    _say_damaged(table)
    return table


def _say_damaged(table: dict[str, Any]) -> None:
    for row in table["rows"]:
        if row["error"]:
            err.print(f"arm {row['arm']} (run {row['run_id']}): damaged: {row['error']}", markup=False, highlight=False)


def damaged(table: dict[str, Any]) -> bool:
    """An arm of the table could not be read: the command that showed it exits 1."""
    return any(row["error"] for row in table["rows"])


def compare_experiment(name: str, runs: list[str], runs_dir: str, *, as_json: bool, only_diff: bool,
                       output: str | None) -> None:
    """`ledger compare --experiment NAME`: the arms' table; ``--json`` adds the pairwise
    comparison of compare.py, ``--only-diff`` / ``-o`` work on the arms as on named runs."""
    import json

    from llm_ledger.projections.compare import compare_runs, write_csv
    from llm_ledger.projections.experiments import arm_table, require_arms
    from llm_ledger.projections.outputs import check_output_path

    if runs:
        raise InputError("name runs or --experiment, not both")
    arms = require_arms(runs_dir, name)
    readable = [a.paths for a in arms if a.error is None]
    result = compare_runs(readable) if len(readable) > 1 else None
    written = write_csv(result, check_output_path(output), only_diff) if output and result else None
    if as_json or (only_diff and result is not None):
        table = arm_table(arms)
        if as_json:
            data = {**table, "comparison": result.to_json(only_diff) if result else None}
            out.print(json.dumps(data, ensure_ascii=False), soft_wrap=True, markup=False)
        else:
            from .compare_cmd import print_diff

            print_diff(result)
        _say_damaged(table)
    else:
        table = print_arm_table(runs_dir, name)
    if written is not None:
        out.print(f"wrote {written} rows to {escape(output or '')}")
    if damaged(table):
        raise typer.Exit(1)


def experiment_status(name: str, runs_dir: str, as_json: bool) -> None:
    """`ledger status EXPERIMENT`: each arm's status (``--json``: a list of what `status
    --json` says of each arm's run, plus its arm name), and the resume line when one is left."""
    import json

    import msgspec

    from llm_ledger.projections.experiments import require_arms
    from llm_ledger.projections.numbers import count, percent
    from llm_ledger.projections.runs import run_status

    from .status_cmd import RESUMABLE

    every = require_arms(runs_dir, name)
    arms = [arm for arm in every if arm.error is None]
    broken = [arm for arm in every if arm.error is not None]
    infos = [(arm, run_status(arm.paths)) for arm in arms]
    if as_json:
        data = [{"arm": arm.arm, **msgspec.to_builtins(info)} for arm, info in infos]
        data += [{"arm": arm.arm, "run_id": arm.run_id, "status": "damaged", "error": arm.error} for arm in broken]
        out.print(json.dumps(data), soft_wrap=True, markup=False)
        if broken:
            raise typer.Exit(1)
        return
    width = max(len(arm.arm) for arm in every)
    for arm in broken:
        err.print(f"{arm.arm:>{width}}: damaged: {arm.error} (run {arm.run_id})", markup=False, highlight=False)
    for arm, info in infos:
        out.print(f"{arm.arm:>{width}}: {info.status_text}, {count(info.done)} of {count(info.planned)} done, "
                  f"accuracy {percent(info.accuracy)} (run {info.run_id})", markup=False)
    if any(info.status in RESUMABLE or (info.status != "running" and info.pending + info.in_flight)
           for _, info in infos):
        out.print(resume_line(RunPaths(os.path.join(runs_dir, name))), markup=False)
    if broken:
        raise typer.Exit(1)
