"""Pacing and run-wide backoff, on a fake clock and a fake sleep: no test waits for real."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llmbatch.limits import (
    CLUSTER_MIN,
    CLUSTER_WINDOW,
    DEFAULT_COMPLETION_TOKENS,
    DEFAULT_PAUSE_S,
    PACE_SAFETY,
    Governor,
    LimitSettings,
    OverLimit,
    Pacer,
    RateHeaders,
    estimate_tokens,
    parse_rate_headers,
)

T0 = 1000.0  # a monotonic clock does not start at zero


def now_(coroutine: Any) -> Any:
    """The pacer awaits its state store (which may be shared, and so asynchronous): run one of its
    coroutines to the end here, where the store is in memory and answers at once."""
    return asyncio.run(coroutine)


KEY = "openai:gpt-4o-mini"
OTHER = "anthropic:claude-sonnet-4-5"


class FakeTime:
    """A clock and an async sleep: a sleeper wakes when every task is blocked and its wake time is
    the earliest, and the clock jumps to it. ``drive`` runs coroutines on that time."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), woken))
        await woken

    async def _idle(self) -> None:
        for _ in range(20):  # every runnable task runs until it blocks (no real I/O anywhere)
            await asyncio.sleep(0)

    def _wake_next(self) -> None:
        wake, _, woken = heapq.heappop(self._sleepers)
        self.now = max(self.now, wake)
        if not woken.done():  # a cancelled sleeper has nothing to wake
            woken.set_result(None)

    async def settle(self) -> None:
        """Let fake time pass until nobody is sleeping: what remains is blocked on something else."""
        await self._idle()
        while self._sleepers:
            self._wake_next()
            await self._idle()
        # run()'s own loop may have woken the last sleeper while we idled: let it finish too.
        await self._idle()

    async def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        task = asyncio.ensure_future(coroutine)
        idle_rounds = 0
        while not task.done():
            await self._idle()
            if self._sleepers:
                self._wake_next()
                idle_rounds = 0
            elif not task.done():
                idle_rounds += 1
                assert idle_rounds < 50, "stuck: blocked with nobody sleeping"
        return task.result()

    def drive(self, main: Callable[[], Awaitable[Any]]) -> Any:
        async def wrapped() -> Any:
            return await self.run(main())  # type: ignore[arg-type]

        return asyncio.run(wrapped())


def interval(rpm: int) -> float:
    return 60 / (rpm * PACE_SAFETY)


def on_schedule(gap: float, rpm: int) -> bool:
    """Through the governor, a start is never early and at most 2 ms late (the pacer counts whole ms)."""
    return interval(rpm) - 0.001 <= gap <= interval(rpm) + 0.002


def backlogged_starts(pacer: Pacer, count: int, *, tokens: int = 0, now: float = T0) -> list[float]:
    """Start times of ``count`` requests that ask again as soon as told to."""
    starts: list[float] = []
    while len(starts) < count:
        wait = now_(pacer.reserve(tokens, now))
        if wait == 0:
            starts.append(now)
        else:
            assert wait > 0
            now += wait
    return starts


def most_in_any_window(times: list[float], window: float, weights: list[int] | None = None) -> int:
    """The most (weighted) events in any closed span of ``window`` seconds."""
    weights = weights or [1] * len(times)
    prefix = list(itertools.accumulate(weights, initial=0))
    return max(prefix[bisect_right(times, t + window)] - prefix[i] for i, t in enumerate(times))


def openai_headers(
    limit_requests: int = 1200, remaining_requests: int = 1199, reset_requests: str = "50ms", **more: str
) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit_requests),
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-reset-requests": reset_requests,
        **more,
    }


# --- Pacer: requests ----------------------------------------------------------------------------


@pytest.mark.parametrize("start", [T0, T0 + 0.0004, T0 + 0.0137])
def test_requests_start_evenly_at_the_safety_fraction_of_rpm(start):
    starts = backlogged_starts(Pacer(1200, None), 400, now=start)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(abs(gap - interval(1200)) <= 0.001 for gap in gaps), (min(gaps), max(gaps))
    # Never ahead of the schedule: the k-th start comes k intervals after the first, or later.
    for k, begun in enumerate(starts):
        assert begun >= starts[0] + k * interval(1200) - 0.001


def test_no_one_second_window_ever_holds_more_than_rpm_over_60_starts():
    starts = backlogged_starts(Pacer(1200, None), 1200, now=T0 + 0.0003)
    assert most_in_any_window(starts, 1.0) <= 1200 // 60


