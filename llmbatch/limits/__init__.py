"""Pacing: when a call may start, so that the provider never has to say no.

- :mod:`~llmbatch.limits.governor`: the rules (probe, run-wide backoff, pace, header caution),
  per ``provider:model``;
- :mod:`~llmbatch.limits.pacer`: even pacing on pyrate-limiter's GCRA;
- :mod:`~llmbatch.limits.state`: where the pace and the pauses live (injected);
- :mod:`~llmbatch.limits.headers` and :mod:`~llmbatch.limits.estimate`: pure readings of
  rate-limit headers and of what a call will cost in tokens.
"""

from llmbatch.limits.estimate import DEFAULT_COMPLETION_TOKENS, estimate_split, estimate_tokens, least_tokens
from llmbatch.limits.governor import (
    CLUSTER_MIN,
    CLUSTER_WINDOW,
    DEFAULT_PAUSE_S,
    Budget,
    Governor,
    LimitSettings,
    OverLimit,
    Slot,
)
from llmbatch.limits.headers import RateHeaders, parse_rate_headers
from llmbatch.limits.pacer import PACE_SAFETY, Pacer
from llmbatch.limits.state import LimitState, LocalLimitState

__all__ = [
    "CLUSTER_MIN",
    "CLUSTER_WINDOW",
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_PAUSE_S",
    "PACE_SAFETY",
    "Budget",
    "Governor",
    "LimitSettings",
    "LimitState",
    "LocalLimitState",
    "OverLimit",
    "Pacer",
    "RateHeaders",
    "Slot",
    "estimate_split",
    "estimate_tokens",
    "least_tokens",
    "parse_rate_headers",
]
