"""Pacing end to end: against a simulator that enforces its limits over a short window, llmbatch
must finish every prompt without one 429 caused by its own pace — with --rpm/--tpm given, and with
nothing given (learning the limits from the response headers). And 429s from elsewhere: a sporadic
one delays only its own request; the whole run backs off only when the window is used up."""

from __future__ import annotations

from typing import Any

import pytest

from llmbatch.limits import Governor
from tests.support import prompts, read_results, run_cli, write_jsonl


@pytest.mark.parametrize("given", [True, False], ids=["rpm-given", "rpm-from-headers"])
def test_a_strict_request_limit_is_never_exceeded(tmp_path, simulator, env, given):
    strict = simulator(rpm=1200, limit_window_s=1.0)  # 20 requests in any second, as the issue describes
    path = write_jsonl(tmp_path / "p.jsonl", prompts(60))
    args = ["run", str(path), "--api-base", strict.url, "-m", "openai:gpt-4o-mini", "-c", "16", "--no-cache"]
    result = run_cli(args + (["--rpm", "1200"] if given else []), env=env)
    assert result.exit_code == 0, result.stderr
    assert strict.stats()["rate_limited"] == 0
    assert strict.stats()["completions_served"] == 60
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in read_results(tmp_path / "p.results.jsonl"))


@pytest.mark.parametrize("given", [True, False], ids=["tpm-given", "tpm-from-headers"])
def test_a_strict_token_limit_is_never_exceeded(tmp_path, simulator, env, given):
    strict = simulator(tpm=60_000, limit_window_s=0.5)  # 500 tokens in any half second
    path = write_jsonl(tmp_path / "p.jsonl", prompts(40, max_tokens=20))  # ~23 tokens each
    args = ["run", str(path), "--api-base", strict.url, "-m", "openai:gpt-4o-mini", "-c", "16", "--no-cache"]
    result = run_cli(args + (["--tpm", "60000"] if given else []), env=env)
    assert result.exit_code == 0, result.stderr
    assert strict.stats()["rate_limited"] == 0
    assert strict.stats()["completions_served"] == 40


# --- a request that alone is over the token limit ---------------------------------------------------


def test_a_request_too_large_for_the_token_limit_fails_at_once_and_the_other_lines_go_on(tmp_path, simulator, env):
    # 50 tokens in any half second (6,000 a minute, as its headers say): 70 never fit, whatever the wait.
    tight = simulator(tpm=6000, limit_window_s=0.5)
    rows = [
        {"id": "big", "prompt": "w " * 30, "max_tokens": 40},  # 70 tokens: sent once, refused for good
        *prompts(2, max_tokens=2),
        {"id": "huge", "prompt": "hi", "max_tokens": 7000},  # over the 6,000 learned: never sent
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    args = ["run", str(path), "--api-base", tight.url, "-m", "openai:gpt-4o-mini", "--max-retries", "1"]
    result = run_cli(args, env=env)
    assert result.exit_code == 1, result.stderr
    big, first, second, huge = read_results(tmp_path / "p.results.jsonl")
    assert (big["error"]["type"], big["error"]["status_code"], big["attempts"]) == ("RequestTooLarge", 429, 1)
    assert "no wait can help: lower max_tokens or split the prompt" in big["error"]["message"]
    assert first["status"] == second["status"] == "ok"
    assert (huge["error"]["type"], huge["attempts"]) == ("RequestTooLarge", 0)
    assert huge["error"]["message"] == (
        "the request needs about 7004 tokens, more than the tokens-per-minute limit of 6000 (the provider's, "
        "from its rate-limit headers), so it was not sent: lower max_tokens or split the prompt"
    )
    assert tight.stats()["requests_received"] == 3  # the big line once, never again; the huge one never


def test_a_request_over_the_given_tpm_fails_before_it_is_sent_and_names_the_option(tmp_path, sim, env):
    rows = [{"id": "huge", "prompt": "hi", "max_tokens": 1000}, *prompts(2, max_tokens=1)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    args = ["run", str(path), "--api-base", sim.url, "-m", "openai:gpt-4o-mini", "--tpm", "600"]
    result = run_cli(args, env=env)
    assert result.exit_code == 1, result.stderr
    huge, *others = read_results(tmp_path / "p.results.jsonl")
    assert huge["error"]["message"] == (
        "the request needs about 1004 tokens, more than the tokens-per-minute limit of 600 (--tpm or llmbatch.toml), "
        "so it was not sent: lower max_tokens, split the prompt, or raise --tpm if that limit is wrong"
    )
    assert [r["status"] for r in others] == ["ok", "ok"]
    assert sim.stats()["requests_received"] == 2


# --- 429s: sporadic, clustered, or a used-up window ------------------------------------------------


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int | None, float, bool]]:
    """Each answer the run's governor is told of: (status, calls allowed in flight after it, whether
    the model is paused run-wide after it)."""
    seen: list[tuple[int | None, float, bool]] = []
    release = Governor.release

    async def spy(self: Governor, key: str, **how: Any) -> None:
        await release(self, key, **how)
        seen.append((how["status"], self.budget(key).limit, self.throttled()))

    monkeypatch.setattr(Governor, "release", spy)
    return seen


