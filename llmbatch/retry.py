"""The retry policy: which failures are worth another attempt, and how long to wait.

Built from tenacity's parts. Only failures the provider classified as retryable (429, 408, 409,
5xx, timeouts, dropped connections — see ``provider.CallError``) are retried; a rejected request
(400, 422, ...) would fail the same way again and costs money each time.

Waiting: the server's ``Retry-After`` wins when it sent one (it knows when room frees up);
otherwise exponential backoff with full jitter (a random wait up to the bound), so requests
that failed together do not come back together. ``sleep`` is injectable so tests never wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import tenacity
from tenacity.wait import wait_base

__all__ = ["RetryPolicy", "wait_retry_after"]


class wait_retry_after(wait_base):
    """Wait what the server asked for (``retry_after_s`` on the failure), capped; else ``fallback``.

    Use it to wrap any tenacity wait: ``wait_retry_after(wait_exponential_jitter(...), cap=120)``.
    """

    def __init__(self, fallback: wait_base, cap_s: float) -> None:
        self.fallback = fallback
        self.cap_s = cap_s

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            asked = getattr(outcome.exception(), "retry_after_s", None)
            if asked is not None and asked >= 0:
                return float(min(asked, self.cap_s))
        return float(self.fallback(retry_state))


def _is_retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times and how patiently to retry one request."""

    max_retries: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    #: A Retry-After longer than this is treated as this: a misbehaving header must not park
    #: a run for an hour.
    retry_after_cap_s: float = 300.0

    def retrying(
        self,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        on_retry: Callable[[tenacity.RetryCallState], None] | None = None,
    ) -> tenacity.AsyncRetrying:
        """A fresh controller for one request (tenacity keeps per-iteration state on the
        instance, so concurrent requests must not share one)."""
        return tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=wait_retry_after(
                # "Full jitter": a random wait up to the exponential bound, so that requests that
                # failed together do not come back together.
                tenacity.wait_random_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s),
                cap_s=self.retry_after_cap_s,
            ),
            retry=tenacity.retry_if_exception(_is_retryable),
            sleep=sleep,
            before_sleep=on_retry,
            reraise=True,
        )
