"""The experiment file: every mistake is one line naming the file and the key's line, exit 2,
nothing written; the matrix form, .env files and --dry-run. In-process where the CLI is not
the point (load_experiment / prepare_experiment raise the InputError the CLI prints)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli
from llm_ledger.ledger.errors import InputError
from llm_ledger.runners.experiment import prepare_experiment
from llm_ledger.runners.experiment_config import load_experiment
from test_run_e2e import write_jsonl

GOOD = """name = "codewords"
dataset = "ds.jsonl"
parser = 'regex:answer is (\\S+)'

[providers.local]
concurrency = 4
context = { "sim-1" = 4096 }

[[arms]]
name = "plain"
provider = "local"
model = "sim-1"

[[arms]]
name = "cot"
provider = "local"
model = "sim-1"
template = "Think step by step. {prompt}"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "ds.jsonl", [{"id": f"q{i}", "prompt": f"Pick {i}. answer: A", "expected": "A"}
                                        for i in range(5)] + [{"id": "long", "prompt": "word " * 200 + "answer: B",
                                                               "expected": "B"}])
    return tmp_path


def _error(folder: Path, text: str) -> str:
    path = folder / "eval.toml"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        prepare_experiment(load_experiment(str(path)), str(folder / "runs"))
    assert not (folder / "runs").exists()  # nothing written
    message = str(caught.value)
    assert "\n" not in message
    return message


def _line(text: str, needle: str, nth: int = 1) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[nth - 1]


@pytest.mark.parametrize("case, edit, needle, expected", [
    ("unknown key", ('model = "sim-1"\ntemplate', 'modle = "sim-1"\ntemplate'), "modle",
     "arms[1]: unknown key 'modle' (did you mean 'model'?)"),
    ("wrong type", ("concurrency = 4", 'concurrency = "four"'), "concurrency",
     "providers.local.concurrency: expected int, got str"),
    ("wrong type in an arm", ('name = "cot"', 'name = "cot"\nsamples = 2.5'), "samples",
     "arms[1].samples: expected int, got float"),
    ("unknown provider", ('provider = "local"\nmodel = "sim-1"\ntemplate', 'provider = "locale"\nmodel = "sim-1"\ntemplate'),
     'provider = "locale"', "arm 'cot': unknown provider 'locale' (declared: local)"),
    ("duplicate arm", ('name = "cot"', 'name = "plain"'), 'name = "plain"', "arm 'plain' is named twice (first at line"),
    ("max_tokens over the context", ('name = "cot"', 'name = "cot"\nmax_tokens = 5000'), "max_tokens",
     "arm 'cot': max_tokens 5000 leaves no room for the prompt in model sim-1's context limit of 4096 tokens"),
    ("not TOML", ('[[arms]]\nname = "cot"', '[[arms]\nname = "cot"'), "[[arms]\n", "not valid TOML"),
    # the single-run checks, said in the file's words at the line of the key that set it
    ("bad parser", ('template = "Think', 'parser = "regex:("\ntemplate = "Think'), 'parser = "regex:(',
     "arm 'cot': parser regex:(: "),
    ("top parser", ("parser = 'regex:answer is (\\S+)'", "parser = 'regex:answer is (\\S+'"), "parser =",
     "arm 'plain': parser regex:answer is (\\S+: "),
    ("missing dataset", ('dataset = "ds.jsonl"', 'dataset = "nope.jsonl"'), "dataset =", "nope.jsonl: no such file"),
    ("template field", ('template = "Think step by step. {prompt}"', 'template = "{nofield} {prompt}"'), "template =",
     "ds.jsonl:1: template uses field 'nofield' which this item does not have"),
    ("unreachable endpoint", ("[providers.local]", '[providers.local]\nbase_url = "http://127.0.0.1:9/v1"'),
     "base_url", "cannot reach the endpoint"),
])
def test_a_bad_file_is_one_line_naming_the_line(folder, case, edit, needle, expected):
    text = GOOD.replace(*edit)
    assert text != GOOD
    message = _error(folder, text)
    nth = 2 if case in ("duplicate arm", "not TOML") else 1
    line = _line(text, needle.split("\n")[0], nth)
    assert message.startswith(f"{folder / 'eval.toml'}:{line}: "), (case, message)
    assert expected in message, (case, message)
    assert "--" not in message, (case, message)  # no CLI flag: the file's keys


