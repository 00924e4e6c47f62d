"""The resolver on its own: a scripted executor and the in-memory store, no HTTP, no disk.

What it decides is tested here as pure behaviour: order, coalescing, each cache mode, a failed
call shared by its duplicates, and why a run stops. The live executor is tested below with a
scripted provider: retries, the 429 pause, the budget.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from llmbatch.engine import Answered, Call, Failed, LiveExecutor, NotStarted, Outcome, Resolver, RunOptions
from llmbatch.engine.executor import Unclaimed
from llmbatch.input import parse_line
from llmbatch.keys import key_from_material
from llmbatch.model.entry import entry_digest
from llmbatch.model.request import Request
from llmbatch.model.result import Result
from llmbatch.model.stats import RunStats, StopReason
from llmbatch.providers.base import CallError, Destination, Reply
from llmbatch.retry import RetryPolicy
from llmbatch.store import MemoryStore

MODEL = "openai:gpt-4o-mini"


def requests(*prompts: str) -> list[Request]:
    return [parse_line(json.dumps({"id": i, "prompt": p, "model": MODEL}), i + 1) for i, p in enumerate(prompts)]


def answer(text: str) -> dict[str, Any]:
    return {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}


class ScriptedExecutor:
    """An executor whose outcome for each prompt is given by ``script`` (a function of the call),
    after ``delay`` seconds (a per-prompt dict); it records every call it was handed."""

    def __init__(
        self, script: Callable[[Call], Outcome], delay: dict[str, float] | None = None, concurrency: int = 100
    ) -> None:
        self.destination = Destination.of(api_base="http://scripted")
        self.slots = asyncio.Semaphore(concurrency)
        self.longest_timeout_s = 1.0
        self.script = script
        self.delay = delay or {}
        self.calls: list[str] = []
        self.stopped = False
        self.secrets: tuple[str, ...] = ()
        self.lost = 0

    async def execute(self, call: Call) -> Outcome:
        prompt = call.request.messages[-1]["content"]
        async with self.slots:
            if self.stopped:
                return NotStarted()
            self.calls.append(prompt)
            await asyncio.sleep(self.delay.get(prompt, 0))
            return self.script(call)

    def stop(self) -> None:
        self.stopped = True

    def unclaimed(self) -> list[Unclaimed]:
        return []

    async def aclose(self) -> None:
        pass


def echo(call: Call) -> Outcome:
    return Answered(answer(f"about {call.request.messages[-1]['content']}"), 1.0, 0.001, 1)


def run(resolver: Resolver, reqs: list[Request]) -> list[Result]:
    written: list[Result] = []
    resolver.sink = written.append
    asyncio.run(resolver.run(reqs))
    return written


def resolver_for(executor: Any, store: MemoryStore | None, **options: Any) -> Resolver:
    return Resolver(executor=executor, store=store, options=RunOptions(**options), sink=lambda _: None)


def test_results_leave_in_input_order_whatever_order_calls_finish_in():
    executor = ScriptedExecutor(echo, delay={"a": 0.05, "b": 0.0, "c": 0.02})
    written = run(resolver_for(executor, MemoryStore()), requests("a", "b", "c"))
    assert [r.line for r in written] == [1, 2, 3]
    assert [r.content for r in written] == ["about a", "about b", "about c"]


def test_a_prompt_asked_many_times_is_called_once_and_its_duplicates_share_the_answer():
    executor = ScriptedExecutor(echo, delay={"same": 0.02})
    resolver = resolver_for(executor, MemoryStore())
    written = run(resolver, requests("same", "same", "other", "same"))
    assert executor.calls == ["same", "other"]
    assert [r.hit for r in written] == [None, "duplicate", None, "duplicate"]
    assert resolver.stats.coalesced == 2 and resolver.stats.calls == 0  # calls are the executor's to count


def test_a_failed_call_gives_its_duplicates_the_same_error_without_another_call():
    def refuse(call: Call) -> Outcome:
        return Failed(CallError("permanent", "BadRequestError", "no", status_code=400), 1)

    executor = ScriptedExecutor(refuse, delay={"bad": 0.02})
    written = run(resolver_for(executor, MemoryStore()), requests("bad", "bad", "bad"))
    assert executor.calls == ["bad"]
    assert [r.status for r in written] == ["error"] * 3
    assert [r.hit for r in written] == [None, "duplicate", "duplicate"]


def test_answers_are_stored_before_they_are_written_and_a_rerun_calls_nothing():
    store = MemoryStore()
    seen_in_store: list[bool] = []
    first = resolver_for(ScriptedExecutor(echo), store)
    first.sink = lambda r: seen_in_store.append(store.get(r.key) is not None)
    asyncio.run(first.run(requests("a", "b")))
    assert seen_in_store == [True, True]  # in the store before the line was written
    entry = store.get(first.key_of(requests("a")[0]))
    assert entry is not None and entry["v"] == 3 and entry["request"]["messages"][-1]["content"] == "a"
    assert entry["digest"] == entry_digest(entry) and entry["key"] == key_from_material(entry["request"])

    again = ScriptedExecutor(echo)
    written = run(resolver_for(again, store), requests("a", "b"))
    assert again.calls == [] and [r.hit for r in written] == ["exact", "exact"]


@pytest.mark.parametrize(
    ("mode", "calls", "hits"),
    [("normal", ["new"], 1), ("refresh", ["old", "new"], 0), ("off", ["old", "new"], 0), ("only", [], 1)],
)
def test_each_cache_mode(mode, calls, hits):
    store = MemoryStore()
    run(resolver_for(ScriptedExecutor(echo), store), requests("old"))
    executor = ScriptedExecutor(echo)
    resolver = resolver_for(executor, store, cache_mode=mode)
    written = run(resolver, requests("old", "new"))
    assert executor.calls == calls
    assert resolver.stats.hits == hits
    if mode == "only":
        assert written[1].error["type"] == "CacheMiss"
    if mode == "off":
        assert len(store.get_many([r.key for r in written])) == 1  # nothing new was written


def test_refresh_calls_each_key_once_however_far_apart_its_duplicates_are():
    store = MemoryStore()
    executor = ScriptedExecutor(echo)
    run(resolver_for(executor, store, cache_mode="refresh", window=1), requests("a", "b", "a", "c", "a"))
    assert executor.calls == ["a", "b", "c"]


def test_a_fatal_failure_stops_the_run_and_lines_after_the_gap_are_not_written():
    def script(call: Call) -> Outcome:
        if call.request.messages[-1]["content"] == "locked":
            return Failed(CallError("fatal", "AuthenticationError", "bad key", status_code=401), 1)
        return echo(call)

    executor = ScriptedExecutor(script, delay={"locked": 0.01}, concurrency=1)
    resolver = resolver_for(executor, MemoryStore())
    written = run(resolver, requests("a", "locked", "b", "c"))
    assert resolver.stats.stop_reason is StopReason.FATAL and resolver.stats.stopped == "bad key"
    assert executor.stopped
    assert [r.line for r in written] == [1, 2]  # "b" and "c" never started: nothing after them is written


def test_an_executor_that_cannot_start_a_call_for_the_budget_stops_the_run_with_that_reason():
    def script(call: Call) -> Outcome:
        if call.request.messages[-1]["content"] == "expensive":
            return NotStarted(StopReason.BUDGET, "the budget of $1 is reached")
        return echo(call)

    resolver = resolver_for(ScriptedExecutor(script), MemoryStore())
    written = run(resolver, requests("a", "expensive", "b"))
    assert resolver.stats.stop_reason is StopReason.BUDGET and resolver.stats.budget_reached
    assert [r.line for r in written] == [1]


def test_stop_from_outside_starts_no_new_call_and_reports_an_interruption():
    executor = ScriptedExecutor(echo, delay={"slow": 0.05}, concurrency=1)
    resolver = resolver_for(executor, MemoryStore())

    async def main() -> None:
        running = asyncio.create_task(resolver.run(requests("slow", "b", "c")))
        await asyncio.sleep(0.01)
        resolver.stop("interrupted by Ctrl-C")
        await running

    asyncio.run(main())
    assert resolver.stats.stop_reason is StopReason.INTERRUPTED
    assert executor.calls == ["slow"]
    assert not resolver.stats.complete


def test_runs_sharing_a_store_wait_for_each_others_answers_instead_of_paying_twice():
    store = MemoryStore()
    one = ScriptedExecutor(echo, delay={p: 0.01 for p in "abcdef"})
    two = ScriptedExecutor(echo, delay={p: 0.01 for p in "abcdef"})

    async def main() -> None:
        await asyncio.gather(
            resolver_for(one, store).run(requests(*"abcdef")), resolver_for(two, store).run(requests(*"abcdef"))
        )

    asyncio.run(main())
    assert sorted(one.calls + two.calls) == list("abcdef")  # each prompt paid for once between the two


def test_a_run_that_calls_slowly_leaves_most_keys_to_a_faster_one_sharing_the_store():
    # Before, the first run leased every miss of a 256-line chunk at once: a faster run started a
    # moment later waited for all of them. Each run now holds only what it will call soon.
    store = MemoryStore()
    prompts = [f"p{i}" for i in range(300)]
    slow = ScriptedExecutor(echo, delay=dict.fromkeys(prompts, 0.02), concurrency=2)
    fast = ScriptedExecutor(echo, delay=dict.fromkeys(prompts, 0.02), concurrency=16)

    async def main() -> None:
        first = asyncio.create_task(resolver_for(slow, store, concurrency=2).run(requests(*prompts)))
        await asyncio.sleep(0.05)
        await resolver_for(fast, store, concurrency=16).run(requests(*prompts))
        await first

    asyncio.run(main())
    assert sorted(slow.calls + fast.calls) == sorted(prompts)  # each paid for once
    assert len(fast.calls) > 3 * len(slow.calls), (len(fast.calls), len(slow.calls))


def test_the_keys_destination_is_the_executors_own():
    executor = ScriptedExecutor(echo)
    with pytest.raises(ValueError, match="the provider's own"):
        Resolver(executor=executor, store=None, sink=print, destination=Destination.of())
    assert Resolver(executor=executor, store=None, sink=print).destination is executor.destination


# --- the live executor, with a scripted provider ------------------------------------------------------


class ScriptedProvider:
    """A provider whose replies (or failures) come from a list, one per attempt."""

    def __init__(self, replies: list[Any]) -> None:
        self.destination = Destination.of(api_base="http://scripted")
        self.replies = list(replies)
        self.attempts = 0
        self.secrets: tuple[str, ...] = ()
        self.lost = 0

    def prepare(self, request: Request) -> None:
        pass

    async def complete(self, request: Request, *, timeout_s: float) -> Reply:
        self.attempts += 1
        reply = self.replies.pop(0)
        if isinstance(reply, CallError):
            raise reply
        return Reply(reply, 0.01, None)

    async def aclose(self) -> None:
        pass


async def no_wait(_seconds: float) -> None:
    await asyncio.sleep(0)


class FakeClock:
    """A clock that moves only when someone sleeps: waits cost no real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def execute(executor: LiveExecutor, request: Request) -> Outcome:
    return asyncio.run(executor.execute(Call(request, "v1:test")))


