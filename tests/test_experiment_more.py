"""Experiments through the CLI, part two (a file of its own so that `--dist loadfile` runs it
beside part one): adding an arm to the file runs only that arm, a changed arm is refused with
a diff, and Ctrl-C stops every arm."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from llm_ledger.ledger.reader import iter_events
from test_experiment import ENV, _settled, experiment_toml, start_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment-more")
    sims = start_lab(root)
    yield root, sims
    for sim in sims.values():
        sim.stop()


def test_adding_an_arm_runs_only_it_and_a_changed_arm_is_refused_with_a_diff(lab):
    root, sims = lab
    one = """
[[arms]]
name = "llama"
provider = "a"
model = "llama"
"""
    extra = """
[[arms]]
name = "qwen"
provider = "b"
model = "qwen"
"""
    path = root / "grow.toml"
    path.write_text(experiment_toml("grow", sims, one, top="limit = 10"))
    from llm_ledger.runners.experiment import prepare_experiment, run_arms
    from llm_ledger.runners.experiment_config import load_experiment

    first = run_arms(prepare_experiment(load_experiment(str(path)), str(root / "runs")))  # in-process: not the point
    assert [(r.arm.name, r.reason) for r in first] == [("llama", "completed")]
    before = _settled(sims)
    path.write_text(experiment_toml("grow", sims, one + extra, top="limit = 10"))
    second = run_cli("run", "grow.toml", cwd=root, env=ENV)
    assert second.returncode == 0, second.stderr
    after = _settled(sims)
    assert (after["a"] - before["a"], after["b"] - before["b"]) == (0, 10)  # only the new arm sent
    assert "1 new" in second.stdout and "1 complete" in second.stdout
    assert all(arm in second.stdout for arm in ("llama", "qwen"))  # the table has both arms

    run_dir = root / "runs" / "grow.llama"
    size = (run_dir / "events.log").stat().st_size
    changed = one.replace('model = "llama"', 'model = "llama"\ntemplate = "Be brief. {prompt}"\ntemperature = 0.5')
    path.write_text(experiment_toml("grow", sims, changed + extra, top="limit = 10"))
    from llm_ledger.ledger.errors import InputError

    with pytest.raises(InputError) as refused:  # what `ledger run grow.toml` says on one line, exit 2
        prepare_experiment(load_experiment(str(path)), str(root / "runs"))
    line = str(refused.value)
    assert "\n" not in line and f"{path}:" in line and "arm 'llama' (run grow.llama)" in line
    assert "template: null (run) vs 'Be brief. {prompt}' (file)" in line
    assert "temperature: null (run) vs 0.5 (file)" in line
    assert (run_dir / "events.log").stat().st_size == size and _settled(sims) == after
    _p_per_pair_and_a_damaged_arm_is_named(root, sims, path, one + extra)


def _p_per_pair_and_a_damaged_arm_is_named(root, sims, path, arms):
    """A third arm holding other items (a seeded subset): each arm's p against the best is
    that pair's McNemar p, over the items those two share (not over what all three share).
    A damaged arm's run is a row with its error, and compare / status exit 1 naming it."""
    from llm_ledger.projections.compare import compare_runs
    from llm_ledger.projections.experiments import arm_table, experiment_arms
    from llm_ledger.runners.experiment import prepare_experiment, run_arms
    from llm_ledger.runners.experiment_config import load_experiment

    path.write_text(experiment_toml("grow", sims, arms + '[[arms]]\nname = "qwen-seeded"\nprovider = "b"\n'
                                    'model = "qwen"\nlimit = 12\nseed = 5\n', top="limit = 10"))
    third = run_arms(prepare_experiment(load_experiment(str(path)), str(root / "runs")))
    assert [(r.arm.name, r.reason) for r in third] == [("qwen-seeded", "completed")]
    refs = experiment_arms(str(root / "runs"), "grow")
    table = arm_table(refs)
    assert compare_runs([r.paths for r in refs]).coverage.shared < 10  # fewer items shared by all three
    best = next(r for r in refs if r.arm == table["best"])
    for row in table["rows"]:
        if row["arm"] != table["best"]:
            pair = compare_runs([best.paths, next(r.paths for r in refs if r.arm == row["arm"])])
            assert row["p_vs_best"] == pair.pairs[0]["p_value"], row["arm"]

    broken = root / "runs" / "grow.broken"
    broken.mkdir()
    (broken / "events.log").write_bytes(b"\x00garbage, not a frame of the log\n" * 4)
    compared = run_cli("compare", "--experiment", "grow", cwd=root, env=ENV)
    assert compared.returncode == 1, compared.stderr
    row = next(line for line in compared.stdout.splitlines() if line.split() and line.split()[0] == "broken")
    assert "error: " in row
    assert compared.stderr.strip().splitlines()[-1].startswith("arm broken (run grow.broken): damaged: ")
    status = run_cli("status", "grow", cwd=root, env=ENV)
    assert status.returncode == 1 and "broken: damaged: " in status.stderr, status.stderr
    (broken / "events.log").unlink()
    broken.rmdir()