def test_a_model_over_its_context_limit_is_refused_before_anything_is_written(folder):
    text = GOOD.replace('context = { "sim-1" = 4096 }', 'context = { "sim-1" = 120 }')
    message = _error(folder, text)
    line = _line(text, 'model = "sim-1"')  # the arm's model
    assert f"eval.toml:{line}: arm 'plain': item 'long' (line 6) needs ~" in message
    assert "over model sim-1's context limit of 120" in message


def test_the_matrix_expands_to_named_arms_and_settings_layer(folder):
    path = folder / "eval.toml"
    path.write_text("""name = "grid"
dataset = "ds.jsonl"
samples = 2
[providers.local]
concurrency = 6
rpm = 600
[[matrix]]
models = ["sim-1", "org/model:7b"]
templates = { plain = "{prompt}", cot = "Think. {prompt}" }
temperature = 0.2
[[arms]]
name = "solo"
samples = 1
""")
    spec = load_experiment(str(path))
    arms = {a.name: a.config for a in spec.arms}
    assert list(arms) == ["solo", "sim-1.plain", "sim-1.cot", "org-model-7b.plain", "org-model-7b.cot"]
    assert arms["org-model-7b.cot"].model == "org/model:7b" and arms["org-model-7b.cot"].template == "Think. {prompt}"
    assert arms["sim-1.plain"].samples == 2 and arms["solo"].samples == 1  # arm over the top of the file
    assert arms["sim-1.cot"].temperature == 0.2 and arms["solo"].temperature is None
    assert arms["solo"].experiment == {"name": "grid", "arm": "solo", "provider": "local", "file": str(path),
                                       "limits": {"concurrency": 6, "rpm": 600, "tpm": None}}
    assert spec.dataset == str(folder / "ds.jsonl")  # relative to the file, not the cwd


def test_the_top_level_matrix_of_the_issue(folder):
    """`models = [...]` x `templates = [...]` at the top of the file, as the issue writes it."""
    path = folder / "eval.toml"
    path.write_text('name = "top"\ndataset = "ds.jsonl"\nmodels = ["sim-1", "m2"]\n'
                    'templates = ["{prompt}", "Think. {prompt}"]\nsamples = 2\n[providers.local]\n')
    arms = {a.name: a.config for a in load_experiment(str(path)).arms}
    assert list(arms) == ["sim-1.t1", "sim-1.t2", "m2.t1", "m2.t2"]
    assert (arms["m2.t2"].model, arms["m2.t2"].template, arms["m2.t2"].samples) == ("m2", "Think. {prompt}", 2)
    path.write_text('name = "top"\ndataset = "ds.jsonl"\nmodels = ["sim-1"]\n')
    assert [a.name for a in load_experiment(str(path)).arms] == ["sim-1"]
    message = _error(folder, 'name = "top"\ndataset = "ds.jsonl"\ntemplates = ["{prompt}"]\n')
    assert message.endswith("eval.toml:3: templates without models: a matrix is models = [...] x templates = [...]")


def test_dotenv_next_to_the_file_fills_unset_variables_only(folder, monkeypatch):
    monkeypatch.delenv("EXPERIMENT_DOTENV_KEY", raising=False)
    monkeypatch.setenv("EXPERIMENT_SET_KEY", "from-the-environment")
    (folder / ".env").write_text("EXPERIMENT_DOTENV_KEY=sk-from-dotenv\nEXPERIMENT_SET_KEY=from-dotenv\n")
    (folder / "eval.toml").write_text(GOOD)
    load_experiment(str(folder / "eval.toml"))
    assert os.environ["EXPERIMENT_DOTENV_KEY"] == "sk-from-dotenv"
    assert os.environ["EXPERIMENT_SET_KEY"] == "from-the-environment"
    monkeypatch.delenv("EXPERIMENT_DOTENV_KEY")


