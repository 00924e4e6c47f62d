"""How a run goes: the options the resolver and the live executor read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llmbatch.limits import LimitSettings
from llmbatch.pricing import ModelPrice
from llmbatch.retry import RetryPolicy

__all__ = ["CacheMode", "RunOptions"]

CacheMode = Literal["normal", "refresh", "off", "only"]


@dataclass(frozen=True, slots=True)
class RunOptions:
    concurrency: int = 16
    timeout_s: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: normal: read and write; refresh: ignore hits, overwrite; off: neither; only: never call.
    cache_mode: CacheMode = "normal"
    ttl_s: float | None = None
    #: Requests held in memory at most; default 16 x concurrency, at least 1024.
    window: int | None = None
    #: The timeout was not given: requests with a large max_tokens get more time.
    timeout_auto: bool = False
    #: Pacing per provider:model (config file, command line) and for models not listed.
    limits: dict[str, LimitSettings] = field(default_factory=dict)
    default_limits: LimitSettings = field(default_factory=LimitSettings)
    learn_from_headers: bool = True
    #: --max-cost: no call starts that could take spending past this many USD.
    max_cost_usd: float | None = None
    #: Prices per provider:model from llmbatch.toml, for models genai-prices has none for.
    prices: dict[str, ModelPrice] = field(default_factory=dict)

    def effective_window(self) -> int:
        return self.window or max(1024, 16 * self.concurrency)
