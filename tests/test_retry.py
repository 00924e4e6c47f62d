"""The retry policy, with an injected sleep: no test waits for real."""

from __future__ import annotations

import asyncio

import pytest

from llmbatch.providers.base import CallError
from llmbatch.retry import RetryPolicy


def run_with(policy: RetryPolicy, failures: list[CallError]) -> tuple[list[float], int, BaseException | None]:
    """Fail with ``failures`` in turn, then succeed; return the waits, the attempts and any error."""
    waits: list[float] = []
    attempts = 0

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def main() -> None:
        nonlocal attempts
        async for attempt in policy.retrying(sleep=sleep):
            with attempt:
                attempts += 1
                if attempts <= len(failures):
                    raise failures[attempts - 1]

    try:
        asyncio.run(main())
    except CallError as exc:
        return waits, attempts, exc
    return waits, attempts, None


def retryable(retry_after: float | None = None, status: int = 503) -> CallError:
    return CallError("retryable", "ProviderError", "busy", status_code=status, retry_after_s=retry_after)


def test_retry_after_from_the_server_is_honoured():
    waits, attempts, error = run_with(RetryPolicy(), [retryable(7.0, 429), retryable(0.5, 429)])
    assert waits == [7.0, 0.5] and attempts == 3 and error is None


def test_without_retry_after_the_backoff_grows_exponentially_with_jitter():
    policy = RetryPolicy(max_retries=5, backoff_initial_s=1.0, backoff_max_s=60.0)
    waits, attempts, error = run_with(policy, [retryable()] * 5)
    assert attempts == 6 and error is None
    for n, wait in enumerate(waits):
        assert 0 <= wait <= 2 ** (n + 1)  # full jitter: uniform up to multiplier * 2**(n+1)


def test_backoff_is_capped():
    waits, _, _ = run_with(RetryPolicy(max_retries=8, backoff_max_s=5.0), [retryable()] * 8)
    assert max(waits) <= 5.0


def test_an_absurd_retry_after_is_capped():
    waits, _, _ = run_with(RetryPolicy(retry_after_cap_s=120.0), [retryable(86_400.0, 429)])
    assert waits == [120.0]


@pytest.mark.parametrize("kind", ["permanent", "fatal"])
def test_failures_not_worth_retrying_are_not_retried(kind):
    error = CallError(kind, "InvalidRequestError", "bad", status_code=400)
    waits, attempts, raised = run_with(RetryPolicy(), [error])
    assert waits == [] and attempts == 1 and raised is error


def test_it_gives_up_after_max_retries_with_the_last_error():
    last = retryable(status=500)
    waits, attempts, raised = run_with(RetryPolicy(max_retries=2), [retryable(), retryable(), last])
    assert attempts == 3 and len(waits) == 2 and raised is last


def test_zero_retries_means_one_attempt():
    _, attempts, raised = run_with(RetryPolicy(max_retries=0), [retryable()])
    assert attempts == 1 and raised is not None
