"""``llmbatch run --batch-api`` end to end: the CLI, any-llm and the simulator's Batch APIs over HTTP on
127.0.0.1, with a real cache in a temporary directory.

The simulator counts what was submitted and answered (``batches_created``, ``batch_requests_submitted``,
``batch_lines_answered``, ``max_answers_per_request``), so each test proves what was paid for, not only
what the results say.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from llmbatch.sim import SimulatorThread
from tests.support import prompts, read_results, run_cli, write_jsonl
from tests.test_resilience import spawn, wait_for

MODEL = "openai:gpt-4o-mini"


def batch_args(path: Path, sim: SimulatorThread, *extra: str) -> list[str]:
    # Polls every 10 ms: the simulator's jobs end on the first look (or when its clock is moved).
    return ["run", str(path), "--api-base", sim.url, "--model", MODEL, "--batch-api", "--batch-poll", "0.01s", *extra]


def records(env: dict[str, str]) -> list[dict[str, Any]]:
    folder = Path(env["LLMBATCH_CACHE_DIR"]) / "batches"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("job_*.json"))] if folder.is_dir() else []


def test_only_misses_are_submitted_in_one_job_and_a_rerun_makes_no_batch_and_no_call(tmp_path, env, sim):
    seeded = write_jsonl(tmp_path / "seed.jsonl", prompts(30))
    assert run_cli(["run", str(seeded), "--api-base", sim.url, "--model", MODEL], env=env).exit_code == 0
    rows = prompts(30) + prompts(100, start=100)
    rows += [{**row, "id": f"again-{row['id']}"} for row in prompts(5, start=100)]  # duplicates of misses
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    sim.reset_stats()

    result = run_cli(batch_args(path, sim), env=env)

    assert result.exit_code == 0, result.stderr
    out = read_results(tmp_path / "big.results.jsonl")
    assert [row["id"] for row in out] == [row["id"] for row in rows]  # complete, in input order
    assert all(row["status"] == "ok" for row in out)
    assert {(row["cached"], row["via"]) for row in out[:30]} == {(True, "live")}  # hits of the live run
    assert {row["via"] for row in out[30:130]} == {"batch"}
    assert {row["hit"] for row in out[130:]} == {"duplicate"}
    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["batch_requests_submitted"] == 100
    assert stats["completions_served"] == 0  # nothing live
    assert stats["max_answers_per_request"] == 1
    [job] = records(env)
    assert len(job["ids"]) == 100 and job["state"] == "collected"
    # custom_ids Anthropic would accept, each mapped to a whole request key
    assert all(len(cid) <= 64 and cid.replace("-", "").replace("_", "").isalnum() for cid in job["ids"])
    assert set(job["ids"].values()) == {row["key"] for row in out[30:130]}

    sim.reset_stats()
    again = run_cli(batch_args(path, sim), env=env)

    assert again.exit_code == 0, again.stderr
    rerun = read_results(tmp_path / "big.results.jsonl")
    assert all(row["cached"] for row in rerun)
    assert [row["via"] for row in rerun[30:130]] == ["batch"] * 100  # a hit says how it was first made
    assert [row["cost_usd"] for row in rerun[30:130]] == [row["cost_usd"] for row in out[30:130]]
    stats = sim.stats()
    assert stats["batches_created"] == 0 and stats["completions_served"] == 0 and stats["files_uploaded"] == 0


def test_after_kill_9_once_a_job_is_submitted_the_rerun_attaches_and_creates_no_second_batch(tmp_path, env, simulator):
    sim = simulator(batch_processing_s=3600)  # the job stays in progress until the clock is moved
    path = write_jsonl(tmp_path / "in.jsonl", prompts(50))
    args = batch_args(path, sim)

    process = spawn(args, env, tmp_path)
    try:
        wait_for(
            lambda: any(r["state"] == "submitted" for r in records(env)), timeout=60, process=process, what="a job"
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
    assert sim.stats()["batches_created"] == 1
    sim.advance_clock(3600)  # the job ends meanwhile

    again = run_cli(args, env=env)

    assert again.exit_code == 0, again.stderr
    out = read_results(tmp_path / "in.results.jsonl")
    assert len(out) == 50 and all(row["status"] == "ok" and row["via"] == "batch" for row in out)
    stats = sim.stats()
    assert stats["batches_created"] == 1  # attached, never resubmitted
    assert stats["max_answers_per_request"] == 1
    assert [r["state"] for r in records(env)] == ["collected"]


def test_three_lines_in_the_error_file_are_retried_in_a_later_job(tmp_path, env, sim):
    rows = prompts(20)
    for row in rows[3:6]:
        row["prompt"] += " [[sim:batch_fail=1]]"  # fails (500) in the first job that carries it
    path = write_jsonl(tmp_path / "in.jsonl", rows)

    result = run_cli(batch_args(path, sim, "-v"), env=env)

    assert result.exit_code == 0, result.stderr
    out = read_results(tmp_path / "in.results.jsonl")
    assert all(row["status"] == "ok" for row in out)
    assert [row["attempts"] for row in out[3:6]] == [2, 2, 2]
    retries = [line for line in result.stderr.splitlines() if line.startswith("retry line")]
    assert len(retries) == 3 and all(line.endswith("; retrying in a later job") for line in retries), retries
    stats = sim.stats()
    assert stats["batches_created"] == 2
    assert stats["batch_requests_submitted"] == 23  # the second job: the three failed lines alone
    assert sorted(len(r["ids"]) for r in records(env)) == [3, 20]


def test_lines_that_fail_every_try_end_as_clear_error_lines(tmp_path, env, sim):
    rows = prompts(10)
    rows[2]["prompt"] += " [[sim:batch_fail=9]]"
    path = write_jsonl(tmp_path / "in.jsonl", rows)

    result = run_cli(batch_args(path, sim, "--max-retries", "1"), env=env)

    assert result.exit_code == 1
    out = read_results(tmp_path / "in.results.jsonl")
    assert [row["status"] for row in out].count("error") == 1
    assert out[2]["status"] == "error" and out[2]["error"]["status_code"] == 500 and out[2]["attempts"] == 2
    assert sim.stats()["batches_created"] == 2


def test_failed_lines_go_live_with_batch_fallback_live(tmp_path, env, sim):
    rows = prompts(10)
    rows[4]["prompt"] += " [[sim:batch_fail=9]]"  # batch lines only: live calls answer
    path = write_jsonl(tmp_path / "in.jsonl", rows)

    result = run_cli(batch_args(path, sim, "--batch-fallback", "live"), env=env)

    assert result.exit_code == 0, result.stderr
    out = read_results(tmp_path / "in.results.jsonl")
    assert out[4]["via"] == "live" and out[4]["status"] == "ok"
    assert {row["via"] for i, row in enumerate(out) if i != 4} == {"batch"}
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["completions_served"] == 1


def test_an_expired_job_keeps_its_60_answers_and_resubmits_only_the_40_others(tmp_path, env, simulator):
    sim = simulator(batch_expire_after=60)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(100))

    result = run_cli(batch_args(path, sim), env=env)

    assert result.exit_code == 0, result.stderr
    assert all(row["status"] == "ok" for row in read_results(tmp_path / "in.results.jsonl"))
    stats = sim.stats()
    assert stats["batches_created"] == 2
    assert stats["batch_requests_submitted"] == 140  # 100, then the 40 the first never did
    assert stats["batch_lines_answered"] == 100
    assert stats["max_answers_per_request"] == 1
    assert sorted(len(r["ids"]) for r in records(env)) == [40, 100]


def test_a_line_the_anthropic_batch_path_cannot_carry_is_refused_before_anything_is_sent(tmp_path, env, sim):
    rows = prompts(3, model="anthropic:claude-sonnet-4-5")
    rows[1]["stop"] = ["END"]
    path = write_jsonl(tmp_path / "in.jsonl", rows)

    result = run_cli(batch_args(path, sim), env=env)

    assert result.exit_code == 2
    expected = f'{path}:2: anthropic\'s batch path (any-llm) would drop "stop"; remove it or run without --batch-api'
    assert expected in result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    stats = sim.stats()
    assert stats["files_uploaded"] == 0 and stats["batches_created"] == 0 and stats["completions_served"] == 0
    assert records(env) == []


def test_misses_over_a_lowered_job_limit_are_split_into_several_jobs(tmp_path, env, sim):
    path = write_jsonl(tmp_path / "in.jsonl", prompts(100))

    result = run_cli(batch_args(path, sim, "--batch-max-requests", "40"), env=env)

    assert result.exit_code == 0, result.stderr
    assert sim.stats()["batches_created"] == 3
    assert sorted(len(r["ids"]) for r in records(env)) == [20, 40, 40]
    assert len(read_results(tmp_path / "in.results.jsonl")) == 100


def test_a_batch_answer_costs_half_the_live_price_for_the_same_usage(tmp_path, env, sim, monkeypatch):
    path = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    live_out, batch_out = tmp_path / "live.jsonl", tmp_path / "batch.jsonl"
    live = run_cli(["run", str(path), "--api-base", sim.url, "--model", MODEL, "-o", str(live_out)], env=env)
    assert live.exit_code == 0, live.stderr
    other_cache = {**env, "LLMBATCH_CACHE_DIR": str(tmp_path / "other-cache")}
    monkeypatch.setenv("LLMBATCH_CACHE_DIR", other_cache["LLMBATCH_CACHE_DIR"])

    batch = run_cli([*batch_args(path, sim), "-o", str(batch_out)], env=other_cache)

    assert batch.exit_code == 0, batch.stderr
    for live_row, batch_row in zip(read_results(live_out), read_results(batch_out), strict=True):
        assert batch_row["usage"] == live_row["usage"]
        assert batch_row["cost_usd"] == live_row["cost_usd"] / 2
        assert batch_row["cost_usd"] > 0


def test_no_wait_submits_and_returns_then_the_same_command_collects(tmp_path, env, simulator):
    sim = simulator(batch_processing_s=600)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(10))

    first = run_cli(batch_args(path, sim, "--no-wait"), env=env)

    assert first.exit_code == 75, first.stderr
    assert "run the same command again" in first.stderr
    assert not (tmp_path / "in.results.jsonl").exists()
    [job] = records(env)
    assert job["state"] == "submitted" and job["batch_id"]
    # The plan counts what the job holds apart: it is collected, never paid again.
    plan_args = ["plan", str(path), "--api-base", sim.url, "--model", MODEL, "--batch-api"]
    plan = json.loads(run_cli([*plan_args, "--json"], env=env).stdout)
    assert (plan["in_jobs"], plan["calls"], plan["estimated_cost_usd"]) == (10, 0, 0)
    assert "in jobs already submitted (collected, not paid again)" in run_cli(plan_args, env=env).stdout
    still = run_cli(batch_args(path, sim, "--no-wait"), env=env)  # still running: looked at once
    assert still.exit_code == 75, still.stderr
    sim.advance_clock(600)

    done = run_cli(batch_args(path, sim, "--no-wait"), env=env)

    assert done.exit_code == 0, done.stderr
    assert len(read_results(tmp_path / "in.results.jsonl")) == 10
    assert sim.stats()["batches_created"] == 1


def test_answers_of_a_pending_job_for_lines_since_changed_are_stored_and_never_paid_again(tmp_path, env, simulator):
    sim = simulator(batch_processing_s=600)
    original = prompts(10)
    path = write_jsonl(tmp_path / "in.jsonl", original)
    assert run_cli(batch_args(path, sim, "--no-wait"), env=env).exit_code == 75
    sim.advance_clock(600)  # the job of 10 is done at the provider
    # The user fixes two prompts meanwhile: their old versions are in the job, paid for.
    changed = [dict(row) for row in original]
    for row in changed[3:5]:
        row["prompt"] += " (fixed)"
    write_jsonl(path, changed)

    rerun = run_cli(batch_args(path, sim, "--no-wait"), env=env)

    assert rerun.exit_code == 75, rerun.stderr  # the fixed two went out in a new job
    assert "batch answers to lines not in this file (stored)" in rerun.stderr
    assert sim.stats()["batch_requests_submitted"] == 12  # the 10, then the 2 fixed ones
    sim.advance_clock(600)
    assert run_cli(batch_args(path, sim), env=env).exit_code == 0
    assert [job["state"] for job in records(env)] == ["collected", "collected"]
    # The original file again: every line from the cache, the two old versions included.
    write_jsonl(path, original)
    again = run_cli(batch_args(path, sim), env=env)
    assert again.exit_code == 0, again.stderr
    assert [r["cached"] for r in read_results(tmp_path / "in.results.jsonl")] == [True] * 10
    assert (sim.stats()["batches_created"], sim.stats()["batch_requests_submitted"]) == (2, 12)


def test_a_run_without_batch_api_stops_at_a_line_a_pending_job_holds_instead_of_paying_twice(tmp_path, env, simulator):
    sim = simulator(batch_processing_s=600)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    assert run_cli(batch_args(path, sim, "--no-wait"), env=env).exit_code == 75
    live_args = ["run", str(path), "--api-base", sim.url, "--model", MODEL]

    plan = run_cli(["plan", *live_args[1:], "--json"], env=env)
    live = run_cli(live_args, env=env)

    assert json.loads(plan.stdout)["in_jobs"] == 3
    assert "run with --batch-api to collect them" in run_cli(["plan", *live_args[1:]], env=env).stdout
    assert live.exit_code == 75, live.stderr
    assert "is in batch job job_" in live.stderr and "--batch-api" in live.stderr
    assert sim.stats()["completions_served"] == 0  # nothing paid live for what the job holds
    sim.advance_clock(600)
    done = run_cli(batch_args(path, sim), env=env)
    assert done.exit_code == 0, done.stderr
    assert [r["via"] for r in read_results(tmp_path / "in.results.jsonl")] == ["batch"] * 3
    assert (sim.stats()["completions_served"], sim.stats()["batch_requests_submitted"]) == (0, 3)


def test_batches_list_shows_each_job_and_cancel_keeps_the_answers_done_so_far(tmp_path, env, simulator):
    sim = simulator(batch_processing_s=1000)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(10))
    assert run_cli(batch_args(path, sim, "--no-wait"), env=env).exit_code == 75
    [job] = records(env)
    sim.advance_clock(500)  # about half of the lines are answered by now

    listed = run_cli(["batches", "list"], env=env)
    status = run_cli(["batches", "status", job["id"], "--json"], env=env)
    cancelled = run_cli(["batches", "cancel", job["batch_id"], "--json"], env=env)

    assert listed.exit_code == 0
    assert listed.stdout.split()[:4] == [job["id"], job["batch_id"], MODEL, "submitted"]
    assert status.exit_code == 0, status.stderr
    seen = json.loads(status.stdout)
    assert seen["status"] == "in_progress" and 0 < seen["done"] < 10 and seen["total"] == 10
    assert cancelled.exit_code == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] in ("cancelling", "cancelled")
    sim.advance_clock(200)  # cancelled by now
    again = run_cli(batch_args(path, sim, "--no-wait"), env=env)  # keeps what was done, submits the rest
    assert again.exit_code == 75, again.stderr
    sim.advance_clock(1000)
    last = run_cli(batch_args(path, sim), env=env)
    assert last.exit_code == 0, last.stderr
    stats = sim.stats()
    answered_first = stats["batch_lines_answered"] - stats["batch_requests_submitted"] + 10
    assert stats["batches_created"] == 2
    assert 0 < answered_first < 10  # the first job's answers were kept; only the rest went out again
    assert stats["max_answers_per_request"] == 1


def test_anthropic_lines_go_through_message_batches_and_match_the_live_answers(tmp_path, env, sim, monkeypatch):
    key = "sk-ant-llmbatch-test-0123456789abcdef"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    rows = prompts(4, model="anthropic:claude-sonnet-4-5", system="Answer in one word.", max_tokens=50)
    # Two system messages: they become one "system" text exactly as the live path joins them.
    rows[3] = {
        **rows[3],
        "messages": [
            {"role": "system", "content": "S1"},
            {"role": "system", "content": "S2"},
            {"role": "user", "content": "q"},
        ],
    }
    del rows[3]["prompt"], rows[3]["system"]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    base = sim.url.removesuffix("/v1")  # the Anthropic SDK adds /v1 itself
    args = ["run", str(path), "--api-base", base, "--batch-api", "--batch-poll", "0.01s"]

    result = run_cli(args, env={**env, "ANTHROPIC_API_KEY": key})

    assert result.exit_code == 0, result.stderr
    out = read_results(tmp_path / "in.results.jsonl")
    assert [row["status"] for row in out] == ["ok"] * 4
    assert {row["via"] for row in out} == {"batch"}
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batch_lines_answered"] == 4
    # The simulator answers a batch line as it answers the same body live: the system prompt went
    # where the live path puts it (Anthropic's "system"), not among the messages.
    live_cache = str(tmp_path / "live-cache")
    monkeypatch.setenv("LLMBATCH_CACHE_DIR", live_cache)
    live_out = tmp_path / "live.jsonl"
    live_env = {**env, "LLMBATCH_CACHE_DIR": live_cache, "ANTHROPIC_API_KEY": key}
    live = run_cli(["run", str(path), "--api-base", base, "-o", str(live_out)], env=live_env)
    assert live.exit_code == 0, live.stderr
    assert [r["content"] for r in read_results(live_out)] == [r["content"] for r in out]
    assert [r["usage"] for r in read_results(live_out)] == [r["usage"] for r in out]
    for file in Path(env["LLMBATCH_CACHE_DIR"]).rglob("*"):
        if file.is_file():
            assert key.encode() not in file.read_bytes(), file


def test_max_cost_counts_a_submitted_job_at_its_estimate(tmp_path, env, sim):
    path = write_jsonl(tmp_path / "in.jsonl", prompts(100))
    planned = run_cli(["plan", str(path), "--model", MODEL, "--batch-api", "--json"], env=env)
    whole = json.loads(planned.stdout)["estimated_cost_usd"]
    assert planned.exit_code == 0 and whole > 0

    # Room for one job of 50 at its estimate, not for two: the second is never submitted.
    budget = str(whole * 0.6)
    result = run_cli(batch_args(path, sim, "--batch-max-requests", "50", "--max-cost", budget), env=env)

    assert result.exit_code == 3, result.stderr
    assert "budget" in result.stderr
    assert sim.stats()["batches_created"] == 1
    assert [len(r["ids"]) for r in records(env)] == [50]


def test_a_job_the_provider_fails_as_a_whole_ends_its_lines_as_clear_error_lines(tmp_path, env, simulator):
    sim = simulator(batch_max_requests=5)  # the simulator's OpenAI fails a bigger job (too_many_tasks)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(8))

    result = run_cli(batch_args(path, sim), env=env)

    assert result.exit_code == 1
    out = read_results(tmp_path / "in.results.jsonl")
    assert {row["status"] for row in out} == {"error"}
    assert out[0]["error"]["type"] == "BatchFailed"
    assert out[0]["error"]["message"].startswith(f"batch {records(env)[0]['batch_id']} failed: ")
    assert sim.stats()["batches_created"] == 1  # a refusal of the whole job is not tried again


def test_with_a_redis_cache_the_answers_go_to_the_server_and_the_job_records_stay_here(
    tmp_path, env, simulator, redis_server
):
    sim = simulator(batch_processing_s=100)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(6))
    args = batch_args(path, sim, "--cache", redis_server.url)
    assert run_cli([*args, "--no-wait"], env=env).exit_code == 75
    [job] = records(env)  # in this machine's --cache-dir
    assert job["state"] == "submitted"
    sim.advance_clock(100)

    collected = run_cli(args, env=env)
    again = run_cli([*args, "-o", str(tmp_path / "again.jsonl")], env=env)

    assert collected.exit_code == 0, collected.stderr
    assert again.exit_code == 0, again.stderr
    assert all(row["cached"] for row in read_results(tmp_path / "again.jsonl"))  # from the server
    assert sim.stats()["batches_created"] == 1


def test_an_expired_anthropic_batch_keeps_its_answers_and_resubmits_the_rest(tmp_path, env, simulator, monkeypatch):
    sim = simulator(batch_expire_after=3)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-llmbatch-test-0123456789abcdef")
    path = write_jsonl(tmp_path / "in.jsonl", prompts(5, model="anthropic:claude-sonnet-4-5", max_tokens=20))
    base = sim.url.removesuffix("/v1")

    result = run_cli(["run", str(path), "--api-base", base, "--batch-api", "--batch-poll", "0.01s"], env=env)

    assert result.exit_code == 0, result.stderr
    assert {row["status"] for row in read_results(tmp_path / "in.results.jsonl")} == {"ok"}
    stats = sim.stats()
    assert stats["batches_created"] == 2 and stats["batch_requests_submitted"] == 7
    assert stats["max_answers_per_request"] == 1


def test_ctrl_c_while_a_job_runs_exits_130_at_once_and_the_rerun_collects_it(tmp_path, env, simulator):
    sim = simulator(batch_processing_s=3600)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    args = batch_args(path, sim)
    process = spawn(args, env, tmp_path)
    try:
        wait_for(
            lambda: any(r["state"] == "submitted" for r in records(env)), timeout=60, process=process, what="a job"
        )
        asked = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - asked
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert took < 5, took  # no wait for the job, nor for the next poll
    assert [r["state"] for r in records(env)] == ["submitted"]  # pending: not collected, not lost
    sim.advance_clock(3600)

    again = run_cli(args, env=env)

    assert again.exit_code == 0, again.stderr
    assert len(read_results(tmp_path / "in.results.jsonl")) == 20
    assert sim.stats()["batches_created"] == 1


def test_no_wait_submits_every_job_of_the_run_before_it_returns(tmp_path, env, simulator):
    sim = simulator(batch_processing_s=600)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(10))

    result = run_cli(batch_args(path, sim, "--no-wait", "--batch-max-requests", "4"), env=env)

    assert result.exit_code == 75, result.stderr
    assert sim.stats()["batches_created"] == 3
    assert sorted(len(r["ids"]) for r in records(env)) == [2, 4, 4]


def test_plan_with_batch_api_gives_the_cost_at_batch_prices(tmp_path, env):
    path = write_jsonl(tmp_path / "in.jsonl", prompts(20, max_tokens=100))
    live = json.loads(run_cli(["plan", str(path), "--model", MODEL, "--json"], env=env).stdout)
    batch = run_cli(["plan", str(path), "--model", MODEL, "--batch-api"], env=env)
    as_json = json.loads(run_cli(["plan", str(path), "--model", MODEL, "--batch-api", "--json"], env=env).stdout)

    assert as_json["batch_api"] is True and live["batch_api"] is False
    assert as_json["estimated_cost_usd"] == pytest.approx(live["estimated_cost_usd"] / 2)
    assert as_json["estimated_cost_usd"] > 0
    assert batch.exit_code == 0
    assert "estimated cost at Batch API prices" in batch.stdout


def test_polls_back_off_on_the_injected_sleep_and_never_wait_in_real_time(tmp_path, simulator):
    import asyncio

    from llmbatch.engine import batch_resolver
    from llmbatch.model.request import Request
    from llmbatch.providers.anyllm import AnyLLMProvider
    from llmbatch.providers.base import Destination
    from llmbatch.store.jobs import JobBook
    from tests.support import TEST_API_KEY

    sim = simulator(batch_processing_s=60)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the simulator's clock moves instead of ours
        slept.append(seconds)
        sim.advance_clock(seconds)
        await asyncio.sleep(0)

    async def run() -> list[Any]:
        provider = AnyLLMProvider(Destination.of(api_base=sim.url, api_key=TEST_API_KEY))
        results: list[Any] = []
        engine = batch_resolver(
            # No store: no leases, whose polls would share the injected sleep.
            provider,
            book=JobBook(tmp_path / "batches"),
            store=None,
            sink=results.append,
            sleep=sleep,
        )
        requests = [
            Request(
                line=n, id=n, provider="openai", model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{n}"}]
            )
            for n in range(1, 4)
        ]
        try:
            await engine.run(requests)
            assert engine.executor is not None
            await engine.executor.aclose()
        finally:
            await provider.aclose()
        return results

    started = time.monotonic()
    results = asyncio.run(run())

    assert [r.via for r in results] == ["batch"] * 3
    assert slept == [5.0, 7.5, 11.25, 16.875, 25.3125]  # first poll at once, then 1.5x longer each time
    assert time.monotonic() - started < 10


def test_a_bad_key_stops_the_run_with_one_message_and_no_job(tmp_path, env, simulator):
    sim = simulator(require_api_key="sk-the-right-key-0000000000")
    path = write_jsonl(tmp_path / "in.jsonl", prompts(5))

    result = run_cli(batch_args(path, sim), env=env)

    assert result.exit_code == 1
    assert "401" in result.stderr or "uthentication" in result.stderr
    assert env["OPENAI_API_KEY"] not in result.stderr
    assert sim.stats()["batches_created"] == 0
    assert [r["state"] for r in records(env)] == ["refused"]
