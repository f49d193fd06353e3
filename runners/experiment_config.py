"""An experiment's file: one TOML file naming a dataset, its providers and its arms.

Read with the standard library's ``tomllib`` and converted with msgspec into the typed
structs below (unknown keys refused), so that every mistake is one line naming the file and
the line of the key: ``eval.toml:12: arms[1].samples: expected int, got str``. tomllib keeps
no positions, so ``TomlLines`` finds them again in the text (the line of each ``key =``
under its ``[table]`` / ``[[array]]`` header); a key it cannot place is reported at its
table's header, never without a line.

The shape (every arm setting may also be given at the top, as the default of every arm, or
in a ``[[matrix]]`` entry, as the default of the arms it expands to; ``models = [...]`` and
``templates = [...]`` at the top are one more matrix entry, of the top's settings)::

    name = "codewords"              # letters, digits, '_' and '-': runs are <name>.<arm>
    dataset = "ds.jsonl"            # relative to this file
    parser = 'regex:answer is (\\S+)'

    [providers.local]
    base_url = "http://127.0.0.1:8000/v1"   # none: the built-in simulator
    api_key_env = "LOCAL_KEY"
    concurrency = 32                # shared by every arm of this provider
    rpm = 600                       # idem
    tpm = 100000                    # idem
    context = { "llama-3-8b" = 8192 }   # per-model context limits

    [[arms]]
    name = "llama"
    provider = "local"
    model = "llama-3-8b"

    [[matrix]]                      # models x templates: one arm each
    provider = "local"
    models = ["llama-3-8b", "qwen-2.5-7b"]
    templates = { plain = "{prompt}", cot = "Think step by step. {prompt}" }

A matrix arm is named ``<model>.<template name>`` (``<model>.t1``, ``t2`` ... for a list of
templates; ``<model>`` alone without templates), characters other than letters, digits,
``_`` and ``-`` of the model becoming ``-``: the names do not depend on the order of the
lists, except for a list's numbers (name the templates to keep them stable).

``.env`` files (in the current directory and next to the file) fill environment variables
that are not set already; their values are never printed nor stored.
"""

from __future__ import annotations

import io
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from llm_ledger.ledger import fs
from llm_ledger.ledger.errors import InputError

from .config import MAX_CONCURRENCY, RunConfig

