"""Pacing: when a call may start, so that the provider never has to say no.

One :class:`Budget` per ``provider:model``. Before each attempt the engine calls
:meth:`Governor.acquire`, which waits until all of these allow a start:

0. **A probe first.** Until the provider has answered once, one call at a time: its first
   answer states its limits, and a full burst of ``--concurrency`` calls at the start could
   overrun a strict window before we have heard them.
1. **Run-wide backoff, when the window is used up.** A 429 pauses every call of that budget until
   its ``Retry-After`` has passed (not just the request that got it), and halves the calls that
   budget may have in flight (at most once per pause, so one burst of 429s counts once), when it
   says the provider's window is used up: its own rate-limit headers say no requests remain, or
   fewer tokens than the call needed; or 429s cluster: a majority (``CLUSTER_MIN``) of the budget's
   last ``CLUSTER_WINDOW`` HTTP answers are 429s; or a run-wide pause is already in force (calls
   sent before it are still answering). Any other 429 is sporadic (a busy provider refusing one
   call now and then): nothing changes run-wide, and only that request waits, as its retry honours
   its ``Retry-After`` (``retry.wait_retry_after``). Pausing the whole run for every sporadic 429
   turned a 10 % rate of them into a run eleven times as long. Each round of successes without a
   429 gives one slot back: additive increase, multiplicative decrease.
2. **Even pacing** of requests and tokens at ``--rpm``/``--tpm`` (or the config file), or, when
   neither is given, at the limits the provider announces in its headers
   (``x-ratelimit-limit-*`` from OpenAI and compatible servers, ``anthropic-ratelimit-*``). Pacing
   is even, a start every ``60/rpm`` seconds, because providers enforce their per-minute limits
   over much shorter windows: a minute's worth in the first second is a 429 storm. We pace at
   ``PACE_SAFETY`` of the limit, so timing jitter on the way to the server never tips a window over.
3. **Header caution.** When a response says the window's remaining requests or tokens are used
   up, nothing starts before that window resets.

A call that alone needs more tokens than the tokens-per-minute limit (given, or learned while it
waited) is not held at all: no wait makes it fit, so :meth:`Governor.acquire` raises
:class:`OverLimit` and the call fails for good at once. It goes by the tokens the call counts at
the least (``estimate.least_tokens``), never by a guess at its completion.

The pacing itself is pyrate-limiter's GCRA (a leaky bucket kept as one timestamp), rather than a
hand-written token bucket: the same algorithm has a Redis state store, which is what a budget
shared between machines will need. Tokens are estimated before a call (prompt characters / 4, plus
``max_tokens`` or the running average of completions) and the difference from the real usage is
carried into the next reservation, so the long-run token rate is exact.

Clock and sleep are injected, so every rule here is tested without waiting; where the pace and the
pauses live is injected too (:mod:`~llmbatch.limits.state`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmbatch.limits.estimate import DEFAULT_COMPLETION_TOKENS
from llmbatch.limits.headers import RateHeaders, parse_rate_headers
from llmbatch.limits.pacer import Pacer
from llmbatch.limits.state import LimitState, LocalLimitState

__all__ = [
    "CLUSTER_MIN",
    "CLUSTER_WINDOW",
    "DEFAULT_PAUSE_S",
    "Budget",
    "Governor",
    "LimitSettings",
    "OverLimit",
    "Slot",
]

#: A start this late for its paced slot keeps the slot's place in the schedule (see acquire).
_LATE_S = 0.005
#: A 429 without Retry-After pauses the budget this long.
DEFAULT_PAUSE_S = 1.0
#: 429s cluster when a majority of the budget's last CLUSTER_WINDOW HTTP answers are 429s (at the
#: start, answers not yet received count as not refused). With 10 % of answers 429s at random, 9
#: of 16 happens once in ~400,000 answers; 5 of 8 would happen once in ~4,600 (a run-wide pause
#: and a halving every minute of a run at 80 calls/s), and a majority of however few answers came
#: so far in 3 % of runs, at the start. The price: a provider without rate-limit headers whose
#: window is used up is noticed after 9 refusals instead of 5, each waiting its own Retry-After.
CLUSTER_WINDOW = 16
CLUSTER_MIN = CLUSTER_WINDOW // 2 + 1


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """What the user set for one ``provider:model`` (command line over config file)."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None


