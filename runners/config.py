"""A run's configuration: what `ledger run` was asked, stored whole in ``run_started``.

Never holds a secret: only the *name* of the environment variable with the key. An empty
``base_url`` means the embedded simulator (started in-process by every session). ``runner``
and ``transport`` name entries of registry.py; a log older than them reads as the defaults.
The transport only changes how the same bytes are sent, so it is a *how* setting that a
later session may change (``ledger run --run-id RUN --transport ...``); a run started before
the ``http`` default recorded ``openai`` and keeps it unless told otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import msgspec

from llm_ledger.ledger.errors import InputError

__all__ = ["RunConfig", "SIMULATOR_MODEL", "HOW_FIELDS", "MAX_CONCURRENCY", "check_config", "check_sim", "compare"]

SIMULATOR_MODEL = "sim-1"
MAX_CONCURRENCY = 10_000
# Settings that change only *how* the work is sent, never *what* is sent: a resume may change
# them (recorded in that session's ``session_started.overrides``); every other setting is the
# run's identity and fixed by ``run_started``.
HOW_FIELDS = ("concurrency", "rpm", "tpm", "base_url", "base_urls", "timeout", "give_up_after", "api_key_env", "transport",
              "cache", "cache_max_age", "batch_window", "experiment", "workers")
_NOT_COMPARED = ("preflight", "shard")  # a check before the first session, not a setting of the run


class RunConfig(msgspec.Struct, kw_only=True):
    model: str = SIMULATOR_MODEL
    base_url: str = ""  # "" = the embedded simulator; the first of base_urls otherwise
    base_urls: list[str] = []  # every endpoint (--base-url given several times)
    api_key_env: str = "OPENAI_API_KEY"
    samples: int = 1
    limit: int | None = None
    concurrency: int = 32
    rpm: int | None = None
    tpm: int | None = None
    timeout: float = 60.0
    retries: int = 5
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None
    template: str | None = None
    parser: str = "text"
    price_in: float | None = None
    price_out: float | None = None
    simulator: dict[str, Any] = {}  # SimConfig fields for the embedded simulator
    give_up_after: float | None = None  # seconds every endpoint may stay down before stopping
    max_context: int | None = None  # tokens; longer conversations fail without a request
    preflight: bool = True  # GET /models lists the model before anything is written
    seed: int | None = None  # with limit: a reproducible random subset instead of the first N
    runner: str = "per-request"  # how the plan is worked: a name in registry.RUNNERS
    transport: str = "http"  # how a request reaches the model: a name in registry.TRANSPORTS
    cache: bool | None = None  # the cross-run cache (runners/cache.py): None (default) and True on, False off
    cache_max_age: float | None = None  # seconds: only cached replies younger than this are served
    # The Batch API runner (``runner = "batch"``, runners/batch.py). ``batch_discount``: the share
    # of the per-request price the provider takes off (0.5: OpenAI's); price_in/price_out hold
    # the batch price already (prepare.py applies it once, when the run starts).
    batch_discount: float = 0.5
    batch_window: float | None = None  # seconds the run waits for its batches (None: until they end)
    batch_max_requests: int = 50_000  # per input file (OpenAI's limit)
    batch_max_bytes: int = 200_000_000  # per input file (OpenAI's 200 MB)
    # An experiment's arm (runners/experiment.py): {"name", "arm", "provider", "file" (the TOML
    # file's absolute path), "limits": the provider's {concurrency, rpm, tpm}, shared with the
    # experiment's other arms}; {} otherwise. A *how* setting: the run's id already fixes the
    # experiment and the arm; the limits and the file's place may change.
    experiment: dict[str, Any] = {}
    shards: int = 1  # --shards N: the plan split over N shard logs (runners/shards.py)
    workers: str = "local"  # where shards run: local (processes) or ray[:ADDRESS]
    shard: dict[str, Any] = {}  # in a shard's own log: which shard of which run (ledger/shard_keys.py)

    def endpoints(self) -> list[str]:
        return list(self.base_urls) or ([self.base_url] if self.base_url else [])

    @property
    def embedded(self) -> bool:
        return not self.base_url

    def params(self) -> dict[str, Any]:
        """Request parameters besides model and messages."""
        out: dict[str, Any] = {}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        return out

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return msgspec.convert(data, cls)


def compare(stored: RunConfig, given: RunConfig, typed: Collection[str] | None, *,
            label: Callable[[str], str] | None = None, source: str = "given") -> tuple[list[str], dict[str, Any]]:
    """What ``ledger run --run-id EXISTING`` asked compared with the run: the conflicts
    (``"model: a (run) vs b (given)"``, one per differing setting that defines the run) and
    the overrides (the differing settings of HOW_FIELDS, to be used by this session).
    Only the settings in ``typed`` count (``None``: all of them); the rest come from the run.
    ``label`` / ``source``: how a setting and its giver are named (an experiment's file
    names its keys, not the CLI's flags)."""
    conflicts: list[str] = []
    overrides: dict[str, Any] = {}
    for name in RunConfig.__struct_fields__:
        if name in _NOT_COMPARED or (typed is not None and name not in typed):
            continue
        old, new = getattr(stored, name), getattr(given, name)
        if old == new:
            continue
        if name in HOW_FIELDS:
            overrides[name] = new
        else:
            conflicts.append(f"{(label or _option)(name)}: {_shown(old)} (run) vs {_shown(new)} ({source})")
    return conflicts, overrides


def _option(name: str) -> str:
    return {"simulator": "--sim"}.get(name, "--" + name.replace("_", "-"))


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def check_config(config: RunConfig) -> None:
    """Every number and the embedded simulator's settings, before anything is written.
    NaN and infinity pass ``< 0`` tests, so each float is checked to be finite first."""
    from .registry import check_kinds
    from .simulator import SimConfig

    check_kinds(config.runner, config.transport, config.base_url)
    _at_least(config, 1, "samples", "concurrency", "shards")
    if config.workers != "local":  # said even without --shards, where it would do nothing
        from .shard_plan import workers_of

        workers_of(config)
    if config.shards > 1:
        from .shard_plan import check_sharding

        check_sharding(config)
    _at_least(config, 0, "retries")
    if config.concurrency > MAX_CONCURRENCY:
        raise InputError(f"--concurrency {config.concurrency:,}: at most {MAX_CONCURRENCY:,} (each request in flight "
                         "holds a connection, a socket and buffers; no endpoint serves more at once)")
    _at_least(config, 1, "limit", "rpm", "tpm", "max_context", "max_tokens")
    _finite(config.timeout, "--timeout", positive=True)
    _finite(config.give_up_after, "--give-up-after", positive=True)
    _finite(config.temperature, "--temperature")
    _finite(config.price_in, "--price-in")
    _finite(config.price_out, "--price-out")
    _finite(config.cache_max_age, "--cache-max-age", positive=True)
    _finite(config.batch_window, "--batch-window", positive=True)
    if not (math.isfinite(config.batch_discount) and 0 <= config.batch_discount < 1):
        raise InputError(f"--batch-discount {config.batch_discount}: must be a share in [0, 1), e.g. 0.5 (half price)")
    _at_least(config, 1, "batch_max_requests", "batch_max_bytes")
    for name in config.__struct_fields__:
        value = getattr(config, name)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise InputError(f"{_option(name)} {value}: too large (the log holds 64-bit integers)")
    try:
        sim = msgspec.convert(config.simulator, SimConfig)
    except msgspec.ValidationError as exc:
        raise InputError(f"--sim: {exc}") from None
    check_sim(sim)


def _at_least(config: RunConfig, low: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < low:
            raise InputError(f"{_option(name)} must be at least {low} (got {value})")


def _finite(value: float | None, option: str, positive: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise InputError(f"{option} {value}: must be a finite number {'> 0' if positive else '>= 0'}")


def check_sim(sim: Any, where: str = "--sim") -> None:
    """Rates are probabilities; times and capacities are finite and not negative (the run's
    --sim, and `ledger simulate`'s flags: ``where`` names the source)."""
    for name in sim.__struct_fields__:
        value = getattr(sim, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or name == "seed":
            continue
        if not math.isfinite(value) or value < 0 or (name.startswith("rate_") and value > 1):
            allowed = "a probability in [0, 1]" if name.startswith("rate_") else "finite and >= 0"
            raise InputError(f"{where}: {name} = {value}: must be {allowed}")