def test_cli_bad_key_exit_2_one_line_nothing_written_and_dry_run_plan(folder):
    (folder / "bad.toml").write_text(GOOD.replace("concurrency = 4", "concurrency = 4\nburst = 9"))
    bad = run_cli("run", "bad.toml", cwd=folder)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.toml:7: providers.local: unknown key 'burst' (known: ")
    assert not (folder / "runs").exists()
    (folder / "eval.toml").write_text(GOOD)
    shown = run_cli("run", "eval.toml", "--show-first", cwd=folder)
    assert shown.returncode == 2 and len(shown.stderr.strip().splitlines()) == 1, shown.stderr
    assert shown.stderr.startswith("error: eval.toml: --show-first ") and not (folder / "runs").exists()

    (folder / "eval.toml").write_text(GOOD.replace('parser =', 'max_tokens = 10\nprice_in = 1.0\nprice_out = 2.0\nparser ='))
    plan = run_cli("run", "eval.toml", "--dry-run", cwd=folder, env={"COLUMNS": "200"})
    assert plan.returncode == 0, plan.stderr
    rows = {line.split()[0]: line.split() for line in plan.stdout.splitlines() if line.split()[:1] in (["plain"], ["cot"], ["total"])}
    assert set(rows) == {"plain", "cot", "total"}
    assert rows["plain"][-1].startswith("$") and rows["total"][-1].startswith("$")
    per_arm = [float(rows[a][-1].strip("$")) for a in ("plain", "cot")]
    assert float(rows["total"][-1].strip("$")) == pytest.approx(sum(per_arm), abs=1e-4)
    assert rows["total"][1] == "12"  # requests: 6 items x 2 arms
    assert not any((folder / "runs" / f"codewords.{arm}" / "events.log").exists() for arm in ("plain", "cot"))
    assert json.loads((folder / "runs" / "codewords.cot" / "plan.jsonl").read_text().splitlines()[0])["body"]["max_tokens"] == 10


def test_an_arm_may_name_its_own_endpoint_key_variable_and_system_prompt(folder):
    path = folder / "eval.toml"
    path.write_text("""name = "mixed"
dataset = "ds.jsonl"
[providers.shared]
base_url = "http://127.0.0.1:9/v1"
api_key_env = "SHARED_KEY"
concurrency = 5
context_limits = { "m" = 2048 }
[[arms]]
name = "over"
provider = "shared"
model = "m"
base_url = "http://127.0.0.1:10/v1"
api_key_env = "OTHER_KEY"
system_prompt = "Be brief."
[[arms]]
name = "alone"
model = "m"
base_url = "http://127.0.0.1:11/v1"
concurrency = 2
""")
    arms = {a.name: a for a in load_experiment(str(path)).arms}
    over, alone = arms["over"].config, arms["alone"].config
    assert (over.base_url, over.api_key_env, over.system, over.max_context) == \
        ("http://127.0.0.1:10/v1", "OTHER_KEY", "Be brief.", 2048)
    assert over.experiment["provider"] == "shared" and over.experiment["limits"]["concurrency"] == 5
    assert (alone.base_url, alone.concurrency, alone.experiment["limits"]["concurrency"]) == ("http://127.0.0.1:11/v1", 2, 2)
    assert arms["alone"].provider != "shared"  # its limits are its own


def test_shared_limits_hold_across_the_runs_given_them():
    """Two runs' own limits over one provider's: at most the provider's concurrency at once,
    whatever each run would allow itself (runners/limits.py, given through RunContext.shared)."""
    import asyncio

    from llm_ledger.runners.limits import RateLimits, SharedLimits

    async def main() -> tuple[int, int]:
        shared = SharedLimits(3, None, None)
        arms = [RateLimits(None, None, shared), RateLimits(None, None, shared)]
        now = most = 0

        async def request(limits: RateLimits) -> None:
            nonlocal now, most
            held = await limits.acquire(10)
            now += 1
            most = max(most, now)
            await asyncio.sleep(0)
            now -= 1
            if held:
                limits.release()

        await asyncio.gather(*(request(arms[i % 2]) for i in range(40)))
        return most, shared.most_sending

    assert asyncio.run(main()) == (3, 3)


def test_a_changed_arm_is_said_in_the_file_keys_and_an_unset_price_is_no_change():
    from llm_ledger.runners.config import RunConfig
    from llm_ledger.runners.experiment import file_diff

    run = RunConfig(price_in=0.0, price_out=0.0, simulator={"accuracy": 0.9}, concurrency=4)
    conflicts, overrides = file_diff(run, RunConfig(simulator={"accuracy": 0.5, "latency": 0.1}, concurrency=8))
    assert conflicts == ["sim_accuracy: 0.9 (run) vs 0.5 (file)", "simulator.latency: null (run) vs 0.1 (file)"]
    assert overrides == {"concurrency": 8}
    assert file_diff(run, RunConfig(price_in=1.0, simulator={"accuracy": 0.9}))[0] == ["price_in: 0.0 (run) vs 1.0 (file)"]
