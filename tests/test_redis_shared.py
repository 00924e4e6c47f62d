"""Many processes, one Redis, one file: each prompt paid once, one rate budget, and a process killed
with kill -9 costs no more than its calls in flight. A real redis-server and a strict simulator
(1,200 requests a minute, enforced over any one second), each run a process of its own."""

from __future__ import annotations

import os
import signal
import time

from llmbatch.providers.base import Destination
from llmbatch.store.redis import RedisLimitState
from tests.support import prompts, write_jsonl
from tests.test_resilience import all_succeed, assert_complete, run_args, spawn


def machines(env, tmp_path, count):
    """Each process as on a machine of its own: its own local directory, one server between them."""
    return [{**env, "LLMBATCH_CACHE_DIR": str(tmp_path / f"machine-{i}")} for i in range(count)]


def test_three_processes_on_one_file_pay_once_for_each_prompt_without_a_429(tmp_path, env, simulator, redis_server):
    strict = simulator(rpm=1200, limit_window_s=1.0)
    n = 600
    path = write_jsonl(tmp_path / "p.jsonl", prompts(n))
    outputs = [tmp_path / f"out-{i}.jsonl" for i in range(3)]
    processes = [
        spawn(run_args(path, strict, "--cache", redis_server.url, "-o", str(out)), machine, tmp_path)
        for out, machine in zip(outputs, machines(env, tmp_path, 3), strict=True)
    ]
    all_succeed(processes, timeout=180)
    contents = [[row["content"] for row in assert_complete(out, n)] for out in outputs]
    assert contents[0] == contents[1] == contents[2]
    stats = strict.stats()
    assert stats["completions_served"] == n and stats["distinct_requests_served"] == n  # each paid once
    assert stats["rate_limited"] == 0  # one pace between the three, learned from the headers


def test_a_process_killed_mid_run_costs_at_most_its_calls_in_flight(tmp_path, env, simulator, redis_server):
    strict = simulator(rpm=1200, limit_window_s=1.0, latency_s=0.2)
    n = 600
    path = write_jsonl(tmp_path / "p.jsonl", prompts(n))
    outputs = [tmp_path / f"out-{i}.jsonl" for i in range(3)]
    processes = [
        spawn(run_args(path, strict, "--cache", redis_server.url, "-o", str(out)), machine, tmp_path)
        for out, machine in zip(outputs, machines(env, tmp_path, 3), strict=True)
    ]
    try:
        deadline = time.monotonic() + 60
        while strict.stats()["completions_served"] < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        in_flight = strict.stats()["in_flight"]
        os.kill(processes[0].pid, signal.SIGKILL)
        finished = [p.communicate(timeout=180) for p in processes[1:]]
    finally:
        for p in processes:
            p.kill()
    for p, (_, stderr) in zip(processes[1:], finished, strict=True):
        assert p.returncode == 0, stderr
    for out in outputs[1:]:
        assert_complete(out, n)
    paid = strict.stats()["completions_served"]
    # The killed process's keys were taken over at once (its pid is gone from this machine), and
    # what it had in flight may have been answered with nobody left to store it.
    assert n <= paid <= n + max(in_flight, 1) + 4
    assert strict.stats()["rate_limited"] == 0


def test_one_processs_pause_pauses_every_process_of_the_budget_on_the_servers_clock(redis_server):
    group = Destination.of(api_base="http://127.0.0.1:9/v1").budget_identity
    a = RedisLimitState(redis_server.url, namespace="llmbatch:", group=lambda budget: group("openai"))
    b = RedisLimitState(redis_server.url, namespace="llmbatch:", group=lambda budget: group("openai"))
    other = RedisLimitState(redis_server.url, namespace="llmbatch:", group=lambda budget: "another-key")
    try:
        assert abs(a.clock() - b.clock()) < 0.05 and abs(a.clock() - time.time()) < 0.05  # one machine here
        until = a.clock() + 30
        a.pause("openai:gpt-4o-mini", until)
        assert b.paused_until("openai:gpt-4o-mini") == until
        a.pause("openai:gpt-4o-mini", until - 10)  # a shorter pause does not cut one in force
        assert b.paused_until("openai:gpt-4o-mini") == until
        assert b.paused_until("openai:gpt-4o") == 0.0 and other.paused_until("openai:gpt-4o-mini") == 0.0
    finally:
        for state in (a, b, other):
            state.close()


def test_the_budget_is_a_fingerprint_of_key_and_endpoint_never_the_key():
    secret = "sk-budget-secret-0001"
    one = Destination.of(api_base="https://api.example.com/v1").budget_identity("openai", {"OPENAI_API_KEY": secret})
    same = Destination.of(api_base="https://api.example.com/v1").budget_identity("openai", {"OPENAI_API_KEY": secret})
    other_key = Destination.of(api_base="https://api.example.com/v1").budget_identity("openai", {"OPENAI_API_KEY": "x"})
    other_url = Destination.of(api_base="https://eu.example.com/v1").budget_identity(
        "openai", {"OPENAI_API_KEY": secret}
    )
    assert one == same and len({one, other_key, other_url}) == 3
    assert secret not in one and len(one) == 16


def test_limits_one_run_heard_in_the_headers_pace_a_later_run_from_its_first_call(redis_server):
    from llmbatch.limits import Governor

    a = RedisLimitState(redis_server.url, namespace="llmbatch:", group=lambda budget: "key-1")
    b = RedisLimitState(redis_server.url, namespace="llmbatch:", group=lambda budget: "key-1")
    try:
        assert b.learned("openai:gpt-4o-mini") == (None, None)
        a.learn("openai:gpt-4o-mini", 1200, None)
        assert b.learned("openai:gpt-4o-mini") == (1200, None)
        later = Governor(concurrency=8, state=b, clock=b.clock).budget("openai:gpt-4o-mini")
        assert later.rpm == 1200 and later.pacer is not None and not later.probing
        unknown = Governor(concurrency=8, state=b, clock=b.clock).budget("openai:gpt-4o")
        assert unknown.pacer is None and unknown.probing
    finally:
        a.close()
        b.close()