def test_ctrl_c_stops_every_arm_and_says_how_to_resume(lab):
    """SIGINT (Ctrl-C) during an experiment: every arm stops as one run does (its log ends
    with session_ended interrupted), exit 130, and the one way back is named."""
    from llm_ledger.ledger.events import SessionEnded

    root, _ = lab
    (root / "intr.toml").write_text("""name = "intr"
dataset = "ds.jsonl"
[providers.sim]
concurrency = 2
simulator = { latency = 0.2 }
[[arms]]
name = "x"
[[arms]]
name = "y"
sim_accuracy = 0.5
""")
    proc = subprocess.Popen([sys.executable, "-m", "llm_ledger.cli", "run", "intr.toml"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    responses = [root / "runs" / f"intr.{arm}" / "responses.jsonl" for arm in "xy"]
    while not any(path.exists() and path.stat().st_size for path in responses):  # replies are coming in
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "resume with: ledger resume intr"
    for arm in "xy":
        events = list(iter_events(str(root / "runs" / f"intr.{arm}" / "events.log")))
        assert isinstance(events[-1], SessionEnded) and events[-1].reason == "interrupted"
    _the_same_file_again_resumes_it(root, proc_env=ENV)


def _the_same_file_again_resumes_it(root, proc_env):
    """After the interrupt: `ledger resume intr` reads the .env beside the recorded file;
    running the same file again resumes both arms (the price the runs fixed from the price
    table is no difference from a file that sets none); --dry-run after adding an arm plans
    only the new one and says what is left of the others."""
    import os

    from llm_ledger.runners.experiment import prepare_experiment, prepare_experiment_resume
    from llm_ledger.runners.experiment_config import load_experiment

    (root / ".env").write_text("INTR_DOTENV_PROBE=from-dotenv\n")
    os.environ.pop("INTR_DOTENV_PROBE", None)
    try:
        resumed = prepare_experiment_resume(str(root / "runs"), "intr")
        assert os.environ.get("INTR_DOTENV_PROBE") == "from-dotenv"
    finally:
        os.environ.pop("INTR_DOTENV_PROBE", None)
        (root / ".env").unlink()
    assert [(a.name, a.state) for a in resumed] == [("x", "continued"), ("y", "continued")]
    again = prepare_experiment(load_experiment(str(root / "intr.toml")), str(root / "runs"))
    assert [(a.name, a.state, a.prepared.resume) for a in again] == [("x", "continued", True), ("y", "continued", True)]
    assert again[0].prepared.config.price_in == 0.0  # the run's, from the price table
    text = (root / "intr.toml").read_text()
    (root / "intr.toml").write_text(text + '[[arms]]\nname = "z"\nlimit = 3\n')
    dry = run_cli("run", "intr.toml", "--dry-run", cwd=root, env=proc_env)
    assert dry.returncode == 0, dry.stderr
    rows = {line.split()[0]: line for line in dry.stdout.splitlines() if line.split() and line.split()[0] in "xyz"}
    assert "x: exists (resume sends what is left:" in dry.stdout and "y: exists (resume sends what is left:" in dry.stdout
    assert "3 x 1" in rows["z"] and "total (1 new)" in dry.stdout
    assert not (root / "runs" / "intr.z" / "events.log").exists()
    (root / "intr.toml").write_text(text)


def test_ctrl_c_while_the_arms_open_closes_them_interrupted(lab):
    """A KeyboardInterrupt before the arms run (here: once every arm is open) closes each
    opened session as interrupted, not as an error."""
    from llm_ledger.ledger.events import SessionEnded
    from llm_ledger.runners.experiment import prepare_experiment, run_arms
    from llm_ledger.runners.experiment_config import load_experiment

    root, _ = lab
    (root / "opening.toml").write_text('name = "opening"\ndataset = "ds.jsonl"\nlimit = 2\n'
                                       '[[arms]]\nname = "x"\n[[arms]]\nname = "y"\n')

    def interrupt(sessions):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_arms(prepare_experiment(load_experiment(str(root / "opening.toml")), str(root / "runs")),
                 on_planned=interrupt)
    for arm in "xy":
        events = list(iter_events(str(root / "runs" / f"opening.{arm}" / "events.log")))
        assert isinstance(events[-1], SessionEnded) and events[-1].reason == "interrupted"
