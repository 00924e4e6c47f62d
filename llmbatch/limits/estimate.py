"""What a call will cost in tokens before it is made: about 4 characters a token for the prompt,
the completion's cap or the average completion seen so far. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmbatch.model.request import output_cap, prompt_estimate

__all__ = ["DEFAULT_COMPLETION_TOKENS", "estimate_split", "estimate_tokens", "least_tokens"]

#: Completion tokens assumed for a request without max_tokens before any answer has been seen.
DEFAULT_COMPLETION_TOKENS = 256


def estimate_split(
    messages: list[dict[str, Any]], params: Mapping[str, Any], avg_completion: float | None
) -> tuple[int, int]:
    """``(input, output)`` tokens a request will cost before we know: about 4 characters a token
    for the prompt; the completion's cap (or the average completion seen so far, times ``n``)."""
    prompt = prompt_estimate(messages)
    cap = output_cap(params)
    if cap is None:
        cap = int((avg_completion or DEFAULT_COMPLETION_TOKENS) * int(params.get("n") or 1))
    return int(prompt), cap


def estimate_tokens(messages: list[dict[str, Any]], params: Mapping[str, Any], avg_completion: float | None) -> int:
    """Total of :func:`estimate_split`: what a call counts against a tokens-per-minute limit."""
    prompt, completion = estimate_split(messages, params, avg_completion)
    return prompt + completion


def least_tokens(messages: list[dict[str, Any]], params: Mapping[str, Any]) -> int:
    """What a request counts against a tokens-per-minute limit at the least: its prompt and the
    completion's cap, when it sets one. A guess at an uncapped completion is left out: a request
    over the limit by this count can never be sent, one over it only by a guess may still fit."""
    cap = output_cap(params)
    return prompt_estimate(messages) + (cap or 0)
