"""Money: each call priced from genai-prices, spent and saved shown, a plan before spending, and a
budget that stops the run. The simulator answers for a real model name, so prices are real."""

from __future__ import annotations

import json

import pytest
from genai_prices import Usage, calc_price

from llmbatch.pricing import format_usd
from tests.support import prompts, read_results, run_cli, write_jsonl


def genai_price(usage: dict) -> float:
    figure = calc_price(
        Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]),
        model_ref="gpt-4o-mini",
        provider_id="openai",
    )
    return float(figure.total_price)


def test_each_line_costs_what_genai_prices_says_and_a_hit_what_it_cost_when_paid(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(5, max_tokens=30))
    first = llmbatch("run", str(path))
    assert first.exit_code == 0, first.stderr
    paid = read_results(tmp_path / "p.results.jsonl")
    for row in paid:
        assert row["cost_usd"] == genai_price(row["usage"]) and row["cost_usd"] > 0
    spent = sum(row["cost_usd"] for row in paid)
    assert format_usd(spent) in first.stderr  # "spent this run"

    again = llmbatch("run", str(path))
    hits = read_results(tmp_path / "p.results.jsonl")
    assert [r["cost_usd"] for r in hits] == [r["cost_usd"] for r in paid]
    summary = again.stderr.split("spent this run")[1]
    assert summary.splitlines()[0].strip() == "$0"
    assert format_usd(spent) in summary.split("saved by the cache")[1].splitlines()[0]


def test_cache_stats_show_lifetime_savings_and_the_value_stored(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(4))
    llmbatch("run", str(path))
    llmbatch("run", str(path))
    llmbatch("run", str(path))
    spent = sum(r["cost_usd"] for r in read_results(tmp_path / "p.results.jsonl"))
    stats = json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)
    assert abs(stats["stored_value_usd"] - spent) < 1e-9
    assert abs(stats["saved_usd"] - 2 * spent) < 1e-9


def test_a_model_without_a_known_price_costs_null_never_zero(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2, model="openai:my-finetune-x"))
    result = llmbatch("run", str(path))
    assert result.exit_code == 0
    assert [r["cost_usd"] for r in read_results(tmp_path / "p.results.jsonl")] == [None, None]
    note = (
        "note: no price known for openai:my-finetune-x; cost shown as unknown; set prices in llmbatch.toml: "
        '[models."openai:my-finetune-x"] input_per_million = ..., output_per_million = ... (USD)'
    )
    assert result.stderr.count("no price known") == 1  # once for the run, not once a call
    assert note in result.stderr


PRICED = """
[models."openai:my-finetune-x"]
input_per_million = 2.5
output_per_million = 10

[models."openai:gpt-4o-mini"]
input_per_million = 1000
output_per_million = 1000
"""


def test_prices_in_llmbatch_toml_price_a_model_genai_prices_does_not_know(tmp_path, sim, llmbatch):
    config = tmp_path / "llmbatch.toml"
    config.write_text(PRICED)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3, model="openai:my-finetune-x", max_tokens=20))
    paid = llmbatch("run", str(path), "--config", str(config), "--max-cost", "1")
    assert paid.exit_code == 0, paid.stderr  # a budget can be kept: the model has a price
    rows = read_results(tmp_path / "p.results.jsonl")
    for row in rows:
        usage = row["usage"]
        expected = (usage["prompt_tokens"] * 2.5 + usage["completion_tokens"] * 10) / 1e6
        assert row["cost_usd"] == pytest.approx(expected) and row["cost_usd"] > 0
    assert "no price known" not in paid.stderr
    assert format_usd(sum(r["cost_usd"] for r in rows)) in paid.stderr.split("spent this run")[1].splitlines()[0]

    plan = json.loads(llmbatch("run", str(path), "--config", str(config), "--dry-run", "--json").stdout)
    assert plan["unpriced_models"] == [] and plan["hits"] == 3 and plan["estimated_cost_usd"] == 0
    fresh = write_jsonl(tmp_path / "fresh.jsonl", prompts(2, start=10, model="openai:my-finetune-x", max_tokens=20))
    plan = json.loads(llmbatch("run", str(fresh), "--config", str(config), "--dry-run", "--json").stdout)
    estimate = (plan["estimated_input_tokens"] * 2.5 + 40 * 10) / 1e6
    assert plan["estimated_cost_usd"] == pytest.approx(estimate)


def test_genai_prices_wins_over_a_price_in_llmbatch_toml(tmp_path, sim, llmbatch):
    config = tmp_path / "llmbatch.toml"
    config.write_text(PRICED)  # gpt-4o-mini at $1,000 a million tokens: ignored, genai-prices knows it
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2, max_tokens=20))
    assert llmbatch("run", str(path), "--config", str(config)).exit_code == 0
    for row in read_results(tmp_path / "p.results.jsonl"):
        assert row["cost_usd"] == genai_price(row["usage"])


