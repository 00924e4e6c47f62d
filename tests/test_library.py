"""llmbatch as a library: run_batch and run_batch_sync against the simulator over HTTP, a real cache."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

import llmbatch
from llmbatch import (
    AnyLLMProvider,
    Destination,
    DiskStore,
    InputError,
    LiveExecutor,
    Request,
    Resolver,
    Result,
    RunOptions,
    RunStats,
    RunStopped,
    StopReason,
    UsageError,
    parse_line,
    run_batch,
    run_batch_sync,
)
from tests.support import run_cli, write_jsonl

ROOT = Path(__file__).parent.parent
MODEL = "openai:gpt-4o-mini"


def questions(n: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"question {i}", **fields} for i in range(n)]


# --- the two entry points ----------------------------------------------------------------------


def test_run_batch_sync_returns_results_in_input_order_and_a_rerun_pays_nothing(env, sim):
    # The first lines answer last: the results must still come back in input order.
    requests = [
        {"id": f"q{i}", "prompt": f"question {i}" + (" [[sim:latency=0.2]]" if i < 3 else "")} for i in range(20)
    ]
    results = run_batch_sync(requests, model=MODEL, api_base=sim.url)
    assert [r.id for r in results] == [f"q{i}" for i in range(20)]
    assert [r.line for r in results] == list(range(1, 21))  # a dict's line is its position
    assert all(r.ok and r.hit is None and not r.cached for r in results)
    assert results[5].content is not None and results[5].content.endswith("to: question 5")
    assert sim.stats()["requests_received"] == 20

    again = run_batch_sync(requests, model=MODEL, api_base=sim.url)
    assert sim.stats()["requests_received"] == 20  # nothing paid twice
    assert all(r.hit == "exact" and r.cached for r in again)
    assert [r.content for r in again] == [r.content for r in results]


def test_await_run_batch_in_async_code_streams_results_in_order_and_fills_stats(env, sim):
    seen: list[str | int] = []
    stats = RunStats()

    async def main() -> list[Result]:
        return await run_batch(
            [*questions(8), {"id": "dup", "prompt": "question 0"}],
            model=MODEL,
            api_base=sim.url,
            on_result=lambda r: seen.append(r.id),
            stats=stats,
        )

    results = asyncio.run(main())
    assert seen == [r.id for r in results] == [*(f"q{i}" for i in range(8)), "dup"]
    assert stats.total == stats.done == stats.written == 9
    assert stats.calls == 8 and stats.hits + stats.coalesced == 1  # the duplicate prompt cost no call
    assert sim.stats()["requests_received"] == 8


def test_run_batch_sync_inside_a_running_loop_says_to_await_run_batch(env, sim):
    async def notebook_cell() -> None:
        run_batch_sync(questions(1), model=MODEL, api_base=sim.url)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "coroutine was never awaited" left behind
        with pytest.raises(RuntimeError, match=r"await llmbatch\.run_batch\(\.\.\.\)"):
            asyncio.run(notebook_cell())
        gc.collect()
    assert sim.stats()["requests_received"] == 0


def test_requests_can_be_request_values_mixed_with_dicts(env, sim):
    prepared = parse_line(json.dumps({"id": "r", "prompt": "question 0", "model": MODEL}), 40)
    results = run_batch_sync([prepared, {"prompt": "question 1"}], model=MODEL, api_base=sim.url)
    assert [(r.id, r.line) for r in results] == [("r", 40), (2, 2)]  # a Request is used as it is
    assert all(r.ok for r in results)


def test_no_requests_is_no_results_and_opens_nothing(env, cache_dir, sim):
    assert run_batch_sync([], model=MODEL, api_base=sim.url) == []
    assert not cache_dir.exists()


# --- checked before anything is sent -----------------------------------------------------------


def test_bad_requests_raise_input_error_listing_each_before_anything_is_sent(env, cache_dir, sim):
    requests: list[Any] = [
        {"prompt": "fine"},
        {"prompt": "typo", "temprature": 0},
        "What is 2+2?",
        {"prompt": "fine too"},
        {"messages": []},
        {"prompt": "not JSON", "metadata": {1, 2}},
        {"id": "a", "prompt": "one"},
        {"id": "a", "prompt": "two"},
    ]
    with pytest.raises(InputError) as caught:
        run_batch_sync(requests, model=MODEL, api_base=sim.url)
    error = caught.value
    assert [e.line for e in error.errors] == [2, 3, 5, 6, 8]  # positions, from 1
    assert error.total_errors == 5
    message = str(error)
    assert 'requests:2: unknown field "temprature" (did you mean "temperature"?)' in message
    assert 'requests:3: expected a dict or a Request, got a string (for a prompt, write {"prompt": "..."})' in message
    assert "requests:6: cannot be written as JSON" in message
    assert "requests:8: duplicate id 'a' (first used on line 7)" in message
    assert sim.stats()["requests_received"] == 0
    assert not cache_dir.exists()  # nothing was opened either


def test_only_the_first_hundred_bad_requests_are_listed_but_all_are_counted(env, sim):
    with pytest.raises(InputError) as caught:
        run_batch_sync([{"prompt": ""}] * 150, model=MODEL, api_base=sim.url)
    assert len(caught.value.errors) == 100 and caught.value.total_errors == 150


def test_a_malformed_default_model_is_one_usage_error(env, sim):
    with pytest.raises(UsageError, match=r"model='gpt-4o-mini': model 'gpt-4o-mini' has no provider"):
        run_batch_sync(questions(50), model="gpt-4o-mini", api_base=sim.url)
    assert sim.stats()["requests_received"] == 0


def test_arguments_that_contradict_each_other_are_refused(env, sim, tmp_path):
    with pytest.raises(TypeError, match="api_base or provider, not both"):
        run_batch_sync(questions(1), model=MODEL, api_base=sim.url, provider=AnyLLMProvider(api_base=sim.url))
    with pytest.raises(TypeError, match="store or cache_dir, not both"):
        run_batch_sync(questions(1), model=MODEL, store=object(), cache_dir=tmp_path)
    with pytest.raises(TypeError, match=r"an iterable of requests, got one dict: pass \[request\]"):
        run_batch_sync({"prompt": "one"}, model=MODEL, api_base=sim.url)  # type: ignore[arg-type]
    assert sim.stats()["requests_received"] == 0


# --- the endpoint in the keys ------------------------------------------------------------------


def test_answers_from_a_local_server_are_never_hits_for_the_real_provider(env, sim, tmp_path):
    # The first-hour defect: answers from a local server, filed under the real OpenAI's keys.
    requests = questions(6)
    cache = tmp_path / "shared-cache"
    run_batch_sync(requests, model=MODEL, api_base=sim.url, cache_dir=cache)
    # The same through a provider object of the caller's: its destination decides the keys.
    run_batch_sync(requests, model=MODEL, provider=AnyLLMProvider(api_base=sim.url), cache_dir=cache)
    assert sim.stats()["requests_received"] == 6

    path = write_jsonl(tmp_path / "prompts.jsonl", requests)

    def plan(*extra: str) -> dict[str, Any]:
        run = run_cli(["plan", str(path), "-m", MODEL, "--cache-dir", str(cache), "--json", *extra], env=env)
        assert run.exit_code == 0, run.stderr
        return json.loads(run.stdout)

    assert plan()["hits"] == 0 and plan()["calls"] == 6  # the real openai: nothing of the local server's
    assert plan("--api-base", sim.url)["hits"] == 6  # ... which is there, under the local server's keys

    # From the library too: a plain openai run on that cache finds nothing (and sends nothing).
    misses = run_batch_sync(requests, model=MODEL, cache_dir=cache, options=RunOptions(cache_mode="only"))
    assert [r.error["type"] for r in misses if r.error] == ["CacheMiss"] * 6


def test_an_engine_cannot_be_given_keys_for_another_destination_than_its_providers(sim):
    provider = AnyLLMProvider(api_base=sim.url)
    with pytest.raises(ValueError, match="the provider's own"):
        Resolver(executor=LiveExecutor(provider), store=None, sink=lambda _r: None, destination=Destination.of())
    engine = Resolver(
        executor=LiveExecutor(provider), store=None, sink=lambda _r: None, destination=provider.destination
    )
    assert engine.destination is provider.destination


# --- stops, cancellation, and what is closed ---------------------------------------------------


def test_a_fatal_stop_raises_with_the_results_answered_and_keeps_what_was_paid(env, sim):
    requests = [*questions(3), {"id": "locked", "prompt": "no [[sim:status=401]]"}]
    requests += [{"id": f"late{i}", "prompt": f"late {i} [[sim:latency=0.3]]"} for i in range(3)]
    with pytest.raises(RunStopped) as caught:
        run_batch_sync(requests, model=MODEL, api_base=sim.url)
    stop = caught.value
    assert stop.reason is StopReason.FATAL and stop.exit_code == 1
    assert "401" in str(stop) and "calling again pays only for the rest" in str(stop)
    assert [r.id for r in stop.results][:3] == ["q0", "q1", "q2"]
    assert all(r.ok for r in stop.results[:3])
    assert stop.stats.stop_reason is StopReason.FATAL

    paid = sim.stats()["completions_served"]
    again = run_batch_sync(questions(3), model=MODEL, api_base=sim.url)
    assert all(r.hit == "exact" for r in again)
    assert sim.stats()["completions_served"] == paid


def test_a_budget_stop_has_the_budget_exit_code(env, sim):
    with pytest.raises(RunStopped) as caught:
        run_batch_sync(
            questions(5, max_tokens=2000), model=MODEL, api_base=sim.url, options=RunOptions(max_cost_usd=1e-9)
        )
    assert caught.value.reason is StopReason.BUDGET and caught.value.exit_code == 3
    assert caught.value.results == [] and sim.stats()["requests_received"] == 0


def test_cancelling_lets_calls_in_flight_finish_and_be_stored(env, cache_dir, simulator):
    slow = simulator(latency_s=0.5)

    async def main() -> None:
        await asyncio.wait_for(run_batch(questions(40), model=MODEL, api_base=slow.url), timeout=0.2)

    with pytest.raises(TimeoutError):
        asyncio.run(main())
    served = slow.stats()["completions_served"]
    assert served > 0 and slow.stats()["in_flight"] == 0
    with DiskStore(cache_dir) as cache:
        assert cache.stats().entries == served  # every call paid for was stored before the cancel went on


def test_an_exception_from_on_result_propagates_once_calls_in_flight_are_stored(env, cache_dir, simulator):
    slow = simulator(latency_s=0.1)

    def on_result(result: Result) -> None:
        if result.line == 3:
            raise ValueError("the caller's own bug")

    with pytest.raises(ValueError, match="the caller's own bug"):
        run_batch_sync(questions(40), model=MODEL, api_base=slow.url, on_result=on_result)
    served = slow.stats()["completions_served"]
    assert 3 <= served < 40 and slow.stats()["in_flight"] == 0
    with DiskStore(cache_dir) as cache:
        assert cache.count() == served


def test_a_store_of_the_callers_own_is_used_and_left_open(env, cache_dir, sim):
    class DictStore:
        """The methods run_batch documents, over a dict."""

        def __init__(self) -> None:
            self.entries: dict[str, dict[str, Any]] = {}
            self.lookups = [0, 0]
            self.closed = False

        def get(self, key: str) -> dict[str, Any] | None:
            return self.entries.get(key)

        def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
            return {k: self.entries[k] for k in keys if k in self.entries}

        def put(self, key: str, entry: dict[str, Any], *, tag: str, ttl_s: float | None = None) -> None:
            self.entries[key] = json.loads(json.dumps(entry))  # JSON-ready, as promised

        def put_many(self, items: list[tuple[str, dict[str, Any], str]], *, ttl_s: float | None = None) -> None:
            for key, entry, tag in items:
                self.put(key, entry, tag=tag, ttl_s=ttl_s)

        def record_lookups(self, lookups: dict[str, Any]) -> None:
            self.lookups[0] += sum(n.hits for n in lookups.values())
            self.lookups[1] += sum(n.misses for n in lookups.values())

        def close(self) -> None:
            self.closed = True

    store = DictStore()
    first = run_batch_sync(questions(4), model=MODEL, api_base=sim.url, store=store)
    again = run_batch_sync(questions(4), model=MODEL, api_base=sim.url, store=store)
    assert len(store.entries) == 4 and store.lookups == [4, 4]
    assert [r.content for r in again] == [r.content for r in first] and all(r.hit == "exact" for r in again)
    assert sim.stats()["requests_received"] == 4
    assert not store.closed  # the caller's, so the caller closes it
    assert not cache_dir.exists()  # the default cache was never opened


def test_a_response_cache_of_the_callers_stays_open_and_cache_mode_off_opens_none(env, cache_dir, sim, tmp_path):
    with DiskStore(tmp_path / "mine") as cache:
        run_batch_sync(questions(2), model=MODEL, api_base=sim.url, store=cache)
        assert cache.count() == 2  # still usable after the call
    run_batch_sync(questions(2), model=MODEL, api_base=sim.url, options=RunOptions(cache_mode="off"))
    assert not cache_dir.exists()
    assert sim.stats()["requests_received"] == 4


def test_nothing_is_left_unclosed_at_exit(tmp_path, sim):
    # Run in a fresh interpreter, as a user would: aiohttp complains on stderr about any session
    # left open when it is collected ("Unclosed client session"), so stderr must stay empty.
    code = textwrap.dedent(
        f"""
        import asyncio, gc
        from llmbatch import AnyLLMProvider, run_batch, run_batch_sync

        url = {sim.url!r}
        run_batch_sync([{{"prompt": "sync"}}], model="openai:m", api_base=url)
        asyncio.run(run_batch([{{"prompt": "async"}}], model="openai:m", api_base=url))

        mine = AnyLLMProvider(api_base=url)  # the caller's: run_batch_sync closes it, and it can be used again
        for n in range(2):
            run_batch_sync([{{"prompt": f"mine {{n}}"}}], model="openai:m", provider=mine)

        async def own_loop():
            provider = AnyLLMProvider(api_base=url)  # in async code the caller closes what it made
            try:
                await run_batch([{{"prompt": "awaited"}}], model="openai:m", provider=provider)
            finally:
                await provider.aclose()

        asyncio.run(own_loop())
        gc.collect()
        print("done")
        """
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LLMBATCH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.stderr == ""
    assert done.returncode == 0 and done.stdout == "done\n"
    assert sim.stats()["requests_received"] == 5


# --- the package -------------------------------------------------------------------------------


def test_every_export_is_listed_and_resolves():
    assert sorted(llmbatch.__all__) == sorted(["__version__", *llmbatch._EXPORTS])
    for name in llmbatch.__all__:
        assert getattr(llmbatch, name) is not None
    assert llmbatch.run_batch is run_batch and llmbatch.Request is Request


@pytest.mark.parametrize("statement", ["import llmbatch", "from llmbatch import run_batch, run_batch_sync, Result"])
def test_importing_the_library_loads_no_sdk_and_no_terminal_ui(statement):
    heavy = ("any_llm", "openai", "anthropic", "rich", "typer", "aiohttp", "httpx")
    code = f"import sys\n{statement}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_routes_choose_models_and_fall_back_as_in_a_config_file(env, simulator):
    sim = simulator(models=("gpt-4o-mini", "gpt-4o"))  # any other model is 404 model_not_found
    routes = [
        {"when": {"metadata": {"task": "extract"}}, "model": "openai:gpt-4o"},
        {"model": "openai:retired", "fallback": ["openai:gpt-4o-mini"]},
    ]
    requests = [
        {"id": "e", "prompt": "extract this", "metadata": {"task": "extract"}},
        {"id": "c", "prompt": "chat"},
        {"id": "own", "prompt": "mine", "model": "openai:gpt-4o-mini"},
    ]
    results = run_batch_sync(requests, routes=routes, api_base=sim.url)
    assert [(r.model, r.answered_by) for r in results] == [
        ("openai:gpt-4o", "openai:gpt-4o"),
        ("openai:retired", "openai:gpt-4o-mini"),
        ("openai:gpt-4o-mini", "openai:gpt-4o-mini"),
    ]
    assert sim.stats()["unknown_model"] == 1
    with pytest.raises(UsageError, match='routes: route 1: unknown setting "modle"'):
        run_batch_sync(requests, routes=[{"modle": "openai:gpt-4o"}], api_base=sim.url)
    assert sim.stats()["requests_received"] == 4  # the bad rule sent nothing


def test_a_request_a_pending_cli_batch_job_holds_stops_the_run_instead_of_paying_again(env, cache_dir, simulator):
    sim = simulator(batch_processing_s=600)
    path = write_jsonl(cache_dir.parent / "in.jsonl", questions(2))
    submitted = run_cli(
        ["run", str(path), "--api-base", sim.url, "--model", MODEL, "--batch-api", "--no-wait"], env=env
    )
    assert submitted.exit_code == 75, submitted.stderr

    with pytest.raises(RunStopped) as caught:
        run_batch_sync(questions(2), model=MODEL, api_base=sim.url, cache_dir=cache_dir)

    assert caught.value.reason is StopReason.HELD and caught.value.exit_code == 75
    assert "--batch-api" in str(caught.value)
    assert sim.stats()["completions_served"] == 0
