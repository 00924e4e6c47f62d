"""The engine as a library: the real provider against the simulator, a real cache."""

from __future__ import annotations

import asyncio
import json

import pytest

from llmbatch.engine import Resolver, RunOptions, RunStats, live_resolver
from llmbatch.input import parse_line
from llmbatch.model.result import Result
from llmbatch.providers.anyllm import AnyLLMProvider
from llmbatch.retry import RetryPolicy
from llmbatch.store import DiskStore


def requests(prompts: list[str]):
    return [parse_line(json.dumps({"id": i, "prompt": p, "model": "openai:m"}), i + 1) for i, p in enumerate(prompts)]


def run(engine: Resolver, reqs) -> RunStats:
    async def main() -> RunStats:
        try:
            return await engine.run(reqs)
        finally:
            await engine.executor.aclose()  # type: ignore[union-attr]

    return asyncio.run(main())


async def never_wakes(_seconds: float) -> None:
    await asyncio.Event().wait()  # a retry wait that only a stop can cut short


def test_a_fatal_error_cuts_retry_waits_short(tmp_path, sim):
    # Line 1 keeps failing and would wait forever before its next attempt; line 2 gets a 401,
    # which stops the run. The run must end rather than wait (pytest-timeout would catch a hang).
    written: list[Result] = []
    engine = live_resolver(
        AnyLLMProvider(api_base=sim.url, api_key="k"),
        store=DiskStore(tmp_path / "c"),
        options=RunOptions(concurrency=2, retry=RetryPolicy(max_retries=5)),
        sink=written.append,
        sleep=never_wakes,
    )
    stats = run(engine, requests(["down [[sim:fail_first=99]]", "locked out [[sim:status=401]]"]))
    assert stats.fatal and stats.stopped is not None
    assert written == []  # line 1 never got an answer, so nothing can be written in order
    assert sim.stats()["requests_received"] == 2


def test_an_error_in_the_sink_lets_paid_calls_finish_and_be_stored(tmp_path, simulator):
    slow = simulator(latency_s=0.05)
    cache = DiskStore(tmp_path / "c")
    seen: list[Result] = []

    def sink(result: Result) -> None:
        seen.append(result)
        if len(seen) == 3:
            raise OSError("disk full")

    engine = live_resolver(
        AnyLLMProvider(api_base=slow.url, api_key="k"),
        store=cache,
        options=RunOptions(concurrency=8),
        sink=sink,
    )
    with pytest.raises(OSError, match="disk full"):
        run(engine, requests([f"question {i}" for i in range(40)]))
    served = slow.stats()["completions_served"]
    assert served >= 3
    assert cache.stats().entries == served  # every answer paid for is in the cache
    assert slow.stats()["in_flight"] == 0


def test_memory_is_bounded_by_the_window_not_the_file(tmp_path, sim):
    # The engine pulls requests lazily: with a window of 64 it never reads far ahead of what it
    # has written, whatever the length of the input.
    pulled = 0
    written = 0

    def lazily():
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            assert pulled - written <= 64 + 256 + 1, (pulled, written)  # window + one lookup chunk
            yield parse_line(json.dumps({"prompt": f"q{i}", "model": "openai:m"}), i + 1)

    def sink(_result: Result) -> None:
        nonlocal written
        written += 1

    engine = live_resolver(
        AnyLLMProvider(api_base=sim.url, api_key="k"),
        store=DiskStore(tmp_path / "c"),
        options=RunOptions(concurrency=8, window=64),
        sink=sink,
    )
    stats = run(engine, lazily())
    assert stats.done == written == 1000


def test_a_failed_call_gives_its_waiting_duplicates_the_same_error_without_another_call(tmp_path, sim):
    written: list[Result] = []
    engine = live_resolver(
        AnyLLMProvider(api_base=sim.url, api_key="k"),
        store=DiskStore(tmp_path / "c"),
        options=RunOptions(concurrency=4),
        sink=written.append,
    )
    stats = run(engine, requests(["bad [[sim:status=400]]"] * 5))
    assert [r.status for r in written] == ["error"] * 5
    assert sim.stats()["requests_received"] == 1
    assert stats.calls == 1 and stats.coalesced == 4
