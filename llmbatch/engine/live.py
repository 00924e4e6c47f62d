"""The live executor: each call made now, under the pace, with retries and the budget.

For each :class:`~llmbatch.engine.executor.Call`, in this order: tenacity's retry loop
(:mod:`llmbatch.retry`: only what is worth retrying, Retry-After first); the ``--max-cost``
reservation (:mod:`~llmbatch.engine.budget`); the model's pace and slots
(:class:`~llmbatch.limits.Governor`), then a slot of ``--concurrency`` (a call waiting for a slowly
paced model holds no slot another model could use); the provider (in this process, or in worker
processes); the governor told how it ended. A 200 that is not an answer fails the attempt
(:func:`~llmbatch.answers.problem`) and an answer is made safe to keep
(:func:`~llmbatch.answers.keepable`) before it is handed back.

It writes the call counters of :class:`~llmbatch.model.stats.RunStats` (calls, retries, in flight,
tokens, money, pace) and nothing else, and never reaches back into the resolver: it is told to
stop, and it answers with values.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from llmbatch.answers import keepable, problem
from llmbatch.engine.budget import CostBudget
from llmbatch.engine.executor import Answered, Call, Failed, NotStarted, Outcome, Unclaimed, sleep_unless
from llmbatch.engine.options import RunOptions
from llmbatch.keys import credentials
from llmbatch.limits import Governor, OverLimit, Slot, estimate_split, least_tokens
from llmbatch.limits.state import LimitState
from llmbatch.model.request import Request
from llmbatch.model.stats import RunStats, StopReason
from llmbatch.pricing import call_cost
from llmbatch.providers.base import REQUEST_TOO_LARGE, CallError, Provider, Reply, redact
from llmbatch.urls import redact_url

__all__ = ["MAX_DERIVED_TIMEOUT_S", "LiveExecutor"]

#: The longest a derived per-attempt timeout can be (without --timeout): ten minutes.
MAX_DERIVED_TIMEOUT_S = 600.0


def _usage_tokens(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class LiveExecutor:
    def __init__(
        self,
        provider: Provider,
        *,
        options: RunOptions | None = None,
        stats: RunStats | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        limit_state: LimitState | None = None,
        held: Mapping[str, str] | None = None,
    ) -> None:
        """``limit_state``: where each budget's pace and pause live (this process by default; a
        server shared by every run with the same budget, with its clock, for ``--cache redis://``).
        ``held``: keys a Batch-API job submitted earlier holds (to its job id), not collected yet."""
        options = options or RunOptions()
        self.provider = provider
        self.destination = provider.destination
        self.options = options
        self.stats = stats or RunStats()
        self.on_event = on_event
        self.sleep = sleep
        self.clock = clock
        self._semaphore = asyncio.Semaphore(options.concurrency)
        self._stopping = False
        self._stopped = asyncio.Event()
        self.governor = Governor(
            concurrency=options.concurrency,
            settings=options.limits,
            default=options.default_limits,
            learn_from_headers=options.learn_from_headers,
            clock=limit_state.clock if limit_state is not None else clock,
            sleep=self._sleep,
            stopping=lambda: self._stopping,
            state=limit_state,
        )
        self.budget = CostBudget(
            options.max_cost_usd,
            spent=lambda: self.stats.spent_usd,
            stopping=lambda: self._stopping,
            prices=options.prices,
        )
        #: The longest timeout any attempt has had: no call in flight outlives it (Ctrl-C's grace).
        self.longest_timeout_s = options.timeout_s
        self.wants = options.concurrency
        self._answered = False  # some call got an HTTP answer: the server is there
        self._unreachable = 0  # connection failures in a row before any answer
        self.held = held or {}

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.provider.secrets

    @property
    def lost(self) -> int:
        return self.provider.lost

    def unclaimed(self) -> list[Unclaimed]:
        return []  # a live call's answer always has its call waiting

    async def aclose(self) -> None:
        await self.provider.aclose()

    def stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._stopped.set()  # wakes requests sleeping before a retry or for the pace
            self.budget.wake()
            self.governor.wake_all()

    async def _sleep(self, seconds: float) -> None:
        """The retry wait, cut short when the run stops: a 401 elsewhere must not leave us
        sitting out a 45 s Retry-After before exiting."""
        if not self._stopping:
            await sleep_unless(self.sleep, self._stopped, seconds)

    # -- one call ------------------------------------------------------------------------------

    async def execute(self, call: Call) -> Outcome:
        request = call.request
        job = self.held.get(call.key)
        if job is not None:
            # Its answer is paid for in that job: a live call now would pay for it a second time.
            return NotStarted(
                StopReason.HELD,
                f"line {request.line} is in batch job {job}, submitted earlier and not collected yet: "
                "run with --batch-api to collect it (it is paid for there) instead of paying for it again",
            )
        attempts = 0
        started = False
        retrying = self.options.retry.retrying(sleep=self._sleep, on_retry=lambda state: self._on_retry(request, state))
        try:
            async for attempt in retrying:
                with attempt:
                    # Stopping means no new attempt, first or retry: nothing unpaid is lost,
                    # and the rerun picks this line up.
                    if self._stopping:
                        return NotStarted()
                    ready = self.provider.prepare(request)
                    if ready is not None:
                        await ready
                    budget = self.governor.budget(request.model_ref)
                    self._publish_pace()  # a configured pace shows before the first call waits for it
                    reservation = await self.budget.reserve(request, budget)
                    if not reservation.allowed:
                        if reservation.unpriced:
                            return NotStarted(StopReason.FATAL, f"{reservation.refusal}: --max-cost cannot be kept")
                        return NotStarted(StopReason.BUDGET if reservation.refusal else None, reservation.refusal or "")
                    try:
                        tokens = sum(estimate_split(request.messages, request.params, budget.avg_completion))
                        least = least_tokens(request.messages, request.params)
                        # The model's pace first, then a slot of --concurrency: a call waiting for a
                        # slowly paced model must not hold a slot another model could use.
                        async with self.governor.slot(request.model_ref, tokens, least=least) as slot:
                            if not slot.granted:
                                return NotStarted()  # stopped while waiting for the pace
                            async with self._semaphore:
                                if self._stopping:
                                    return NotStarted()
                                if not started:
                                    self.stats.calls += 1
                                    started = True
                                attempts += 1
                                reply, cost = await self._attempt(request, slot)
                    except OverLimit as over:
                        raise _too_large(over) from None
                    finally:
                        self.budget.settle(reservation)
                    # A 200 that is not an answer fails this attempt (retried when transient); an
                    # answer is made safe to keep before anything else sees it.
                    failure = problem(reply.response)
                    if failure is not None:
                        raise _redacted(failure, request)
                    response = keepable(reply.response, (*self.secrets, *credentials(request.extra)))
        except CallError as exc:
            self._event(_line_event("error", request, exc, attempt=attempts))
            return Failed(exc, attempts)
        return Answered(response, round(reply.latency_s * 1000, 1), cost, attempts)

    async def _attempt(self, request: Request, slot: Slot) -> tuple[Reply, float | None]:
        """One call, with the governor told how it ended (it paces and backs off from that), and
        what it cost, counted in the run's spending as the answer arrives."""
        self.stats.in_flight += 1
        try:
            timeout_s = self._timeout_for(request)
            self.longest_timeout_s = max(self.longest_timeout_s, timeout_s)
            reply = await self.provider.complete(request, timeout_s=timeout_s)
        except CallError as exc:
            # A request too large for the token limit says nothing about the window (it never
            # fits, however empty): the governor hears it as the refusal of that one request
            # (413), not as a 429 that pauses and halves the run, and as costing no tokens (the
            # provider counted none), so the pace its headers teach is not charged for it.
            too_large = exc.type == REQUEST_TOO_LARGE
            status = 413 if too_large else exc.status_code
            await slot.release(
                status=status,
                headers=exc.headers,
                actual_tokens=0 if too_large else None,
                retry_after_s=exc.retry_after_s,
            )
            if status == 429:
                self.stats.rate_limited += 1
            raise _redacted(self._unreachable_or(request, exc), request) from None
        finally:
            self.stats.in_flight -= 1
            self._publish_pace()
        self._answered = True
        usage = reply.response.get("usage")
        prompt_tokens, completion_tokens = _usage_tokens(usage)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        cost = call_cost(request.provider, request.model, usage, prices=self.options.prices)
        if cost is None:
            self.stats.unpriced_calls += 1
            self.stats.unpriced_models.add(request.model_ref)
        else:
            self.stats.spent_usd += cost
        # What the call counted against the provider's token limit: OpenAI (and our simulator)
        # count max_tokens when it is set, whatever the answer used.
        cap = request.output_cap or 0
        await slot.release(
            status=200,
            headers=reply.headers,
            actual_tokens=prompt_tokens + max(completion_tokens, cap) if usage else None,
            completion_tokens=completion_tokens if usage else None,
        )
        return reply, cost

    def _unreachable_or(self, request: Request, exc: CallError) -> CallError:
        """A server that has never answered and refuses every connection is not coming back in
        the next hour of retries: after a few such failures in a row, the failure is fatal (the
        run stops with one message)."""
        if exc.status_code is not None:
            self._answered = True
        if self._answered or exc.type != "ConnectionError":
            self._unreachable = 0
            return exc
        self._unreachable += 1
        if self._unreachable < max(3, min(self.options.concurrency, 10)):
            return exc
        where = self.destination.api_base or self.destination.env.get(request.provider)
        # A base URL can carry a password or ?api-key=: this message is shown and written in results.
        where = redact_url(where) if where else f"the {request.provider} API"
        message = f"cannot connect to {where} ({self._unreachable} attempts in a row failed): is it running?"
        return CallError("fatal", "ConnectionError", message)

    def _timeout_for(self, request: Request) -> float:
        """--timeout; by default, long generations get longer (a 4,000-token answer takes a while),
        up to a ceiling: a hung call must be abandoned some time, and Ctrl-C waits that long at most."""
        if not self.options.timeout_auto:
            return self.options.timeout_s
        cap = request.output_cap or 0
        return min(self.options.timeout_s + max(0, cap - 1000) / 50, MAX_DERIVED_TIMEOUT_S)

    def _publish_pace(self) -> None:
        rpm, tpm = self.governor.pace()
        self.stats.pace_rpm = rpm
        self.stats.pace_tpm = tpm
        self.stats.throttled = self.governor.throttled()
        # Until a model has answered once, its calls go one at a time (the probe): say so.
        allowed = (1 if b.probing else int(b.limit) for b in self.governor.budgets.values())
        self.stats.concurrency_limit = sum(allowed) or None

    def _on_retry(self, request: Request, state: Any) -> None:
        self.stats.retries += 1
        if self.on_event is not None:
            failure = state.outcome.exception() if state.outcome is not None else None
            wait_s = state.next_action.sleep if state.next_action is not None else None
            event = _line_event("retry", request, failure, attempt=state.attempt_number)
            self.on_event({**event, "wait_s": None if wait_s is None else round(wait_s, 3)})

    def _event(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)


