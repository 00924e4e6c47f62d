"""Pacing end to end: against a simulator that enforces its limits over a short window, llmbatch
must finish every prompt without one 429 caused by its own pace — with --rpm/--tpm given, and with
nothing given (learning the limits from the response headers)."""

from __future__ import annotations

import pytest

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


def test_a_429_storm_from_elsewhere_backs_the_whole_run_off(tmp_path, simulator, env):
    # Another client shares the key: 30 % of calls are refused with Retry-After. Every line still
    # ends ok, and the run backs off as a whole instead of retrying each line at full speed.
    crowded = simulator(p429=0.3, retry_after_s=0.2, seed=3)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(60))
    args = ["run", str(path), "--api-base", crowded.url, "-m", "openai:gpt-4o-mini", "-c", "16", "--max-retries", "20"]
    result = run_cli(args, env=env)
    assert result.exit_code == 0, result.stderr
    stats = crowded.stats()
    assert stats["completions_served"] == 60 and stats["max_serves_per_request"] == 1
    assert stats["faults"]["429"] < 60  # not a storm: far fewer refusals than lines
    assert "rate-limited (429)" in result.stderr