def test_the_live_executor_retries_what_is_worth_retrying_and_not_the_rest():
    busy = CallError("retryable", "InternalServerError", "busy", status_code=503)
    provider = ScriptedProvider([busy, busy, answer("at last")])
    outcome = execute(LiveExecutor(provider, sleep=no_wait), requests("q")[0])
    assert isinstance(outcome, Answered) and outcome.attempts == 3 and provider.attempts == 3

    refused = CallError("permanent", "BadRequestError", "no", status_code=400)
    provider = ScriptedProvider([refused, answer("never")])
    outcome = execute(LiveExecutor(provider, sleep=no_wait), requests("q")[0])
    assert isinstance(outcome, Failed) and outcome.attempts == 1 and provider.attempts == 1


def test_a_proxy_token_echoed_in_an_error_or_an_answer_is_redacted_before_anyone_sees_it():
    token = "proxy-token-ONE-4c1d9e"
    row = {"prompt": "q", "model": MODEL, "extra": {"extra_headers": {"Authorization": f"Bearer {token}"}}}
    request = parse_line(json.dumps(row), 1)
    events: list[dict[str, Any]] = []
    echoed = CallError("retryable", "InternalServerError", f"upstream refused {token}", status_code=502)
    provider = ScriptedProvider([echoed, answer(f"you sent {token}")])
    outcome = execute(LiveExecutor(provider, sleep=no_wait, on_event=events.append), request)
    assert isinstance(outcome, Answered) and token not in json.dumps(outcome.response)
    assert events and token not in json.dumps(events)  # the retry event

    refused = CallError("permanent", "BadRequestError", f"bad token {token}", status_code=400)
    outcome = execute(LiveExecutor(ScriptedProvider([refused]), sleep=no_wait), request)
    assert isinstance(outcome, Failed) and outcome.error.message == "bad token [redacted]"