def _redacted(error: CallError, request: Request) -> CallError:
    """``error`` without the credentials the request sent as headers (a proxy may echo its token),
    before any event, log or result line sees it; the provider has redacted its API keys already."""
    message = redact(error.message, credentials(request.extra))
    if message == error.message:
        return error
    return CallError(
        error.kind,
        error.type,
        message,
        status_code=error.status_code,
        retry_after_s=error.retry_after_s,
        headers=error.headers,
    )


def _too_large(over: OverLimit) -> CallError:
    """The failure of a request whose own tokens are over the tokens-per-minute limit the run knows."""
    if over.configured:
        where, fix = (
            "--tpm or llmbatch.toml",
            "lower max_tokens, split the prompt, or raise --tpm if that limit is wrong",
        )
    else:
        where, fix = "the provider's, from its rate-limit headers", "lower max_tokens or split the prompt"
    return CallError(
        "permanent",
        REQUEST_TOO_LARGE,
        f"the request needs about {over.needed} tokens, more than the tokens-per-minute limit of {over.tpm} "
        f"({where}), so it was not sent: {fix}",
    )


def _line_event(kind: str, request: Request, failure: BaseException | None, *, attempt: int) -> dict[str, Any]:
    error = failure.to_dict() if isinstance(failure, CallError) else {"type": type(failure).__name__}
    return {
        "event": kind,
        "line": request.line,
        "id": request.id,
        "model": request.model_ref,
        "attempt": attempt,
        **error,
    }