__all__ = ["Provider", "ArmSpec", "ExperimentSpec", "TomlLines", "load_experiment", "NAME_RE"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ARM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SIMULATOR_PROVIDER = "simulator"  # the provider an experiment without [providers] uses


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Settings(_Strict, kw_only=True, forbid_unknown_fields=True):
    """What an arm sets (UNSET: taken from its matrix entry, the top of the file, the
    provider, then ledger's defaults)."""

    provider: str | UnsetType = UNSET
    model: str | UnsetType = UNSET
    template: str | UnsetType = UNSET
    system: str | UnsetType = UNSET
    parser: str | UnsetType = UNSET
    samples: int | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    max_tokens: int | UnsetType = UNSET
    limit: int | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    concurrency: int | UnsetType = UNSET  # this arm's own cap, at most its provider's
    rpm: int | UnsetType = UNSET  # this arm's own; the provider's apply to all its arms together
    tpm: int | UnsetType = UNSET
    max_context: int | UnsetType = UNSET
    timeout: float | UnsetType = UNSET
    retries: int | UnsetType = UNSET
    price_in: float | UnsetType = UNSET
    price_out: float | UnsetType = UNSET
    sim_accuracy: float | UnsetType = UNSET  # the built-in simulator only (a provider without base_url)
    simulator: dict[str, Any] | UnsetType = UNSET  # the built-in simulator's settings, over the provider's
    system_prompt: str | UnsetType = UNSET  # another name of ``system``
    # An arm may name its own endpoint: over its provider's (sharing the provider's limits),
    # or without a provider (then its limits are its own).
    base_url: str | UnsetType = UNSET
    base_urls: list[str] | UnsetType = UNSET
    api_key_env: str | UnsetType = UNSET
    cache: bool | UnsetType = UNSET  # the cross-run cache (default on); false: every request sent (fresh draws)


class Provider(_Strict, kw_only=True, forbid_unknown_fields=True):
    base_url: str | UnsetType = UNSET  # unset: the built-in simulator, started per arm
    base_urls: list[str] = []  # more endpoints serving the same models
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 32  # requests in flight at most, over every arm using this provider
    rpm: int | None = None
    tpm: int | None = None
    timeout: float | UnsetType = UNSET
    give_up_after: float | None = None
    context: dict[str, int] = {}  # model -> context limit, in tokens
    context_limits: dict[str, int] = {}  # another name of ``context``
    simulator: dict[str, Any] = {}  # the built-in simulator's settings (no base_url)
    transport: str | UnsetType = UNSET
    preflight: bool = True


class Arm(Settings, kw_only=True, forbid_unknown_fields=True):
    name: str


class Matrix(Settings, kw_only=True, forbid_unknown_fields=True):
    models: list[str]
    templates: list[str] | dict[str, str] = []


class Top(Settings, kw_only=True, forbid_unknown_fields=True):
    name: str
    dataset: str
    providers: dict[str, Any] = {}
    arms: list[Any] = []
    matrix: list[Any] | dict[str, Any] = []
    models: list[str] | UnsetType = UNSET  # at the top: one matrix entry of the top's settings
    templates: list[str] | dict[str, str] | UnsetType = UNSET


@dataclass
class ArmSpec:
    name: str
    run_id: str
    provider: str
    config: RunConfig
    where: tuple[Any, ...]  # its table in the file, e.g. ("arms", 1) or ("matrix", 0)
    line: int


@dataclass
class ExperimentSpec:
    name: str
    path: str
    dataset: str
    providers: dict[str, Provider]
    arms: list[ArmSpec]
    lines: "TomlLines" = field(repr=False)

    def at(self, arm: ArmSpec, *keys: str) -> str:
        """``file:line`` of the first of ``keys`` the arm sets (else of the arm's table)."""
        return f"{self.path}:{self.lines.find(arm.where, keys)}"

    def arm_error(self, arm: ArmSpec, exc: InputError) -> InputError:
        """An arm's error from the single-run checks (runners/prepare.py speaks of CLI flags),
        said in the file's words: the key instead of ``--flag``, at the line of the key that
        gave the setting (the arm's, its matrix entry's, the top's or its provider's); a
        dataset the file names, at the ``dataset =`` line."""
        text = str(exc)
        if text.startswith(self.dataset + ":") and not re.search(r"--[a-z]", text):  # the dataset itself, not a setting read on it
            return InputError(f"{self.path}:{self.lines.line(('dataset',))}: dataset: {text}")
        text = text.replace("use --no-preflight", f"set preflight = false in [providers.{arm.provider}]")
        flags = re.findall(r"--([a-z][a-z-]*)", text)
        keys = [{"no-preflight": "preflight", "sim": "simulator"}.get(f, f.replace("-", "_")) for f in flags]
        text = re.sub(r"--([a-z][a-z-]*)", lambda m: {"no-preflight": "preflight = false", "sim": "simulator"}.get(
            m[1], m[1].replace("-", "_")), text)
        line = self.lines.find(arm.where, ("name", "models"))
        for key in keys:
            places = [(*arm.where, key), (key,), ("providers", arm.provider, key)]
            found = next((self.lines.lines[p] for p in places if p in self.lines.lines), None)
            if found is not None:
                line = found
                break
        return InputError(f"{self.path}:{line}: arm {arm.name!r}: {text}")


# -- lines of keys ----------------------------------------------------------------------

_BARE = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_KEY = re.compile(rf"^\s*({_BARE}(?:\s*\.\s*{_BARE})*)\s*=")
_TABLE = re.compile(rf"^\s*\[\s*({_BARE}(?:\s*\.\s*{_BARE})*)\s*\]")
_ARRAY = re.compile(rf"^\s*\[\[\s*({_BARE}(?:\s*\.\s*{_BARE})*)\s*\]\]")


def _keys(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_BARE, dotted)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


class TomlLines:
    """Where each key of a TOML text is: ``(table..., index, key) -> line``."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        section: tuple[Any, ...] = ()
        arrays: dict[tuple[Any, ...], int] = {}
        closing = ""  # the end of a multi-line string being skipped
        for number, line in enumerate(text.splitlines(), 1):
            if closing:
                if closing in line:
                    closing = ""
                continue
            if m := _ARRAY.match(line):
                name = _keys(m[1])
                arrays[name] = arrays.get(name, -1) + 1
                section = (*name, arrays[name])
                self.lines.setdefault(section, number)
            elif m := _TABLE.match(line):
                section = _keys(m[1])
                self.lines.setdefault(section, number)
            elif m := _KEY.match(line):
                self.lines.setdefault((*section, *_keys(m[1])), number)
                rest = line[m.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) == 1:
                        closing = quote

    def line(self, path: tuple[Any, ...]) -> int:
        """The line of ``path``, else of the nearest enclosing table that has one, else 1."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1

    def find(self, where: tuple[Any, ...], keys: tuple[str, ...]) -> int:
        for key in keys:
            if (*where, key) in self.lines:
                return self.lines[(*where, key)]
        return self.line(where)


# -- reading ----------------------------------------------------------------------------


def load_experiment(path: str) -> ExperimentSpec:
    """The experiment of ``path``, every arm a complete ``RunConfig``; raises ``InputError``
    (``file:line: what``) for anything wrong in the file. Reads ``.env`` files first."""
    try:
        with fs.open_file(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the experiment file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        what = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        line = f":{where[1]}" if where else ""
        raise InputError(f"{path}{line}: not valid TOML: {what}") from None
    read_dotenv([".env", os.path.join(os.path.dirname(os.path.abspath(path)), ".env")])
    return _Reader(path, TomlLines(text)).read(data)


def read_dotenv(paths: list[str]) -> None:
    """Variables of the ``.env`` files that exist, for those not set already (the environment
    wins). Their values are never printed: a line that cannot be read is skipped, as
    python-dotenv does."""
    from dotenv import dotenv_values

    seen: set[str] = set()
    for path in paths:
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        try:
            with fs.open_file(real, "r", encoding="utf-8") as f:
                values = dotenv_values(stream=io.StringIO(f.read()))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        for key, value in values.items():
            if value is not None and key not in os.environ:
                os.environ[key] = value


class _Reader:
    def __init__(self, path: str, lines: TomlLines) -> None:
        self.path = path
        self.lines = lines

    def fail(self, where: tuple[Any, ...], message: str) -> InputError:
        return InputError(f"{self.path}:{self.lines.line(where)}: {message}")

    def convert(self, value: Any, kind: type, where: tuple[Any, ...]) -> Any:
        """msgspec's conversion, its error placed: the key's line and its dotted name."""
        try:
            return msgspec.convert(value, kind)
        except msgspec.ValidationError as exc:
            text = str(exc)
            m = re.match(r"^(.*?)(?: - at `\$((?:\.[^.\[`]+|\[\d+\])*)`)?$", text, re.S)
            what, sub = (m[1], m[2] or "") if m else (text, "")
            path = (*where, *(int(p[1:-1]) if p.startswith("[") else p[1:] for p in re.findall(r"\.[^.\[]+|\[\d+\]", sub)))
            unknown = re.match(r"Object contains unknown field `(.+)`", what)
            missing = re.match(r"Object missing required field `(.+)`", what)
            if unknown:
                raise self.fail((*path, unknown[1]), f"{_shown(path)}: unknown key {unknown[1]!r}"
                                                     f"{_hint(unknown[1], kind, sub)}") from None
            if missing:
                raise self.fail(path, f"{_shown(path)}: missing key {missing[1]!r}") from None
            what = what.replace("`", "")
            raise self.fail(path, f"{_shown(path)}: {what[:1].lower()}{what[1:]}") from None

    def read(self, data: dict[str, Any]) -> ExperimentSpec:
        top = self.convert(data, Top, ())
        if not NAME_RE.match(top.name):
            raise self.fail(("name",), f"name {top.name!r}: use letters, digits, '_' or '-' (at most 64; "
                                       "each arm is the run <name>.<arm>)")
        providers = {name: self.convert(value, Provider, ("providers", name)) for name, value in top.providers.items()}
        for name, provider in providers.items():
            self._check_provider(name, provider)
        if not providers:
            providers = {SIMULATOR_PROVIDER: Provider()}
        arms: list[tuple[Settings, str, tuple[Any, ...]]] = []
        for i, value in enumerate(top.arms):
            arm = self.convert(value, Arm, ("arms", i))
            arms.append((arm, arm.name, ("arms", i)))
        entries = [top.matrix] if isinstance(top.matrix, dict) else top.matrix
        for j, value in enumerate(entries):
            where = ("matrix",) if isinstance(top.matrix, dict) else ("matrix", j)
            arms += self._expand(self.convert(value, Matrix, where), where)
        if top.models is not UNSET:  # `models = [...]` x `templates = [...]` at the top: the file's own matrix
            arms += self._expand(Matrix(models=top.models, templates=top.templates or []), ())
        elif top.templates is not UNSET:
            raise self.fail(("templates",), "templates without models: a matrix is models = [...] x templates = [...]")
        if not arms:
            raise self.fail((), "no arms: add [[arms]] tables (name, provider, model), models = [...] (x templates = "
                                "[...]) or a [[matrix]]")
        dataset = top.dataset if os.path.isabs(top.dataset) else os.path.join(os.path.dirname(self.path), top.dataset)
        specs: list[ArmSpec] = []
        named: dict[str, tuple[Any, ...]] = {}
        for settings, name, where in arms:
            if name in named:
                first = self.lines.find(named[name], ("name", "models"))
                raise self.fail((*where, "name") if (*where, "name") in self.lines.lines else where,
                                f"arm {name!r} is named twice (first at line {first}): each arm needs its own name")
            named[name] = where
            specs.append(self._arm(top, providers, settings, name, where))
        return ExperimentSpec(top.name, self.path, dataset, providers, specs, self.lines)

    def _check_provider(self, name: str, p: Provider) -> None:
        where = ("providers", name)
        if not NAME_RE.match(name):
            raise self.fail(where, f"provider {name!r}: use letters, digits, '_' or '-'")
        for key in ("concurrency", "rpm", "tpm"):
            value = getattr(p, key)
            if value is not None and value < 1:
                raise self.fail((*where, key), f"providers.{name}.{key} must be at least 1 (got {value})")
        if p.concurrency > MAX_CONCURRENCY:
            raise self.fail((*where, "concurrency"), f"providers.{name}.concurrency {p.concurrency:,}: at most "
                                                     f"{MAX_CONCURRENCY:,}")
        for model, limit in {**p.context, **p.context_limits}.items():
            if limit < 1:
                raise self.fail((*where, "context"), f"providers.{name}.context: {model} = {limit}: must be at least 1")
        if p.base_url is UNSET and p.base_urls:
            raise self.fail((*where, "base_urls"), f"providers.{name}: base_urls without base_url")
        if p.base_url is not UNSET and p.simulator:
            raise self.fail((*where, "simulator"), f"providers.{name}: simulator settings are for the built-in "
                                                   "simulator (a provider without base_url)")

    def _expand(self, m: Matrix, where: tuple[Any, ...]) -> list[tuple[Settings, str, tuple[Any, ...]]]:
        if not m.models:
            raise self.fail((*where, "models"), "matrix: models is empty")
        templates: list[tuple[str, str | UnsetType]]
        if isinstance(m.templates, dict):
            templates = list(m.templates.items())
        else:
            templates = [(f"t{i + 1}", t) for i, t in enumerate(m.templates)]
        if len(templates) == 0:
            templates = [("", m.template)]
        out = []
        for model in m.models:
            for tname, template in templates:
                name = re.sub(r"[^A-Za-z0-9_-]+", "-", model).strip("-") + (f".{tname}" if tname else "")
                arm = msgspec.structs.replace(m, model=model, template=template)
                out.append((arm, name, where))
        return out

    def _arm(self, top: Top, providers: dict[str, Provider], arm: Settings, name: str, where: tuple[Any, ...]) -> ArmSpec:
        def get(key: str, default: Any = None) -> Any:
            for source in (arm, top):
                value = getattr(source, key)
                if value is not UNSET:
                    return value
            return default

        def line_of(key: str) -> tuple[Any, ...]:
            return (*where, key) if (*where, key) in self.lines.lines else (key,) if (key,) in self.lines.lines else where

        if not ARM_RE.match(name):
            raise self.fail(line_of("name"), f"arm name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
        label = f"arm {name!r}"
        pname = get("provider")
        own_url = get("base_url")
        if pname is None and own_url is not None:  # an endpoint of its own: limits of its own
            pname = f"{name}:own"
            providers = {**providers, pname: Provider(base_url=own_url, concurrency=get("concurrency", 32))}
        if pname is None:
            if len(providers) != 1:
                raise self.fail(where, f"{label}: no provider (declared: {', '.join(sorted(providers))})")
            pname = next(iter(providers))
        if pname not in providers:
            declared = ", ".join(sorted(providers)) or "none"
            raise self.fail(line_of("provider"), f"{label}: unknown provider {pname!r} (declared: {declared})")
        p = providers[pname]
        if own_url is not None or get("base_urls") is not None or get("api_key_env") is not None:
            p = msgspec.structs.replace(p, base_url=own_url if own_url is not None else p.base_url,
                                        base_urls=get("base_urls", p.base_urls), api_key_env=get("api_key_env", p.api_key_env))
            if p.base_url is UNSET and p.base_urls:
                raise self.fail(line_of("base_urls"), f"{label}: base_urls without base_url")
        system, system_prompt = get("system"), get("system_prompt")
        if system is not None and system_prompt is not None:
            raise self.fail(line_of("system_prompt"), f"{label}: system and system_prompt are the same setting: give one")
        system = system if system is not None else system_prompt
        model = get("model")
        simulated = p.base_url is UNSET
        if model is None:
            if not simulated:
                raise self.fail(where, f"{label}: no model (provider {pname} serves more than the simulator's)")
            model = str(p.simulator.get("model", "sim-1"))
        for key in ("samples", "concurrency", "limit", "rpm", "tpm", "max_context", "max_tokens"):
            value = get(key)
            if value is not None and value < 1:
                raise self.fail(line_of(key), f"{label}: {key} must be at least 1 (got {value})")
        for key in ("temperature", "timeout", "price_in", "price_out", "sim_accuracy"):
            value = get(key)
            if value is not None and (not math.isfinite(value) or value < 0 or (key == "timeout" and value == 0)):
                raise self.fail(line_of(key), f"{label}: {key} {value}: must be a finite number >= 0")
        concurrency = get("concurrency", p.concurrency)
        if concurrency > p.concurrency:
            raise self.fail(line_of("concurrency"), f"{label}: concurrency {concurrency} is over provider {pname}'s "
                                                    f"{p.concurrency} (the provider's is shared by its arms)")
        accuracy = get("sim_accuracy")
        if get("simulator") is not None and not simulated:
            raise self.fail(line_of("simulator"), f"{label}: simulator settings are for the built-in simulator "
                                                  f"(provider {pname} has a base_url)")
        if accuracy is not None and not simulated:
            raise self.fail(line_of("sim_accuracy"), f"{label}: sim_accuracy is for the built-in simulator "
                                                     f"(provider {pname} has a base_url)")
        if accuracy is not None and accuracy > 1:
            raise self.fail(line_of("sim_accuracy"), f"{label}: sim_accuracy {accuracy}: a share in [0, 1]")
        context = {**p.context, **p.context_limits}.get(model)
        max_context = get("max_context", context)
        if context is not None and max_context > context:
            raise self.fail(line_of("max_context"), f"{label}: max_context {max_context} is over model {model}'s "
                                                    f"context limit {context} (providers.{pname}.context)")
        max_tokens = get("max_tokens")
        if max_context is not None and max_tokens is not None and max_tokens >= max_context:
            raise self.fail(line_of("max_tokens"), f"{label}: max_tokens {max_tokens} leaves no room for the prompt "
                                                   f"in model {model}'s context limit of {max_context} tokens")
        urls = [] if simulated else [str(p.base_url), *p.base_urls]
        config = RunConfig(
            model=model, base_url=urls[0] if urls else "", base_urls=urls if len(urls) > 1 else [],
            api_key_env=p.api_key_env, samples=get("samples", 1), limit=get("limit"), concurrency=concurrency,
            rpm=get("rpm"), tpm=get("tpm"), timeout=get("timeout", p.timeout if p.timeout is not UNSET else 60.0),
            retries=get("retries", 5), temperature=get("temperature"), max_tokens=max_tokens, system=system,
            template=get("template"), parser=get("parser", "text"), price_in=get("price_in"),
            price_out=get("price_out"), give_up_after=p.give_up_after, max_context=max_context,
            preflight=p.preflight, seed=get("seed"), cache=get("cache"),
            simulator={**p.simulator, **get("simulator", {}), **({"accuracy": accuracy} if accuracy is not None else {})}
            if simulated else {},
            experiment={"name": top.name, "arm": name, "provider": pname, "file": os.path.abspath(self.path),
                        "limits": {"concurrency": p.concurrency, "rpm": p.rpm, "tpm": p.tpm}},
        )
        if p.transport is not UNSET:
            config.transport = p.transport
        run_id = f"{top.name}.{name}"
        return ArmSpec(name, run_id, pname, config, where, self.lines.find(where, ("name", "models")))


def _hint(key: str, kind: type, sub: str) -> str:
    """`` (did you mean 'model'?)``, or the keys the table takes."""
    import difflib

    if sub:  # deeper than the struct itself: msgspec named the place
        return ""
    fields = [f for f in kind.__struct_fields__]
    close = difflib.get_close_matches(key, fields, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"


def _shown(path: tuple[Any, ...]) -> str:
    """``arms[1].samples``, ``providers.local.rpm``, ``name``; ``the file`` for the top."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the file"
