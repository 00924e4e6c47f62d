"""What a call costs, from genai-prices' bundled price table (it works offline).

Pure functions over (provider, model, usage). Usage is any-llm's normalised, OpenAI-shaped
``usage`` (``prompt_tokens``, ``completion_tokens``, ``prompt_tokens_details.cached_tokens``),
whatever the provider, so one mapping serves every provider. A model genai-prices does not know
costs ``None`` — never 0: an unknown price must not look free, and a budget cannot be enforced on
it. ``multiplier`` is there for discounts such as the batch API's 50 %.

Where genai-prices has no price (a local vLLM model, the simulator's), ``llmbatch.toml`` can give one
per million input and output tokens (:class:`ModelPrice`, passed in as ``prices``, by
``provider:model``). genai-prices comes first: a configured price never overrides a published one.

genai-prices is imported on first use: a run that prices nothing does not pay for loading it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "BATCH_MULTIPLIER",
    "PROVIDER_IDS",
    "ModelPrice",
    "Prices",
    "call_cost",
    "estimate_cost",
    "format_usd",
    "is_priced",
    "usage_tokens",
    "warm",
]

#: any-llm provider names that genai-prices spells differently. Providers that run models on your
#: own machine (ollama, vllm, lmstudio, llamafile, llamacpp) have no price: their cost is unknown.
PROVIDER_IDS: dict[str, str] = {
    "gemini": "google",
    "vertexai": "google",
    "bedrock": "aws",
    "azureopenai": "azure",
    "xai": "x-ai",
    "moonshot": "moonshotai",
    "voyage": "voyageai",
}


#: What a Batch-API answer costs against a live one: OpenAI and Anthropic both charge half.
#: genai-prices has batch prices (a ``PriceContext``) only for some Anthropic models, where they
#: are this same 50 %; the multiplier covers OpenAI's too, with one rule for both.
BATCH_MULTIPLIER = 0.5


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens, given in ``llmbatch.toml`` for a model genai-prices does not know.
    Cached input tokens are charged as input: a configured price has no cache discount."""

    input_per_million: float
    output_per_million: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1_000_000


#: Configured prices by ``provider:model``.
Prices = Mapping[str, ModelPrice]
_NO_PRICES: Prices = {}


def _configured(prices: Prices, provider: str, model: str) -> ModelPrice | None:
    return prices.get(f"{provider}:{model}") if prices else None


def usage_tokens(usage: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """``(input, output, cached input)`` tokens from an OpenAI-shaped usage object."""
    if not usage:
        return 0, 0, 0
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), int(cached or 0)


@lru_cache(maxsize=256)
def _model_known(provider: str, model: str) -> bool:
    return _price(provider, model, 1, 1, 0) is not None


# genai-prices works out every price from its unit registry (~0.3 ms a call on a slow core,
# a fifth of the engine's own work per call in a fast cold run); a batch repeats the same token
# counts often (same template, same max_tokens), so the answers are worth keeping.
@lru_cache(maxsize=16384)
def _price(provider: str, model: str, input_tokens: int, output_tokens: int, cached: int) -> float | None:
    from genai_prices import Usage, calc_price

    try:
        calculation = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cached or None),
            model_ref=model,
            provider_id=PROVIDER_IDS.get(provider, provider),
        )
    except LookupError:
        return None
    return float(calculation.total_price)


def warm(models: Iterable[str], prices: Prices = _NO_PRICES) -> None:
    """Load genai-prices and look up each ``provider:model``, so that the first answer of a run
    is not held up while its table loads: 0.5-1.5 s on this project's 2-core machine, during
    which a cold run's event loop stood still with 100 calls in flight. Meant for a background
    thread at the start of a run (the import lock makes an early caller wait, never fail)."""
    for ref in models:
        provider, _, model = ref.partition(":")
        is_priced(provider, model, prices=prices)


def is_priced(provider: str, model: str, *, prices: Prices = _NO_PRICES) -> bool:
    """Whether genai-prices, or else ``prices`` (llmbatch.toml's), has a price for this model."""
    return _model_known(provider, model) or _configured(prices, provider, model) is not None


def call_cost(
    provider: str,
    model: str,
    usage: Mapping[str, Any] | None,
    *,
    multiplier: float = 1.0,
    prices: Prices = _NO_PRICES,
) -> float | None:
    """USD a call cost, from its usage; None when the model has no known price or there is no usage."""
    if not usage:
        return None
    input_tokens, output_tokens, cached = usage_tokens(usage)
    if _model_known(provider, model):
        price = _price(provider, model, input_tokens, output_tokens, cached)
    else:
        configured = _configured(prices, provider, model)
        price = configured.cost(input_tokens, output_tokens) if configured else None
    return None if price is None else price * multiplier


def estimate_cost(
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    multiplier: float = 1.0,
    prices: Prices = _NO_PRICES,
) -> float | None:
    """USD that calls of this many tokens would cost (no cache discount assumed)."""
    if _model_known(provider, model):
        price = _price(provider, model, input_tokens, output_tokens, 0)
    else:
        configured = _configured(prices, provider, model)
        price = configured.cost(input_tokens, output_tokens) if configured else None
    return None if price is None else price * multiplier


def format_usd(amount: float | None) -> str:
    """Dollars for people: ``unknown`` for None (an unknown price is not 0), cents from a dollar
    up, and below a dollar three significant digits, so that the cost of a small batch of a cheap
    model is never shown as ``$0.0000`` nor as ``3.9e-06``."""
    if amount is None:
        return "unknown"
    if amount == 0:
        return "$0"
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount >= 1:
        return f"{sign}${amount:,.2f}"
    decimals = max(2, 2 - math.floor(math.log10(amount)))
    text = f"{amount:.{decimals}f}".rstrip("0")
    if len(text.split(".")[1]) < 2:
        text = f"{amount:.2f}"
    return f"{sign}${text}"
