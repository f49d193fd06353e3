"""An experiment: one run per arm, all checked before any is opened, then run together.

Each arm is an ordinary run, ``<experiment>.<arm>`` under the runs directory (so ``status``,
``show``, ``export``, ``log``, ``view`` and ``compare`` take it as any run), whose
``run_started`` config records ``experiment = {name, arm, provider, limits}``. Nothing else
is stored: the runs are the experiment (projections/experiments.py finds them again).

Preparing (``prepare_experiment``): every arm is prepared as a single run would be -- the
dataset, parser, template, prices, key and endpoint (runners/prepare.py) -- and its
conversations checked against the model's context limit, before any run is opened: one
wrong arm and nothing is written for any. An arm whose run exists is compared with it
(``file_diff``: every setting that defines what is sent; *how* settings -- the provider's
URL, key variable, limits, timeouts -- may change, recorded in the session as overrides):
any difference is refused, naming the arm's line and each setting. An existing arm with
nothing left is not opened at all; one with work left is resumed. So adding an arm to the
file and running it again runs only that arm.

Running (``run_arms``): the arms' sessions are opened in turn, then their runners work on
one event loop at once; each arm keeps its own log, writer, index and projections (a crash
leaves each run as a single run's crash leaves it: ``ledger resume <experiment>`` resumes
each, never buying a durable reply twice). The arms of a provider share its limits
(``limits.SharedLimits``: requests at once, per minute, tokens per minute), given to each
runner through ``RunContext.shared``. Library code: no signals, no exits; the CLI installs
its handlers through ``on_running`` on an ``ArmGroup`` that stops every arm at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_ledger.ledger.errors import InputError
from llm_ledger.ledger.layout import RunPaths
from llm_ledger.projections.experiments import experiment_arms, experiment_of

from .config import RunConfig, _shown, compare
from .experiment_config import ArmSpec, ExperimentSpec
from .limits import SharedLimits, estimate_tokens
from .prepare import Prepared, prepare, prepare_resume
from .runner import Progress, Runner

__all__ = ["ArmRun", "ArmResult", "ArmGroup", "prepare_experiment", "prepare_experiment_resume", "run_arms",
           "file_diff", "unstarted_arms"]


@dataclass
class ArmRun:
    """One arm, ready: ``prepared`` is None when its run has nothing left to send."""

    name: str
    run_id: str
    provider: str
    paths: RunPaths
    prepared: Prepared | None
    state: str  # new | continued | complete | exists (--dry-run: not opened)
    limits: dict[str, Any] = field(default_factory=dict)  # the provider's, shared
    left: int = 0  # items pending or in flight, for an arm not opened


@dataclass
class ArmResult:
    arm: ArmRun
    session: Any  # runners.session.Session, closed
    reason: str  # completed / interrupted / error
    error: BaseException | None = None


def file_diff(stored: RunConfig, given: RunConfig) -> tuple[list[str], dict[str, Any]]:
    """An existing arm's run against the file (config.compare, named by the file's keys):
    the settings that define what is sent and differ (``key: old (run) vs new (file)``), and
    the *how* settings that differ (this session's overrides). A price the file does not
    set is the one the run fixed from the price table when it started: not a difference."""
    typed = [name for name in RunConfig.__struct_fields__ if name != "simulator"
             and not (name in ("price_in", "price_out") and getattr(given, name) is None)]
    conflicts, overrides = compare(stored, given, typed, label=lambda name: name, source="file")
    old, new = stored.simulator, given.simulator
    for key in sorted(set(old) | set(new), key=str):
        if old.get(key) != new.get(key):
            name = "sim_accuracy" if key == "accuracy" else f"simulator.{key}"
            conflicts.append(f"{name}: {_shown(old.get(key))} (run) vs {_shown(new.get(key))} (file)")
    return conflicts, overrides


def prepare_experiment(spec: ExperimentSpec, runs_dir: str, *, dry_run: bool = False,
                       skip_failed: bool = False) -> list[ArmRun]:
    """Every arm checked (see the module doc) before anything is written; raises
    ``InputError`` naming the file's line of the first wrong arm, or every changed arm.
    ``dry_run``: the new arms are planned; an existing arm is not touched (another process
    may hold it): it comes back unprepared, state ``exists`` (or ``complete``) with what is left."""
    from llm_ledger.projections.runs import first_event, run_status

    refused, existing, overrides = [], {}, {}
    for arm in spec.arms:
        paths = RunPaths(os.path.join(runs_dir, arm.run_id))
        started = first_event(paths) if os.path.isfile(paths.log) else None
        if started is None:
            continue
        if experiment_of(started.config).get("arm") != arm.name:
            raise InputError(f"{spec.at(arm, 'name')}: run {arm.run_id} exists and is not arm {arm.name!r} of "
                             f"experiment {spec.name!r}; rename the experiment or the arm")
        diff, overrides[arm.name] = file_diff(RunConfig.from_dict(started.config), arm.config)
        if os.path.realpath(started.dataset) != os.path.realpath(spec.dataset):
            diff.insert(0, f"dataset: {started.dataset} (run) vs {spec.dataset} (file)")
        if diff:
            refused.append(f"{spec.at(arm, 'name')}: arm {arm.name!r} (run {arm.run_id}): {'; '.join(diff)}")
        existing[arm.name] = run_status(paths)
    if refused:
        raise InputError(f"{'; '.join(refused)}. An arm's settings are fixed by its run: nothing was sent; give the "
                         "changed arm a new name to run it as a new arm")
    arms = []
    fits: dict[tuple[str | None, str | None], tuple[int, str]] = {}
    for arm in spec.arms:
        paths = RunPaths(os.path.join(runs_dir, arm.run_id))
        limits = dict(arm.config.experiment.get("limits") or {})
        status = existing.get(arm.name)
        if status is not None and (status.status == "completed" or dry_run):
            state = "complete" if status.status == "completed" else "exists"
            arms.append(ArmRun(arm.name, arm.run_id, arm.provider, paths, None, state, limits,
                               left=status.pending + status.in_flight + (0 if skip_failed else status.failed)))
            continue
        try:
            if status is not None:
                prepared = prepare_resume(paths, skip_failed, overrides[arm.name])
            else:
                prepared = prepare(spec.dataset, arm.config, runs_dir, arm.run_id, skip_failed, dry_run=dry_run)
        except InputError as exc:
            raise spec.arm_error(arm, exc) from None
        if status is None:
            _check_context(spec, arm, prepared, fits)
        state = "continued" if status is not None else "new"
        arms.append(ArmRun(arm.name, arm.run_id, arm.provider, prepared.paths, prepared, state, limits))
    return arms


def _check_context(spec: ExperimentSpec, arm: ArmSpec, prepared: Prepared,
                   fits: dict[tuple[str | None, str | None], tuple[int, str]]) -> None:
    """A model over its context limit is a mistake in the file: refused before anything is
    sent, naming the longest item (a single run fails such items one by one instead)."""
    from .dataset import iter_items

    config = prepared.config
    if config.max_context is None:
        return
    key = (config.template, config.system)
    if key not in fits:
        system = [{"role": "system", "content": config.system}] if config.system else []
        longest = (0, "")
        for item in iter_items(prepared.dataset.path, config.template):
            need = estimate_tokens(system + [m for turn in item.turns for m in turn])
            if need > longest[0]:
                longest = (need, f"item {item.id!r} (line {item.line})")
        fits[key] = longest
    longest, where = fits[key]
    need = longest + (config.max_tokens or 0)
    if need > config.max_context:
        with_max = f" with max_tokens {config.max_tokens}" if config.max_tokens else ""
        raise InputError(f"{spec.at(arm, 'max_context', 'max_tokens', 'model', 'name')}: arm {arm.name!r}: {where} "
                         f"needs ~{need:,} tokens{with_max}, over model {config.model}'s context limit of "
                         f"{config.max_context:,}: shorten the prompts, lower max_tokens or raise the limit")


def prepare_experiment_resume(runs_dir: str, name: str, skip_failed: bool = False,
                              overrides: dict[str, Any] | None = None) -> list[ArmRun]:
    """``ledger resume <experiment>``: each arm's run as it was recorded (its config and its
    provider's limits); arms with nothing left are not opened. The ``.env`` files
    ``ledger run FILE`` read (here and beside the recorded file) are read again: the keys
    they hold are needed again."""
    from llm_ledger.projections.runs import run_status

    from .experiment_config import read_dotenv

    refs = experiment_arms(runs_dir, name)
    if not refs:
        raise InputError(f"no run or experiment {name!r} under {runs_dir}")
    files = sorted({str(experiment_of(_config(ref.paths)).get("file") or "") for ref in refs} - {""})
    read_dotenv([".env", *(os.path.join(os.path.dirname(f), ".env") for f in files)])  # as `ledger run FILE` did
    arms = []
    for ref in refs:
        if run_status(ref.paths).status == "completed":
            arms.append(ArmRun(ref.arm, ref.run_id, ref.provider, ref.paths, None, "complete"))
            continue
        try:
            prepared = prepare_resume(ref.paths, skip_failed, overrides)
        except InputError as exc:
            raise InputError(f"arm {ref.arm!r} (run {ref.run_id}): {exc}") from None
        limits = dict(prepared.config.experiment.get("limits") or {})
        arms.append(ArmRun(ref.arm, ref.run_id, ref.provider, ref.paths, prepared, "continued", limits))
    return arms


def unstarted_arms(runs_dir: str, name: str) -> tuple[str, list[str]]:
    """The experiment's file (as its arms recorded it) and its arms that have no run yet: a
    resume continues runs; an arm never started (added to the file since, or a kill between
    opening two arms) is started by `ledger run FILE`. ("", []) when the file is gone."""
    from .experiment_config import load_experiment

    refs = experiment_arms(runs_dir, name)
    files = {str(RunConfig.from_dict(_config(ref.paths)).experiment.get("file") or "") for ref in refs}
    path = next((f for f in sorted(files) if f and os.path.isfile(f)), "")
    if not path:
        return "", []
    try:
        spec = load_experiment(path)
    except InputError:  # the file was edited into something else since: the runs are the truth
        return path, []
    have = {ref.arm for ref in experiment_arms(runs_dir, name, damaged=True)}  # a damaged one started: said apart
    return path, [a.name for a in spec.arms if spec.name == name and a.name not in have]


def _config(paths: RunPaths) -> dict[str, Any]:
    from llm_ledger.projections.runs import first_event

    started = first_event(paths)
    return started.config if started else {}


class ArmGroup:
    """Every arm's runner as one, for the CLI's signal handlers (cli/interrupts.py): the
    first signal stops every arm, the second aborts them. A runner made after the first
    signal is stopped as soon as it exists."""

    def __init__(self) -> None:
        self.progress = Progress()
        self.runners: list[Runner] = []

    def attach(self, runner: Runner) -> Callable[[], None]:
        self.runners.append(runner)
        if self.progress.stopping:
            runner.stop(self.progress.stop_reason or "interrupted")
        return lambda: None

    def stop(self, reason: str = "interrupted") -> None:
        self.progress.stopping = True
        self.progress.stop_reason = self.progress.stop_reason or reason
        for runner in self.runners:
            runner.stop(reason)

    def abort(self) -> None:
        self.progress.stopping = True
        for runner in self.runners:
            runner.abort()


def run_arms(arms: list[ArmRun], *, on_planned: Callable[[list[Any]], None] | None = None,
             on_tick: Callable[[str], Callable[[Progress], None]] | None = None,
             on_running: Callable[[ArmGroup], Callable[[], None]] | None = None) -> list[ArmResult]:
    """Open every arm with work left, run them together, close them all (whatever happens).
    ``on_tick(arm)`` gives each arm's progress callback."""
    from .session import Session

    todo = [a for a in arms if a.prepared is not None]
    sessions: list[Session] = []
    results: list[ArmResult] = []
    reasons: list[Any] = ["error"] * len(todo)
    try:
        works = []
        for arm in todo:
            session = Session(arm.prepared)  # type: ignore[arg-type]
            sessions.append(session)
            session.begin()
            works.append(session.plan())
        if on_planned is not None:
            on_planned(sessions)
        reasons = asyncio.run(_together(todo, sessions, works, on_tick, on_running))
    except KeyboardInterrupt:  # outside the CLI's handlers (opening the arms, or after): every arm is interrupted
        reasons = ["interrupted"] * len(todo)
        raise
    finally:
        for i, session in enumerate(sessions):
            outcome = reasons[i]
            reason = outcome if isinstance(outcome, str) else "error"
            error = outcome if isinstance(outcome, BaseException) else None
            try:
                session.close(reason)
            except Exception as exc:  # each arm closes; its error is its own line
                error = error or exc
            results.append(ArmResult(todo[i], session, reason, error))
    return results


async def _together(arms: list[ArmRun], sessions: list[Any], works: list[Any],
                    on_tick: Callable[[str], Callable[[Progress], None]] | None,
                    on_running: Callable[[ArmGroup], Callable[[], None]] | None) -> list[Any]:
    shared: dict[str, SharedLimits] = {}
    for arm in arms:
        if arm.provider not in shared:
            limits = arm.prepared.config.experiment.get("limits") or {}  # type: ignore[union-attr]
            shared[arm.provider] = SharedLimits(limits.get("concurrency"), limits.get("rpm"), limits.get("tpm"))
    group = ArmGroup()
    undo = on_running(group) if on_running is not None else None
    try:
        return await asyncio.gather(*(
            session.execute_async(work, on_tick(arm.name) if on_tick else None, group.attach, shared[arm.provider])
            for arm, session, work in zip(arms, sessions, works)), return_exceptions=True)
    finally:
        if undo is not None:
            undo()
