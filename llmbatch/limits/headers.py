"""The rate-limit headers providers send: OpenAI's and compatible servers' ``x-ratelimit-*`` and
Anthropic's ``anthropic-ratelimit-*``, read into one value. Pure."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = ["RateHeaders", "parse_rate_headers"]


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What a response said about the provider's limits (per minute) and the current window."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


def _go_duration_s(value: str | None) -> float | None:
    """OpenAI's reset headers: Go durations (``6m0s``, ``1.5s``, ``250ms``) or plain seconds."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import durationpy

    try:
        return max(0.0, durationpy.from_str(value.strip()).total_seconds())
    except Exception:  # noqa: BLE001 - a malformed header is ignored, never fatal
        return None


def _rfc3339_s(value: str | None, now_wall: float) -> float | None:
    """Anthropic's reset headers: an RFC 3339 time; seconds from now."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, when.timestamp() - now_wall)


def parse_rate_headers(headers: Mapping[str, str], now_wall: float | None = None) -> RateHeaders | None:
    """Read OpenAI-style or Anthropic-style rate-limit headers; None when there are none."""
    get = headers.get
    if get("x-ratelimit-limit-requests") is not None or get("x-ratelimit-limit-tokens") is not None:
        return RateHeaders(
            limit_requests=_int(get("x-ratelimit-limit-requests")),
            remaining_requests=_int(get("x-ratelimit-remaining-requests")),
            reset_requests_s=_go_duration_s(get("x-ratelimit-reset-requests")),
            limit_tokens=_int(get("x-ratelimit-limit-tokens")),
            remaining_tokens=_int(get("x-ratelimit-remaining-tokens")),
            reset_tokens_s=_go_duration_s(get("x-ratelimit-reset-tokens")),
        )
    if get("anthropic-ratelimit-requests-limit") is not None or get("anthropic-ratelimit-tokens-limit") is not None:
        now_wall = time.time() if now_wall is None else now_wall
        return RateHeaders(
            limit_requests=_int(get("anthropic-ratelimit-requests-limit")),
            remaining_requests=_int(get("anthropic-ratelimit-requests-remaining")),
            reset_requests_s=_rfc3339_s(get("anthropic-ratelimit-requests-reset"), now_wall),
            limit_tokens=_int(get("anthropic-ratelimit-tokens-limit")),
            remaining_tokens=_int(get("anthropic-ratelimit-tokens-remaining")),
            reset_tokens_s=_rfc3339_s(get("anthropic-ratelimit-tokens-reset"), now_wall),
        )
    return None