def test_sporadic_429s_are_retried_alone_and_never_throttle_the_run(tmp_path, simulator, env, answers):
    # A busy provider refuses 10 % of calls at random, with Retry-After and no rate-limit headers.
    busy = simulator(p429=0.1, retry_after_s=0.2, latency_s=0.05, seed=5)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(120))
    args = ["run", str(path), "--api-base", busy.url, "-m", "openai:gpt-4o-mini", "-c", "8", "--no-cache"]
    result = run_cli([*args, "--max-retries", "10"], env=env)
    assert result.exit_code == 0, result.stderr
    stats = busy.stats()
    assert stats["completions_served"] == 120 and stats["max_serves_per_request"] == 1
    assert stats["faults"]["429"] >= 5 and "rate-limited (429)" in result.stderr
    assert sum(status == 429 for status, _, _ in answers) == stats["faults"]["429"]
    # Never a run-wide pause, never fewer calls allowed in flight; the simulator saw all 8 at once.
    assert all(limit == 8 and not paused for _, limit, paused in answers), answers
    assert stats["max_in_flight"] == 8
    assert all(r["status"] == "ok" for r in read_results(tmp_path / "p.results.jsonl"))


def test_a_429_storm_backs_the_whole_run_off(tmp_path, simulator, env, answers):
    # Most calls refused (another client shares the key, and this provider sends no rate-limit
    # headers): the 429s cluster, and the run backs off as a whole. Every line still ends ok.
    crowded = simulator(p429=0.7, retry_after_s=0.05, seed=3)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(40))
    args = ["run", str(path), "--api-base", crowded.url, "-m", "openai:gpt-4o-mini", "-c", "8", "--no-cache"]
    result = run_cli([*args, "--max-retries", "60"], env=env)
    assert result.exit_code == 0, result.stderr
    stats = crowded.stats()
    assert stats["completions_served"] == 40 and stats["max_serves_per_request"] == 1
    assert any(paused for _, _, paused in answers)
    assert min(limit for _, limit, _ in answers) < 8


def test_429s_saying_the_window_is_used_up_pause_the_run(tmp_path, simulator, env, answers):
    # --rpm set ten times over what the provider allows: its refusals say no request remains.
    strict = simulator(rpm=600, limit_window_s=1.0, latency_s=0.2)  # 10 requests in any second
    path = write_jsonl(tmp_path / "p.jsonl", prompts(30))
    args = ["run", str(path), "--api-base", strict.url, "-m", "openai:gpt-4o-mini", "-c", "16", "--no-cache"]
    result = run_cli([*args, "--rpm", "6000", "--max-retries", "20"], env=env)
    assert result.exit_code == 0, result.stderr
    stats = strict.stats()
    assert stats["completions_served"] == 30 and stats["rate_limited"] > 0
    refused = [(limit, paused) for status, limit, paused in answers if status == 429]
    assert len(refused) == stats["rate_limited"]
    assert all(paused for _, paused in refused)  # every one of them: the window is used up
    assert min(limit for limit, _ in refused) < 16