@pytest.mark.parametrize(
    "rpm",
    [
        50,
        60,
        100,
        500,
        1000,
        1200,
        3500,
        10_000,
    ],
)
def test_no_one_second_window_holds_more_than_a_strict_second_allows(rpm):
    for start in (T0, T0 + 0.0009):
        starts = backlogged_starts(Pacer(rpm, None), min(3 * rpm // 60 + 5, 1000), now=start)
        assert most_in_any_window(starts, 1.0) <= max(1, rpm // 60)


@pytest.mark.parametrize("rpm", [6_000, 12_000, 30_000])
def test_the_long_run_request_rate_is_the_safety_fraction_of_rpm(rpm):
    starts = backlogged_starts(Pacer(rpm, None), 1000)
    per_minute = (len(starts) - 1) / (starts[-1] - starts[0]) * 60
    assert per_minute == pytest.approx(rpm * PACE_SAFETY, rel=0.005)


def test_a_request_that_has_to_wait_is_told_how_long():
    pacer = Pacer(1200, None)
    assert now_(pacer.reserve(0, T0)) == 0.0
    wait = now_(pacer.reserve(0, T0))
    assert wait == pytest.approx(interval(1200), abs=0.001)
    assert now_(pacer.reserve(0, T0 + wait + 1e-6)) == 0.0


@pytest.mark.parametrize("count", [1, 5, 40])
def test_precharge_delays_the_next_start_by_that_many_intervals(count):
    pacer = Pacer(1200, None)
    now_(pacer.precharge(count, 0, T0))
    (first,) = backlogged_starts(pacer, 1)
    # Whole milliseconds, rounded up: at most 2 ms late, never early.
    assert count * interval(1200) <= first - T0 <= count * interval(1200) + 0.002


def test_precharge_of_nothing_changes_nothing():
    pacer = Pacer(1200, None)
    now_(pacer.precharge(0, 0, T0))
    assert now_(pacer.reserve(0, T0)) == 0.0


# --- Pacer: tokens --------------------------------------------------------------------------------


def token_rate(tpm: int) -> float:
    return tpm * PACE_SAFETY / 60


def token_run(tpm: int, tokens: int, seconds: float, actual: Iterator[int] | None = None) -> tuple[float, float]:
    """Back-to-back ``tokens``-sized requests for ``seconds``; the (estimated, actual) tokens a
    second from the first start to the last (``actual``: what each answer really cost)."""
    pacer = Pacer(None, tpm)
    starts: list[float] = []
    used: list[int] = []
    now = T0
    while now < T0 + seconds:
        wait = now_(pacer.reserve(tokens, now))
        if wait:
            now += wait
            continue
        starts.append(now)
        used.append(tokens if actual is None else next(actual))
        pacer.settle(tokens, used[-1])
    span = starts[-1] - starts[0]
    return tokens * (len(starts) - 1) / span, sum(used[:-1]) / span


TOKEN_RUNS = [(60_000, 100), (60_000, 40), (6_000, 30), (60_000, 2_000)]


@pytest.mark.parametrize(("tpm", "tokens"), [*TOKEN_RUNS, (600_000, 1500)])
def test_tokens_are_never_paced_faster_than_the_safety_fraction_of_tpm(tpm, tokens):
    per_second, _ = token_run(tpm, tokens, 60.0)
    assert per_second <= token_rate(tpm)


@pytest.mark.parametrize(("tpm", "tokens"), TOKEN_RUNS)
def test_tokens_are_paced_at_no_less_than_95_percent_of_the_pace(tpm, tokens):
    per_second, _ = token_run(tpm, tokens, 60.0)
    assert per_second >= 0.95 * token_rate(tpm)


def test_a_request_larger_than_the_burst_gets_through_in_several_lumps():
    pacer = Pacer(None, 60_000)
    burst = int(token_rate(60_000) / 100)  # 10 ms worth at once
    waits = 0
    now = T0
    while (wait := now_(pacer.reserve(500, now))) > 0:
        waits += 1
        now += wait
    assert waits >= 500 // burst - 1  # paid lump by lump, waiting between them
    # It starts once its tokens have been paid at the pace (less the one lump allowed at once).
    assert (500 - burst) / token_rate(60_000) <= now - T0 <= 1.1 * 500 / token_rate(60_000)
    assert now_(pacer.reserve(1, now)) > 0  # and it used up what was paid


def next_start_after_settling(estimated: int, actual: int) -> float:
    pacer = Pacer(None, 60_000)
    (first,) = backlogged_starts(pacer, 1, tokens=100)
    pacer.settle(estimated, actual)
    (second,) = backlogged_starts(pacer, 1, tokens=100, now=first)
    return second - first


def test_an_answer_costlier_than_its_estimate_slows_later_requests():
    exact = next_start_after_settling(100, 100)
    costlier = next_start_after_settling(100, 600)
    extra = 500 / token_rate(60_000)
    assert extra <= costlier - exact <= 1.1 * extra


def test_an_answer_cheaper_than_its_estimate_speeds_later_requests():
    exact = next_start_after_settling(100, 100)
    cheaper = next_start_after_settling(100, 40)
    saved = 60 / token_rate(60_000)
    assert 0.9 * saved <= exact - cheaper <= 1.1 * saved
    assert next_start_after_settling(100, 0) == 0.0  # fully paid by the first estimate


def test_settling_keeps_the_long_run_token_rate_what_the_answers_really_cost():
    _, exact = token_run(60_000, 100, 60.0)
    _, settled = token_run(60_000, 100, 60.0, actual=itertools.cycle([30, 250, 100, 170]))
    assert settled == pytest.approx(exact, rel=0.02)


def test_precharged_tokens_are_paid_before_the_next_request():
    pacer = Pacer(None, 60_000)
    now_(pacer.precharge(3, 1000, T0))
    (start,) = backlogged_starts(pacer, 1, tokens=100)
    assert (1100 - 9) / token_rate(60_000) <= start - T0 <= 1.1 * 1100 / token_rate(60_000)


def test_requests_and_tokens_both_hold():
    starts = backlogged_starts(Pacer(1200, 60_000), 300, tokens=10)  # the tokens allow 97 a second
    assert most_in_any_window(starts, 1.0) <= 20
    starts = backlogged_starts(Pacer(1200, 60_000), 100, tokens=500)  # now tokens hold them back
    assert 500 * 99 / (starts[-1] - starts[0]) <= token_rate(60_000)


# --- Governor: run-wide backoff ---------------------------------------------------------------------

#: What a 429 carries when the provider's window is used up (OpenAI's headers): this, not the 429 by
#: itself, is what pauses the whole budget. The governors of the tests that use it learn no limits
#: from headers, so that no pace is added to the pause under test.
WINDOW_USED_UP = openai_headers(1200, 0, "1s")


def make_governor(fake: FakeTime, **kwargs: Any) -> Governor:
    kwargs.setdefault("concurrency", 8)
    return Governor(clock=fake.clock, sleep=fake.sleep, **kwargs)


def backoff_governor(fake: FakeTime, **kwargs: Any) -> Governor:
    return make_governor(fake, learn_from_headers=False, **kwargs)


async def call(
    governor: Governor, key: str = KEY, *, status: int | None = 200, tokens: int = 100, **release: Any
) -> float:
    """Acquire and release one call; the (fake) time it started."""
    assert await governor.acquire(key, tokens)
    started = governor.clock()
    await governor.release(
        key,
        status=status,
        headers=release.pop("headers", None),
        estimated_tokens=tokens,
        actual_tokens=release.pop("actual_tokens", None),
        **release,
    )
    return started


async def started_now(fake: FakeTime, governor: Governor, count: int, key: str = KEY) -> int:
    """Ask for ``count`` calls at once; how many start (the rest are cancelled)."""
    tasks = [asyncio.ensure_future(governor.acquire(key, 10)) for _ in range(count)]
    await fake.settle()
    begun = sum(1 for task in tasks if task.done() and task.result())
    for task in tasks:
        task.cancel()
    await asyncio.sleep(0)
    return begun


async def throttle(
    governor: Governor,
    retry_after: float | None = None,
    key: str = KEY,
    *,
    headers: dict[str, str] | None = WINDOW_USED_UP,
    tokens: int = 10,
) -> None:
    """A 429 for a call in flight; by default one whose headers say the window is used up."""
    await governor.release(
        key, status=429, headers=headers, estimated_tokens=tokens, actual_tokens=None, retry_after_s=retry_after
    )


def test_a_429_of_a_used_up_window_pauses_every_later_call_of_that_budget_until_retry_after():
    fake = FakeTime()
    governor = backoff_governor(fake)

    async def main() -> list[float]:
        await call(governor, OTHER)
        assert await governor.acquire(KEY, 10)
        await throttle(governor, 5.0)
        assert governor.throttled()
        other = await call(governor, OTHER)  # another budget: not held back
        later = [await call(governor, KEY) for _ in range(3)]
        return [other, *later]

    other, *later = fake.drive(main)
    assert other == T0
    assert later == [pytest.approx(T0 + 5.0)] * 3
    assert sum(fake.slept) == pytest.approx(5.0)
    assert not governor.throttled()


def test_calls_already_waiting_for_a_slot_wait_out_the_pause_too():
    fake = FakeTime()
    governor = backoff_governor(fake, concurrency=1)
    starts: list[float] = []

    async def one() -> None:
        assert await governor.acquire(KEY, 10)
        starts.append(fake.now)

    async def main() -> None:
        await call(governor)  # the first answer ends the probe
        assert await governor.acquire(KEY, 10)
        waiting = [asyncio.ensure_future(one()) for _ in range(2)]
        await fake.settle()
        assert starts == []  # no slot
        await throttle(governor, 2.0)  # the slot comes back with a 429
        await fake.settle()
        assert starts == [pytest.approx(T0 + 2.0)]  # one slot: one of them, after the pause
        await governor.release(KEY, status=200, headers=None, estimated_tokens=10, actual_tokens=None)
        await asyncio.gather(*waiting)

    fake.drive(main)
    assert starts == [pytest.approx(T0 + 2.0)] * 2


def test_a_429_without_retry_after_pauses_the_default_and_a_shorter_one_never_shortens_a_pause():
    fake = FakeTime()
    governor = backoff_governor(fake)

    async def main() -> float:
        await call(governor)
        assert await governor.acquire(KEY, 10) and await governor.acquire(KEY, 10)
        await throttle(governor, 3.0)
        await throttle(governor)
        return await call(governor)

    assert fake.drive(main) == pytest.approx(T0 + 3.0)
    fake = FakeTime()
    governor = backoff_governor(fake)

    async def alone() -> float:
        assert await governor.acquire(KEY, 10)
        await throttle(governor)
        return await call(governor)

    assert fake.drive(alone) == pytest.approx(T0 + DEFAULT_PAUSE_S)


def test_one_burst_of_429s_halves_concurrency_once_and_the_next_pause_again():
    fake = FakeTime()
    governor = backoff_governor(fake, concurrency=8)
    budget = governor.budget(KEY)

    async def main() -> None:
        await call(governor)
        assert await started_now(fake, governor, 8) == 8
        for _ in range(3):
            await throttle(governor, 2.0)
        assert budget.limit == 4
        fake.now += 0.5  # the rest of the burst, inside the pause
        for _ in range(5):
            await throttle(governor, 2.0)
        assert budget.limit == 4 and budget.in_flight == 0
        fake.now += 2.0  # the pause has passed
        assert await started_now(fake, governor, 6) == 4  # halved: four in flight at most
        await throttle(governor, 2.0)
        assert budget.limit == 2

    fake.drive(main)
    assert budget.throttles == 9


def test_a_late_429_of_the_same_burst_with_a_short_retry_after_does_not_halve_again():
    fake = FakeTime()
    governor = backoff_governor(fake, concurrency=8)
    budget = governor.budget(KEY)

    async def main() -> None:
        await call(governor)
        assert await started_now(fake, governor, 8) == 8
        await throttle(governor, 2.0)
        fake.now += 1.5  # still paused: only calls sent before the first 429 can answer now
        await throttle(governor, 0.1)

    fake.drive(main)
    assert budget.limit == 4


# --- Governor: a sporadic 429 is that request's alone ---------------------------------------------


def test_a_lone_429_pauses_nothing_and_halves_nothing():
    fake = FakeTime()
    governor = make_governor(fake, concurrency=8)
    budget = governor.budget(KEY)

    async def main() -> int:
        await call(governor)
        assert await started_now(fake, governor, 8) == 8
        await throttle(governor, 2.0, headers=None)  # a busy provider: no rate-limit headers
        assert not governor.throttled()
        return await started_now(fake, governor, 3)  # its slot is free at once, not in 2 s

    assert fake.drive(main) == 1
    assert fake.now == T0 and fake.slept == []
    assert budget.limit == 8 and budget.not_before <= T0
    assert (budget.throttles, budget.backoffs) == (1, 0)


def test_a_429_whose_headers_leave_room_in_the_window_is_sporadic_too():
    fake = FakeTime()
    governor = make_governor(fake, concurrency=8)
    budget = governor.budget(KEY)
    room = openai_headers(
        1200, 600, "1s", **{"x-ratelimit-limit-tokens": "90000", "x-ratelimit-remaining-tokens": "5000"}
    )

    async def main() -> float:
        await call(governor, headers=room)
        assert await governor.acquire(KEY, 100)
        await throttle(governor, 2.0, headers=room, tokens=100)
        return await call(governor, headers=room)

    assert fake.drive(main) - T0 < 1.0  # the learned pace, not the 2 s Retry-After
    assert budget.limit == 8 and budget.backoffs == 0


ANTHROPIC_USED_UP = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "0",
    "anthropic-ratelimit-requests-reset": "2025-06-01T12:00:00Z",
}


@pytest.mark.parametrize(
    ("headers", "tokens"),
    [
        (openai_headers(1200, 0, "1s"), 10),
        ({"x-ratelimit-limit-tokens": "90000", "x-ratelimit-remaining-tokens": "0"}, 10),
        # A token refusal leaves some tokens, only fewer than the call needs.
        ({"x-ratelimit-limit-tokens": "90000", "x-ratelimit-remaining-tokens": "300"}, 500),
        (ANTHROPIC_USED_UP, 10),
    ],
    ids=["requests-0", "tokens-0", "tokens-below-the-call", "anthropic-requests-0"],
)
def test_a_429_whose_headers_say_the_window_is_used_up_pauses_and_halves(headers, tokens):
    fake = FakeTime()
    governor = backoff_governor(fake, concurrency=8)
    budget = governor.budget(KEY)

    async def main() -> float:
        await call(governor)
        assert await started_now(fake, governor, 8) == 8
        await throttle(governor, 2.0, headers=headers, tokens=tokens)
        assert governor.throttled()
        budget.in_flight = 0  # the rest of the burst answered (their tasks were cancelled)
        return await call(governor)

    assert fake.drive(main) == pytest.approx(T0 + 2.0)
    assert budget.limit == 4


def test_429s_that_cluster_pause_and_halve():
    fake = FakeTime()
    governor = make_governor(fake, concurrency=16)
    budget = governor.budget(KEY)
    paused_after: list[bool] = []

    async def main() -> None:
        for _ in range(CLUSTER_WINDOW):
            await call(governor)
        assert await started_now(fake, governor, 16) == 16
        for _ in range(CLUSTER_MIN):  # no headers: only their number says the window is used up
            await throttle(governor, 2.0, headers=None)
            paused_after.append(governor.throttled())

    fake.drive(main)
    assert (CLUSTER_WINDOW, CLUSTER_MIN) == (16, 9)
    assert paused_after == [False] * 8 + [True]  # 9 of the last 16 answers
    assert budget.limit == 8 and budget.not_before == pytest.approx(T0 + 2.0)


def test_at_the_start_a_cluster_is_a_majority_of_a_whole_window_too():
    fake = FakeTime()
    governor = make_governor(fake, concurrency=16)
    budget = governor.budget(KEY)
    paused_after: list[bool] = []

    async def main() -> None:
        assert await governor.acquire(KEY, 10)  # the probe: its 429 ends the probe too
        await throttle(governor, 2.0, headers=None)
        paused_after.append(governor.throttled())
        assert await started_now(fake, governor, 16) == 16
        for _ in range(8):
            await throttle(governor, 2.0, headers=None)
            paused_after.append(governor.throttled())

    fake.drive(main)
    assert paused_after == [False] * 8 + [True]  # 2 of 2 or 3 of 3 is bad luck, not a cluster
    assert budget.limit == 8


def test_after_a_run_wide_pause_a_lone_429_is_sporadic_again():
    fake = FakeTime()
    governor = make_governor(fake, concurrency=16)
    budget = governor.budget(KEY)

    async def main() -> None:
        await call(governor)
        assert await started_now(fake, governor, 16) == 16
        for _ in range(CLUSTER_MIN):
            await throttle(governor, 2.0, headers=None)  # 9 of the last 10: a cluster
        assert governor.throttled() and budget.limit == 8
        for _ in range(16 - CLUSTER_MIN):
            await throttle(governor, 2.0, headers=None)  # the rest of the burst, inside the pause
        assert budget.not_before == pytest.approx(T0 + 2.0)
        fake.now += 2.5
        assert not governor.throttled()
        for _ in range(3):
            await call(governor)
        await call(governor, status=429, retry_after_s=2.0)  # the burst's 429s were acted on
        assert not governor.throttled()

    fake.drive(main)
    assert budget.limit == 8 and budget.backoffs == 1 + 16 - CLUSTER_MIN  # the 9th, then those in the pause


async def simulated_run(
    fake: FakeTime, governor: Governor, *, lines: int, p429: float, latency_s: float, retry_after_s: float, seed: int
) -> list[float]:
    """Every line as the engine runs it: acquire, the call, release; a 429 waits its Retry-After
    and goes again. Each answer is a 429 with probability ``p429`` (no headers: a busy provider).
    The budget's limit after each answer."""
    draw = random.Random(seed)
    limits: list[float] = []

    async def line() -> None:
        while True:
            assert await governor.acquire(KEY, 100)
            await fake.sleep(latency_s)
            refused = draw.random() < p429
            await governor.release(
                KEY,
                status=429 if refused else 200,
                headers=None,
                estimated_tokens=100,
                actual_tokens=None,
                retry_after_s=retry_after_s if refused else None,
            )
            limits.append(governor.budget(KEY).limit)
            if not refused:
                return
            await fake.sleep(retry_after_s)  # the retry's wait (retry.wait_retry_after)

    await asyncio.gather(*(line() for _ in range(lines)))
    return limits


def test_ten_percent_random_429s_keep_the_limit_near_max_and_the_run_near_fault_free():
    def run(p429: float, seed: int) -> tuple[float, list[float], Governor]:
        fake = FakeTime()
        governor = make_governor(fake, concurrency=16)
        limits = fake.drive(
            lambda: simulated_run(fake, governor, lines=400, p429=p429, latency_s=0.2, retry_after_s=2.0, seed=seed)
        )
        return fake.now - T0, limits, governor

    fault_free, _, _ = run(0.0, 0)
    for seed in range(3):
        took, limits, governor = run(0.1, seed)
        budget = governor.budget(KEY)
        assert 0.05 * len(limits) < budget.throttles < 0.15 * len(limits)  # about 10 % were 429s
        assert sum(limits) / len(limits) >= 0.95 * 16, (seed, min(limits))
        # The target, in fake time: at most 2 x (fault-free + Retry-After).
        assert took <= 2 * (fault_free + 2.0), (seed, took, fault_free)


def test_each_round_of_successes_gives_one_slot_back_up_to_max_concurrency():
    fake = FakeTime()
    governor = backoff_governor(fake, concurrency=8)
    budget = governor.budget(KEY)
    limits: list[float] = []

    async def main() -> None:
        assert await governor.acquire(KEY, 10)
        await throttle(governor)
        assert budget.limit == 4
        for _ in range(4 + 5 + 6 + 7 + 40):
            await call(governor)
            limits.append(budget.limit)

    fake.drive(main)
    assert limits[:3] == [4, 4, 4] and limits[3] == 5  # a round of 4 at 4
    assert limits[3 + 5] == 6 and limits[3 + 5 + 6] == 7 and limits[3 + 5 + 6 + 7] == 8
    assert max(limits) == 8 and limits[-1] == 8


def test_failures_other_than_429_neither_grow_nor_shrink_concurrency():
    fake = FakeTime()
    governor = backoff_governor(fake, concurrency=8)
    budget = governor.budget(KEY)

    async def main() -> None:
        assert await governor.acquire(KEY, 10)
        await throttle(governor)
        for status in [500, 503, None, 400] * 5:
            await call(governor, status=status)

    fake.drive(main)
    assert budget.limit == 4


def test_concurrency_is_capped_by_the_model_setting():
    fake = FakeTime()
    governor = make_governor(fake, concurrency=8, settings={KEY: LimitSettings(concurrency=3)})

    async def main() -> int:
        await call(governor)
        return await started_now(fake, governor, 10)

    assert fake.drive(main) == 3
    assert governor.budget(KEY).max_concurrency == 3
    assert (
        make_governor(fake, concurrency=2, settings={KEY: LimitSettings(concurrency=5)}).budget(KEY).max_concurrency
        == 2
    )


def test_until_the_first_answer_one_call_at_a_time():
    fake = FakeTime()
    governor = make_governor(fake, concurrency=8)

    async def main() -> tuple[int, int]:
        first = await started_now(fake, governor, 5)
        await governor.release(KEY, status=200, headers=None, estimated_tokens=10, actual_tokens=None)
        governor.budget(KEY).in_flight = 0  # the started one (its task was cancelled) ended too
        return first, await started_now(fake, governor, 10)

    assert fake.drive(main) == (1, 8)


# --- Governor: limits learned from headers -------------------------------------------------------


def test_limits_learned_from_openai_headers_pace_at_the_safety_fraction():
    fake = FakeTime()
    governor = make_governor(fake)

    async def main() -> list[float]:
        return [await call(governor, headers=openai_headers(1200, 1100, "3s")) for _ in range(50)]

    starts = fake.drive(main)
    budget = governor.budget(KEY)
    assert budget.learned_rpm == 1200 and budget.rpm == 1200 and governor.pace() == (1200, None)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(on_schedule(gap, 1200) for gap in gaps), gaps  # the call before the headers counts too
    assert most_in_any_window(starts, 1.0) <= 20


def test_learned_token_limit_paces_tokens():
    fake = FakeTime()
    governor = make_governor(fake)
    headers = {
        "x-ratelimit-limit-tokens": "60000",
        "x-ratelimit-remaining-tokens": "59000",
        "x-ratelimit-reset-tokens": "1s",
    }

    async def main() -> list[float]:
        return [await call(governor, tokens=500, headers=headers) for _ in range(12)]

    starts = fake.drive(main)
    assert governor.budget(KEY).learned_tpm == 60000 and governor.budget(KEY).rpm is None
    assert 500 * 10 / (starts[-1] - starts[1]) <= token_rate(60_000)


@pytest.mark.parametrize("settings", [{"settings": {KEY: LimitSettings(rpm=600)}}, {"default": LimitSettings(rpm=600)}])
def test_rpm_the_user_set_wins_over_headers(settings):
    fake = FakeTime()
    governor = make_governor(fake, **settings)

    async def main() -> list[float]:
        return [await call(governor, headers=openai_headers(1200)) for _ in range(20)]

    starts = fake.drive(main)
    budget = governor.budget(KEY)
    assert budget.rpm == 600 and budget.learned_rpm is None
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(on_schedule(gap, 600) for gap in gaps), gaps


def test_headers_are_not_learned_when_learning_is_off():
    fake = FakeTime()
    governor = make_governor(fake, learn_from_headers=False)

    async def main() -> list[float]:
        return [await call(governor, headers=openai_headers(1200)) for _ in range(5)]

    assert fake.drive(main) == [T0] * 5
    assert governor.budget(KEY).pacer is None and governor.pace() == (None, None)


@pytest.mark.parametrize(("reset", "pause"), [("1s", 60 / 1200), ("6m0s", 60 / 1200), ("20ms", 0.02)])
def test_remaining_requests_zero_pauses_until_room_for_one_call(reset, pause):
    fake = FakeTime()
    governor = make_governor(fake, learn_from_headers=False)

    async def main() -> float:
        await call(governor, headers=openai_headers(1200, 0, reset))
        return await call(governor)

    assert fake.drive(main) - T0 == pytest.approx(pause)


def test_remaining_tokens_below_a_call_pauses_until_they_refill():
    fake = FakeTime()
    governor = make_governor(fake, learn_from_headers=False)
    headers = {
        "x-ratelimit-limit-tokens": "60000",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "6m0s",
    }

    async def main() -> float:
        await call(governor, tokens=1000, headers=headers)
        return await call(governor, tokens=1000)

    assert fake.drive(main) - T0 == pytest.approx(60 * 600 / 60000)


def test_anthropic_headers_are_learned_and_their_reset_respected():
    fake = FakeTime()
    governor = make_governor(fake)
    reset = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-reset": reset,
    }

    starts: list[float] = []

    async def main() -> None:
        starts.append(await call(governor, OTHER, headers=headers))
        starts.append(await call(governor, OTHER))

    fake.drive(main)
    budget = governor.budget(OTHER)
    assert (budget.learned_rpm, budget.learned_tpm) == (50, 40000)
    # The window is full, but the pace learned from the same answer spaces the next call at least
    # 60/50 s later (well before the 30 s reset): no separate pause is needed on top of it.
    assert 60 / 50 <= starts[1] - starts[0] < 2
    assert governor.pace() == (50, 40000)


def test_a_full_window_pauses_when_we_are_not_pacing_under_that_limit():
    fake = FakeTime()
    governor = make_governor(fake, default=LimitSettings(rpm=6000))  # the user asked for more than allowed
    headers = {
        "x-ratelimit-limit-requests": "50",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "30s",
    }

    async def main() -> None:
        await call(governor, OTHER, headers=headers)

    fake.drive(main)
    assert governor.budget(OTHER).not_before - T0 == pytest.approx(60 / 50)


def test_a_learned_limit_that_changes_mid_run_does_not_stall_the_run():
    fake = FakeTime()
    governor = make_governor(fake)

    def headers(tokens: int) -> dict[str, str]:
        return {"anthropic-ratelimit-requests-limit": "1000", "anthropic-ratelimit-tokens-limit": str(tokens)}

    async def main() -> float:
        for _ in range(60):
            await call(governor, OTHER, headers=headers(80_000))
        # the most restrictive limit in effect changes (input vs output tokens, or a tier change)
        await governor.release(OTHER, status=200, headers=headers(40_000), estimated_tokens=100, actual_tokens=100)
        before = fake.now
        await call(governor, OTHER)
        return fake.now - before

    assert fake.drive(main) < 1.0  # one request (and 100 tokens) at the new pace, not the whole run again


def test_a_call_over_the_given_tpm_is_refused_at_once_and_never_held():
    fake = FakeTime()
    governor = make_governor(fake, settings={KEY: LimitSettings(tpm=600)})

    async def main() -> None:
        with pytest.raises(OverLimit) as refused:
            await governor.acquire(KEY, 700, least=601)
        assert (refused.value.needed, refused.value.tpm, refused.value.configured) == (601, 600, True)
        assert await governor.acquire(KEY, 700, least=600)  # at the limit: it fits, once paid for

    fake.drive(main)
    assert fake.slept and fake.now > T0  # the one that fits was paced; the other cost no time
    assert governor.budget(KEY).started == 1


def test_a_call_waiting_behind_the_probe_is_refused_when_the_probe_teaches_a_smaller_tpm():
    fake = FakeTime()
    governor = make_governor(fake)
    learned = openai_headers(**{"x-ratelimit-limit-tokens": "500", "x-ratelimit-remaining-tokens": "400"})

    async def main() -> None:
        assert await governor.acquire(KEY, 100)  # the probe
        waiting = asyncio.ensure_future(governor.acquire(KEY, 700, least=650))
        await fake.settle()
        assert not waiting.done()  # one call at a time until the provider has answered
        await governor.release(KEY, status=200, headers=learned, estimated_tokens=100, actual_tokens=100)
        with pytest.raises(OverLimit) as refused:
            await waiting
        assert (refused.value.tpm, refused.value.configured) == (500, False)

    fake.drive(main)


# --- Governor: stopping ---------------------------------------------------------------------------


def test_acquire_returns_false_once_the_run_is_stopping():
    fake = FakeTime()
    stopping = False
    governor = make_governor(fake, stopping=lambda: stopping)

    async def main() -> bool:
        nonlocal stopping
        await call(governor)
        stopping = True
        return await governor.acquire(KEY, 10)

    assert fake.drive(main) is False
    assert governor.budget(KEY).in_flight == 0 and governor.budget(KEY).started == 1


def test_wake_all_wakes_a_call_waiting_for_a_slot_when_stopping():
    fake = FakeTime()
    stopping = False
    governor = make_governor(fake, concurrency=1, stopping=lambda: stopping)

    async def main() -> tuple[bool, bool]:
        nonlocal stopping
        assert await governor.acquire(KEY, 10)
        waiting = asyncio.ensure_future(governor.acquire(KEY, 10))
        await fake.settle()
        blocked = not waiting.done()
        stopping = True
        governor.wake_all()
        await fake.settle()
        return blocked, waiting.result()

    assert fake.drive(main) == (True, False)


def test_a_call_waiting_out_a_pause_gives_up_when_stopping():
    fake = FakeTime()
    stopping = False
    governor = backoff_governor(fake, stopping=lambda: stopping)

    async def main() -> bool:
        nonlocal stopping
        assert await governor.acquire(KEY, 10)
        await throttle(governor, 30)
        waiting = asyncio.ensure_future(governor.acquire(KEY, 10))
        await asyncio.sleep(0)
        stopping = True
        await fake.settle()
        return waiting.result()

    assert fake.drive(main) is False


def test_wake_all_outside_a_loop_does_nothing():
    Governor(concurrency=1).wake_all()


# --- parse_rate_headers -----------------------------------------------------------------------------


def test_openai_headers_are_read():
    headers = {
        "x-ratelimit-limit-requests": "1200",
        "x-ratelimit-remaining-requests": "1150",
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149500",
        "x-ratelimit-reset-tokens": "250ms",
    }
    assert parse_rate_headers(headers) == RateHeaders(1200, 1150, 360.0, 150000, 149500, 0.25)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("6m0s", 360.0), ("1.5s", 1.5), ("250ms", 0.25), ("0s", 0.0), ("1h2m3.5s", 3723.5), ("12", 12.0), ("0.5", 0.5)],
)
def test_openai_resets_are_go_durations_or_seconds(value, seconds):
    parsed = parse_rate_headers({"x-ratelimit-limit-requests": "10", "x-ratelimit-reset-requests": value})
    assert parsed is not None and parsed.reset_requests_s == seconds