class OverLimit(Exception):
    """A call that needs more tokens than the tokens-per-minute limit: it would be held for minutes
    and then refused. ``configured``: the limit was given (``--tpm``, ``llmbatch.toml``), not
    learned from the provider's headers."""

    def __init__(self, needed: int, tpm: int, *, configured: bool) -> None:
        super().__init__(f"needs {needed} tokens, the limit is {tpm} per minute")
        self.needed = needed
        self.tpm = tpm
        self.configured = configured


def _within(ours: int | None, advertised: int | None) -> bool:
    return ours is not None and advertised is not None and ours <= advertised


def _used_up(parsed: RateHeaders | None, tokens: int) -> bool:
    """A 429's own headers say the window is used up: no request left, or too few tokens for
    the call that was refused (a token refusal leaves some, just not enough)."""
    if parsed is None:
        return False
    return parsed.remaining_requests == 0 or (
        parsed.remaining_tokens is not None and parsed.remaining_tokens < max(1, tokens)
    )


def _clustered(recent: deque[bool]) -> bool:
    """Most of the budget's last CLUSTER_WINDOW answers are 429s."""
    return sum(recent) >= CLUSTER_MIN


# --- the governor ------------------------------------------------------------------------------


@dataclass
class Budget:
    """The live state of one ``provider:model``."""

    key: str
    max_concurrency: int
    settings: LimitSettings = field(default_factory=LimitSettings)
    pacer: Pacer | None = None
    learned_rpm: int | None = None
    learned_tpm: int | None = None
    limit: float = 1.0  # calls allowed in flight now (AIMD), <= max_concurrency
    in_flight: int = 0
    state: LimitState = field(default_factory=LocalLimitState)  # where the pause (and the pace) live
    last_decrease: float = -math.inf
    successes: int = 0
    throttles: int = 0  # 429s seen
    backoffs: int = 0  # 429s that paused the budget run-wide (the window was used up)
    #: The last CLUSTER_WINDOW HTTP answers: True for a 429. Emptied when a run-wide pause is taken,
    #: so that the answers of calls sent before it do not count again after it.
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=CLUSTER_WINDOW))
    started: int = 0
    tokens_started: int = 0  # estimated tokens of the calls started
    #: No answer yet: one call at a time, until the provider has had a chance to state its limits.
    probing: bool = True
    avg_completion: float | None = None
    avg_estimate: float | None = None  # tokens a call is expected to cost, for header caution
    changed: asyncio.Condition | None = None
    turn: asyncio.Lock | None = None

    @property
    def not_before(self) -> float:
        """Clock time before which nothing starts (a run-wide pause)."""
        return self.state.paused_until(self.key)

    @not_before.setter
    def not_before(self, until: float) -> None:
        self.state.pause(self.key, until)

    @property
    def rpm(self) -> int | None:
        return self.settings.rpm or self.learned_rpm

    @property
    def tpm(self) -> int | None:
        return self.settings.tpm or self.learned_tpm