def test_a_dry_run_calls_nobody_and_predicts_hits_duplicates_and_calls_exactly(tmp_path, sim, llmbatch):
    half = write_jsonl(tmp_path / "half.jsonl", prompts(6, max_tokens=10))
    assert llmbatch("run", str(half)).exit_code == 0
    served = sim.stats()["requests_received"]
    rows = [*prompts(10, max_tokens=10), {"id": "again", "prompt": "question number 8", "max_tokens": 10}]
    full = write_jsonl(tmp_path / "full.jsonl", rows)
    result = llmbatch("run", str(full), "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert sim.stats()["requests_received"] == served  # nothing was sent
    plan = json.loads(result.stdout)
    assert (plan["prompts"], plan["hits"], plan["duplicates"], plan["calls"]) == (11, 6, 1, 4)
    assert plan["estimated_output_tokens"] == 4 * 10  # max_tokens of the four calls
    assert plan["estimated_input_tokens"] > 0
    expected = float(
        calc_price(
            Usage(input_tokens=plan["estimated_input_tokens"], output_tokens=40),
            model_ref="gpt-4o-mini",
            provider_id="openai",
        ).total_price
    )
    assert abs(plan["estimated_cost_usd"] - expected) < 1e-12
    assert not (tmp_path / "full.results.jsonl").exists()

    run = llmbatch("run", str(full))
    rows_out = read_results(tmp_path / "full.results.jsonl")
    assert sum(not r["cached"] for r in rows_out) == plan["calls"]
    assert run.exit_code == 0


def test_a_dry_run_without_max_tokens_estimates_output_from_cached_answers(tmp_path, sim, llmbatch):
    cached = write_jsonl(tmp_path / "cached.jsonl", prompts(4))
    llmbatch("run", str(cached))
    average = sum(r["usage"]["completion_tokens"] for r in read_results(tmp_path / "cached.results.jsonl")) / 4
    new = write_jsonl(tmp_path / "new.jsonl", prompts(3, start=50))
    plan = json.loads(llmbatch("run", str(new), "--dry-run", "--json").stdout)
    assert plan["calls"] == 3 and plan["hits"] == 0
    # No hits in this file: the average of the model's cached answers in the whole file is unknown,
    # so the planner falls back to the default; with hits it uses their average.
    mixed = write_jsonl(tmp_path / "mixed.jsonl", prompts(4) + prompts(3, start=50))
    plan = json.loads(llmbatch("run", str(mixed), "--dry-run", "--json").stdout)
    assert plan["hits"] == 4 and plan["estimated_output_tokens"] == int(3 * average)


def test_the_budget_stops_the_run_within_one_concurrency_window_and_the_rerun_finishes(tmp_path, simulator, env):
    slow = simulator(latency_s=0.02)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(60, max_tokens=40))
    base = ["run", str(path), "--api-base", slow.url, "-m", "openai:gpt-4o-mini", "-c", "4"]
    one = genai_price({"prompt_tokens": 3, "completion_tokens": 12})  # about one call's price
    budget = 20 * one
    stopped = run_cli([*base, "--max-cost", f"{budget:.10f}"], env=env)
    assert stopped.exit_code == 3, stopped.stderr
    assert "budget" in stopped.stderr and "run the same command again" in stopped.stderr
    assert not (tmp_path / "p.results.jsonl").exists()
    paid = slow.stats()["completions_served"]
    partial = [json.loads(line) for line in (tmp_path / "p.results.jsonl.partial").read_text().splitlines()]
    spent = sum(r["cost_usd"] for r in partial)
    assert spent <= budget  # never past the budget
    assert paid >= 5  # stopped near the budget (calls are estimated at their max_tokens), not at once
    assert len(partial) <= paid

    finished = run_cli(base, env=env)
    assert finished.exit_code == 0
    rows = read_results(tmp_path / "p.results.jsonl")
    assert len(rows) == 60 and all(r["status"] == "ok" for r in rows)
    assert slow.stats()["completions_served"] == 60  # the rerun paid only for the rest


def test_a_budget_on_a_model_without_a_price_is_refused_before_anything_is_sent(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2, model="openai:my-finetune-x"))
    result = llmbatch("run", str(path), "--max-cost", "1")
    assert result.exit_code == 2
    assert "no price is known for openai:my-finetune-x" in result.stderr
    assert sim.stats()["requests_received"] == 0


def test_a_budget_that_allows_about_100_calls_makes_at_least_90_never_overspends_and_says_what_it_spent(
    tmp_path, simulator, env
):
    # Without max_tokens the output is estimated from this run's own answers once some have come
    # back (not 256 tokens a call), and near the budget fewer calls run at once instead of the run
    # stopping: it stops only when the next call cannot fit even with nothing else in flight.
    slow = simulator(latency_s=0.01)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(300))
    base = ["run", str(path), "--api-base", slow.url, "-m", "openai:gpt-4o-mini", "-c", "16"]
    one = genai_price({"prompt_tokens": 3, "completion_tokens": 7})  # every call here costs exactly this
    budget = 100.5 * one
    stopped = run_cli([*base, "--max-cost", f"{budget:.12f}"], env=env)
    assert stopped.exit_code == 3, stopped.stderr
    partial = read_results(tmp_path / "p.results.jsonl.partial")
    costs = [r["cost_usd"] for r in partial]
    assert all(c == one for c in costs)
    paid = slow.stats()["completions_served"]
    spent = paid * one
    assert 90 <= paid <= 100, paid  # at least 90 of the ~100 the budget allows, never past it
    assert spent <= budget
    said = " ".join(stopped.stderr.split())
    assert f"spent this run {format_usd(spent)}" in said  # exactly what was spent, in plain digits
    assert f"the budget of {format_usd(budget)} is reached ({format_usd(spent)} spent" in said
    assert "e-0" not in said and "$0.0000 " not in said


def test_a_tiny_budget_is_printed_in_plain_digits(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(50))
    result = llmbatch("run", str(path), "--max-cost", "0.00005")
    assert result.exit_code == 3, result.stderr
    said = " ".join(result.stderr.split())
    assert "the budget of $0.00005 is" in said and "5e-05" not in said