def test_anthropic_headers_are_read_with_resets_from_now():
    now = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2025-06-01T12:00:01.5Z",
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2025-06-01T12:00:30+00:00",
    }
    assert parse_rate_headers(headers, now_wall=now.timestamp()) == RateHeaders(50, 49, 1.5, 40000, 0, 30.0)


def test_a_reset_in_the_past_is_now():
    headers = {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-reset": "2025-06-01T11:59:00Z"}
    parsed = parse_rate_headers(headers, now_wall=datetime(2025, 6, 1, 12, tzinfo=UTC).timestamp())
    assert parsed is not None and parsed.reset_requests_s == 0.0


def test_malformed_values_are_ignored():
    openai = parse_rate_headers(
        {
            "x-ratelimit-limit-requests": "lots",
            "x-ratelimit-remaining-requests": "",
            "x-ratelimit-reset-requests": "soon",
            "x-ratelimit-limit-tokens": "90000",
            "x-ratelimit-reset-tokens": "6 minutes",
        }
    )
    assert openai == RateHeaders(limit_tokens=90000)
    anthropic = parse_rate_headers(
        {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-reset": "tomorrow"}, now_wall=0.0
    )
    assert anthropic == RateHeaders(limit_requests=50)


def test_an_infinite_limit_is_ignored():
    assert parse_rate_headers({"x-ratelimit-limit-requests": "inf"}) == RateHeaders()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "application/json"},
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"},
    ],
)
def test_without_limit_headers_there_is_nothing(headers):
    assert parse_rate_headers(headers) is None


