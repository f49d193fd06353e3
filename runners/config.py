"""A run's configuration: what `ledger run` was asked, stored whole in ``run_started``.

Never holds a secret: only the *name* of the environment variable with the key. An empty
``base_url`` means the embedded simulator (started in-process by every session).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["RunConfig", "SIMULATOR_MODEL"]

SIMULATOR_MODEL = "sim-1"


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