def test_the_live_executor_gives_up_after_max_retries():
    busy = CallError("retryable", "InternalServerError", "busy", status_code=503)
    provider = ScriptedProvider([busy] * 5)
    options = RunOptions(retry=RetryPolicy(max_retries=2))
    outcome = execute(LiveExecutor(provider, options=options, sleep=no_wait), requests("q")[0])
    assert isinstance(outcome, Failed) and outcome.attempts == 3


def test_a_429_of_a_used_up_window_pauses_the_model_for_its_retry_after():
    headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0"}
    limited = CallError("retryable", "RateLimitError", "slow down", status_code=429, retry_after_s=7.0, headers=headers)
    provider = ScriptedProvider([limited, answer("ok")])
    stats = RunStats()
    clock = FakeClock()
    executor = LiveExecutor(provider, stats=stats, sleep=clock.sleep, clock=clock)
    outcome = execute(executor, requests("q")[0])
    assert isinstance(outcome, Answered) and stats.rate_limited == 1
    assert executor.governor.budget(MODEL).throttles == 1
    assert clock.now >= 1000.0 + 7.0  # the retry waited out the pause (in fake time)


def test_the_live_executor_refuses_a_call_the_budget_cannot_hold():
    provider = ScriptedProvider([answer("never")])
    options = RunOptions(max_cost_usd=1e-12)
    outcome = execute(LiveExecutor(provider, options=options, sleep=no_wait), requests("q")[0])
    assert isinstance(outcome, NotStarted) and outcome.reason is StopReason.BUDGET
    assert "the budget of" in outcome.message and provider.attempts == 0