# --- estimate_tokens --------------------------------------------------------------------------------


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def test_the_estimate_is_a_token_per_4_characters_plus_max_tokens():
    messages = [{"role": "system", "content": "s" * 40}, user("u" * 400)]
    assert estimate_tokens(messages, {"max_tokens": 50}, avg_completion=None) == 10 + 100 + 4 * 2 + 50


def test_max_completion_tokens_counts_first():
    params = {"max_completion_tokens": 70, "max_tokens": 50}
    assert estimate_tokens([user("u" * 400)], params, avg_completion=300.0) == 100 + 4 + 70


def test_without_a_cap_the_average_completion_counts_then_the_default():
    assert estimate_tokens([user("u" * 400)], {}, avg_completion=37.6) == int(104 + 37.6)
    assert estimate_tokens([user("u" * 400)], {}, avg_completion=None) == 104 + DEFAULT_COMPLETION_TOKENS


def test_n_completions_count_n_times():
    assert estimate_tokens([user("u" * 400)], {"max_tokens": 50, "n": 3}, avg_completion=None) == 104 + 150
    assert estimate_tokens([user("u" * 400)], {"n": 2}, avg_completion=10.0) == 104 + 20


def test_content_parts_are_counted_by_their_text():
    content = [
        {"type": "text", "text": "a" * 80},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "b" * 40},
        "not a part",
    ]
    assert estimate_tokens([user(content)], {"max_tokens": 1}, avg_completion=None) == 30 + 4 + 1