class Governor:
    """Decides when each call may start, per budget; see the module docstring."""

    def __init__(
        self,
        *,
        concurrency: int,
        settings: Mapping[str, LimitSettings] | None = None,
        default: LimitSettings = LimitSettings(),
        learn_from_headers: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        stopping: Callable[[], bool] = lambda: False,
        state: LimitState | None = None,
    ) -> None:
        """``state``: where each budget's pace and pause live (in this process by default)."""
        self.state = state or LocalLimitState()
        self.concurrency = concurrency
        self.stopping = stopping
        self.settings = dict(settings or {})
        self.default = default
        self.learn_from_headers = learn_from_headers
        self.clock = clock
        self.sleep = sleep
        self.budgets: dict[str, Budget] = {}
        self._wakers: set[asyncio.Task[None]] = set()

    def budget(self, key: str) -> Budget:
        budget = self.budgets.get(key)
        if budget is None:
            settings = self.settings.get(key, self.default)
            top = min(self.concurrency, settings.concurrency or self.concurrency)
            budget = Budget(key=key, max_concurrency=top, settings=settings, limit=float(top), state=self.state)
            if self.learn_from_headers:
                # Another run sharing this state has heard the provider's limits already: pace at
                # them from the first call, with no probe.
                rpm, tpm = self.state.learned(key)
                budget.learned_rpm = None if settings.rpm else rpm
                budget.learned_tpm = None if settings.tpm else tpm
                budget.probing = not (budget.learned_rpm or budget.learned_tpm)
            if budget.rpm or budget.tpm:
                budget.pacer = self._pacer(key, budget.rpm, budget.tpm)
            self.budgets[key] = budget
        return budget

    def _pacer(self, key: str, rpm: int | None, tpm: int | None) -> Pacer:
        return Pacer(rpm, tpm, lambda kind: self.state.bucket_store(key, kind))

    # -- before a call ----------------------------------------------------------------------

    def slot(self, key: str, tokens: int, *, least: int = 0) -> Slot:
        """``async with governor.slot(key, tokens) as slot``: waits for the call's turn (see
        :meth:`acquire`); ``slot.granted`` says whether it may start. A granted slot is given back
        when the block ends: by :meth:`Slot.release` with how the call ended, or, if the call was
        not made after all, as unused."""
        return Slot(self, key, tokens, least)

    async def acquire(self, key: str, tokens: int, *, least: int = 0) -> bool:
        """Wait until a call of ``tokens`` may start for ``key``; then it counts as in flight.
        False when the run stopped meanwhile (nothing is counted then). Raises :class:`OverLimit`
        when ``least``, the tokens the call counts at the least, is over the tokens-per-minute
        limit, at once or as soon as the limit is learned."""
        budget = self.budget(key)
        if budget.changed is None:
            budget.changed = asyncio.Condition()
            budget.turn = asyncio.Lock()
        assert budget.turn is not None
        # One waiter at a time, first come first served (asyncio.Lock is fair): calls start in the
        # order they asked, which is input order, so the results file advances as fast as the pace.
        # Without it, whichever sleeper woke first took each slot, and an early line could starve
        # while later ones were answered, holding every result behind it.
        async with budget.turn:
            return await self._acquire_in_turn(budget, tokens, least)

    async def _acquire_in_turn(self, budget: Budget, tokens: int, least: int) -> bool:
        assert budget.changed is not None
        due: float | None = None  # when the pacer said our slot comes
        while True:
            if self.stopping():
                return False
            if budget.tpm and least > budget.tpm:
                # Each time round: the probe's answer may have taught the limit while we waited.
                raise OverLimit(least, budget.tpm, configured=bool(budget.settings.tpm))
            now = self.clock()
            if now < budget.not_before:
                await self._wait(budget, budget.not_before - now)
                continue
            if budget.in_flight >= (1 if budget.probing else max(1, int(budget.limit))):
                async with budget.changed:
                    await budget.changed.wait()
                continue
            if budget.pacer is not None:
                # Waking a little after the slot (the event loop was busy) must not push every
                # later slot back: the pacer is asked for the slot we were given, when we are only
                # slightly late for it. That lag cost ~3 % of the pace; anything later than
                # _LATE_S (a pause, a stop) starts afresh from now.
                slot = due if due is not None and 0 <= now - due <= _LATE_S else None
                wait = await budget.pacer.reserve(tokens, now, slot=slot)
                if wait > 0:
                    due = now + wait
                    await self._wait(budget, wait)
                    continue
                if budget.started == 0 and self.state.shared:
                    # This process's first call opens its connection and reaches the provider
                    # later than its slot, on top of the next process's call: on a strict window
                    # shared by several processes that was one 429 at the start of every run. The
                    # slot after it is left free (one per process and budget, once).
                    await budget.pacer.precharge(1, 0, now)
            budget.in_flight += 1
            budget.started += 1
            budget.tokens_started += tokens
            budget.avg_estimate = tokens if budget.avg_estimate is None else 0.9 * budget.avg_estimate + 0.1 * tokens
            return True

    def wake_all(self) -> None:
        """Let every waiter look again (the run is stopping)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nobody can be waiting
            return
        for budget in self.budgets.values():
            if budget.changed is not None:
                task = loop.create_task(self._notify(budget))
                self._wakers.add(task)  # asyncio keeps only a weak reference to a task
                task.add_done_callback(self._wakers.discard)

    async def _wait(self, budget: Budget, seconds: float) -> None:
        # A fresh look after the wait: the budget may have changed meanwhile (a 429 elsewhere).
        await self.sleep(seconds)

    # -- after a call -----------------------------------------------------------------------

    async def release(
        self,
        key: str,
        *,
        status: int | None,
        headers: Mapping[str, str] | None,
        estimated_tokens: int,
        actual_tokens: int | None,
        completion_tokens: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """Record how a call ended and adjust the budget. ``status`` None: no HTTP answer."""
        budget = self.budget(key)
        now = self.clock()
        budget.in_flight = max(0, budget.in_flight - 1)
        if status is not None:
            # The provider has answered once: its headers (if it sends any) are known, and pacing
            # takes over from here; a provider without headers is held back by 429s and AIMD.
            budget.probing = False
            budget.recent.append(status == 429)
        # Whether a pause was in force before this answer: its own headers may start one (a used-up
        # window), which must not count as an earlier pause this 429 belongs to.
        paused = now < budget.not_before
        parsed = await self._learn(budget, headers, now) if headers else None
        if status == 429:
            self._throttled(budget, retry_after_s, now, paused=paused, used_up=_used_up(parsed, estimated_tokens))
        elif status is not None and status < 400:
            self._succeeded(budget, completion_tokens)
        if budget.pacer is not None and actual_tokens is not None:
            budget.pacer.settle(estimated_tokens, actual_tokens)
        await self._notify(budget)

    async def unused(self, key: str) -> None:
        """A call that was allowed to start turned out not to be needed (its answer arrived
        from elsewhere): give its slot back. Its place in the pace is not given back."""
        budget = self.budget(key)
        budget.in_flight = max(0, budget.in_flight - 1)
        await self._notify(budget)

    def _succeeded(self, budget: Budget, completion_tokens: int | None) -> None:
        budget.successes += 1
        if budget.limit < budget.max_concurrency and budget.successes >= max(1, int(budget.limit)):
            budget.limit = min(float(budget.max_concurrency), budget.limit + 1)  # additive increase
            budget.successes = 0
        if completion_tokens is not None:
            previous = budget.avg_completion
            budget.avg_completion = completion_tokens if previous is None else 0.9 * previous + 0.1 * completion_tokens

    def _throttled(
        self, budget: Budget, retry_after_s: float | None, now: float, *, paused: bool, used_up: bool
    ) -> None:
        budget.throttles += 1
        if not (paused or used_up or _clustered(budget.recent)):
            return  # sporadic: only this request waits, for its own Retry-After (its retry)
        budget.backoffs += 1
        budget.recent.clear()  # acted on: the next run-wide decision needs 429s that come after it
        pause = retry_after_s if retry_after_s is not None else DEFAULT_PAUSE_S
        # One burst of 429s (every call that was in flight when the window filled) is one signal:
        # while a pause is in force, only calls sent before it can answer.
        if not paused and now - budget.last_decrease >= DEFAULT_PAUSE_S:
            budget.limit = max(1.0, budget.limit / 2)  # multiplicative decrease
            budget.last_decrease = now
            budget.successes = 0
        budget.not_before = max(budget.not_before, now + pause)

    async def _learn(self, budget: Budget, headers: Mapping[str, str], now: float) -> RateHeaders | None:
        parsed = parse_rate_headers(headers)
        if parsed is None:
            return None
        if self.learn_from_headers:
            rpm = None if budget.settings.rpm else parsed.limit_requests
            tpm = None if budget.settings.tpm else parsed.limit_tokens
            if (rpm and rpm != budget.learned_rpm) or (tpm and tpm != budget.learned_tpm):
                budget.learned_rpm = rpm or budget.learned_rpm
                budget.learned_tpm = tpm or budget.learned_tpm
                self.state.learn(budget.key, budget.learned_rpm, budget.learned_tpm)
                old, budget.pacer = budget.pacer, self._pacer(budget.key, budget.rpm, budget.tpm)
                if old is None:
                    # Calls already sent count against the window the provider is enforcing.
                    await budget.pacer.precharge(budget.started, budget.tokens_started, now)
                else:
                    budget.pacer.carry(old)  # a limit changed: what was paid stays paid, no more
        # The window is used up: the next call would be refused. "reset" is the time until the
        # whole budget is back, but room for one call returns sooner, at the advertised rate: wait
        # for that much (never longer than the reset). When we already pace at or under the
        # advertised limit, a full window is our own doing and the pacer spaces the next call
        # anyway: pausing as well would only slow every run down by a few percent.
        paced_requests = budget.pacer is not None and _within(budget.rpm, parsed.limit_requests)
        paced_tokens = budget.pacer is not None and _within(budget.tpm, parsed.limit_tokens)
        if parsed.remaining_requests == 0 and parsed.reset_requests_s and not paced_requests:
            one = 60 / parsed.limit_requests if parsed.limit_requests else parsed.reset_requests_s
            budget.not_before = max(budget.not_before, now + min(parsed.reset_requests_s, one))
        if parsed.remaining_tokens is not None and parsed.reset_tokens_s and parsed.limit_tokens and not paced_tokens:
            wanted = budget.avg_estimate or DEFAULT_COMPLETION_TOKENS
            if parsed.remaining_tokens < wanted:
                refill = 60 * (wanted - parsed.remaining_tokens) / parsed.limit_tokens
                budget.not_before = max(budget.not_before, now + min(parsed.reset_tokens_s, refill))
        return parsed

    async def _notify(self, budget: Budget) -> None:
        if budget.changed is not None:
            async with budget.changed:
                budget.changed.notify_all()

    # -- for the display --------------------------------------------------------------------

    def throttled(self) -> bool:
        now = self.clock()
        return any(b.not_before > now for b in self.budgets.values())

    def pace(self) -> tuple[int | None, int | None]:
        """The (rpm, tpm) being paced at, summed over budgets; None where unknown."""
        rpms = [b.rpm for b in self.budgets.values() if b.rpm]
        tpms = [b.tpm for b in self.budgets.values() if b.tpm]
        return (sum(rpms) if rpms else None, sum(tpms) if tpms else None)


class Slot:
    """A call's turn with the governor (see :meth:`Governor.slot`)."""

    def __init__(self, governor: Governor, key: str, tokens: int, least: int = 0) -> None:
        self.governor = governor
        self.key = key
        self.tokens = tokens
        self.least = least
        self.granted = False
        self._released = False

    async def __aenter__(self) -> Slot:
        self.granted = await self.governor.acquire(self.key, self.tokens, least=self.least)
        return self

    async def release(
        self,
        *,
        status: int | None,
        headers: Mapping[str, str] | None,
        actual_tokens: int | None,
        completion_tokens: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """How the call ended (``status`` None: no HTTP answer): the governor paces and backs off
        from that."""
        self._released = True
        await self.governor.release(
            self.key,
            status=status,
            headers=headers,
            estimated_tokens=self.tokens,
            actual_tokens=actual_tokens,
            completion_tokens=completion_tokens,
            retry_after_s=retry_after_s,
        )

    async def __aexit__(self, *exc: object) -> None:
        if self.granted and not self._released:
            await self.governor.unused(self.key)  # not made after all: the slot goes back