def test_a_200_that_is_not_an_answer_fails_the_attempt_and_is_retried():
    provider = ScriptedProvider([{"choices": []}, answer("there it is")])
    outcome = execute(LiveExecutor(provider, sleep=no_wait), requests("q")[0])
    assert isinstance(outcome, Answered) and outcome.attempts == 2


def test_a_slowly_paced_model_never_holds_the_slots_a_fast_one_could_use():
    # Model A is paced at 60 rpm (a start a second), B is unlimited, and only 2 calls may be in
    # flight. Calls waiting for A's pace must not hold those 2 slots: B's calls go through at once.
    from llmbatch.limits import LimitSettings
    from tests.test_limits import FakeTime

    time = FakeTime(now=0.0)
    done_at: dict[str, float] = {}

    class Provider(ScriptedProvider):
        async def complete(self, request: Request, *, timeout_s: float) -> Reply:
            await time.sleep(0.1)
            done_at[request.messages[-1]["content"]] = time.now
            return Reply(answer("ok"), 0.1, None)

    slow, fast = "openai:slow-model", "openai:fast-model"
    options = RunOptions(concurrency=2, limits={slow: LimitSettings(rpm=60)})
    executor = LiveExecutor(Provider([]), options=options, sleep=time.sleep, clock=time.clock)
    rows = [{"prompt": f"a{i}", "model": slow} for i in range(4)] + [
        {"prompt": f"b{i}", "model": fast} for i in range(4)
    ]
    calls = [Call(parse_line(json.dumps(row), n + 1), f"v1:{n}") for n, row in enumerate(rows)]

    async def main() -> None:
        await asyncio.gather(*(executor.execute(call) for call in calls))

    time.drive(main)
    assert max(done_at[f"a{i}"] for i in range(4)) > 2.5  # A really was paced: a start a second
    assert max(done_at[f"b{i}"] for i in range(4)) < 1.0  # B was not kept waiting behind A's pace