def test_a_message_without_text_costs_its_overhead():
    messages = [{"role": "assistant", "content": None, "tool_calls": []}]
    assert estimate_tokens(messages, {"max_tokens": 5}, avg_completion=None) == 4 + 5


# --- state shared through what is injected -------------------------------------------------------


def test_governors_given_one_state_share_its_pace_and_its_pauses():
    # What a Redis state will do between machines, shown with two governors in one process.
    from llmbatch.limits import LocalLimitState

    time = FakeTime()
    shared = LocalLimitState()
    settings = {KEY: LimitSettings(rpm=60)}
    one, two = (
        Governor(concurrency=4, settings=settings, clock=time.clock, sleep=time.sleep, state=shared) for _ in range(2)
    )
    starts: list[float] = []

    async def start(governor: Governor) -> None:
        assert await governor.acquire(KEY, 10)
        starts.append(time.now)
        await governor.release(KEY, status=200, headers=None, estimated_tokens=10, actual_tokens=10)

    async def main() -> None:
        await asyncio.gather(start(one), start(two), start(one), start(two))

    time.drive(main)
    gaps = [b - a for a, b in itertools.pairwise(sorted(starts))]
    # One pace for both (a start every ~1.03 s), not each its own (two starts a second).
    assert all(interval(60) - 0.001 <= gap < 1.1 for gap in gaps), gaps

    used_up = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0"}

    async def refused() -> None:
        await one.acquire(KEY, 10)
        await one.release(KEY, status=429, headers=used_up, estimated_tokens=10, actual_tokens=None, retry_after_s=9)

    time.drive(refused)
    assert two.budget(KEY).not_before == pytest.approx(time.now + 9)  # one's 429 pauses two as well
