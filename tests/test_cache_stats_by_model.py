"""`llmbatch cache stats` per model: entries, hits, misses and dollars saved per provider:model."""

from __future__ import annotations

import json
import sqlite3

from tests.support import prompts, run_cli, write_jsonl


def test_stats_per_model_shows_the_hits_and_misses_of_two_runs_with_two_models(tmp_path, sim, llmbatch, env):
    first = write_jsonl(tmp_path / "first.jsonl", prompts(3) + prompts(2, start=10, model="openai:gpt-4o"))
    assert llmbatch("run", str(first)).exit_code == 0  # 5 misses: 3 of mini, 2 of 4o
    second = write_jsonl(tmp_path / "second.jsonl", prompts(4) + prompts(1, start=10, model="openai:gpt-4o"))
    assert llmbatch("run", str(second)).exit_code == 0  # mini: 3 hits, 1 miss; 4o: 1 hit

    stats = json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)
    mini, big = stats["models"]["openai:gpt-4o-mini"], stats["models"]["openai:gpt-4o"]
    assert (mini["entries"], mini["hits"], mini["misses"], mini["hit_rate"]) == (4, 3, 4, round(3 / 7, 4))
    assert (big["entries"], big["hits"], big["misses"], big["hit_rate"]) == (2, 1, 2, round(1 / 3, 4))
    assert mini["saved_usd"] > 0 and big["saved_usd"] > mini["saved_usd"] / 3  # 4o costs more a line
    # The totals are still there, and are the sums.
    assert (stats["hits"], stats["misses"]) == (4, 6)
    assert abs(stats["saved_usd"] - (mini["saved_usd"] + big["saved_usd"])) < 1e-12

    text = run_cli(["cache", "stats"], env=env).stdout
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip().startswith("openai:")}
    assert rows["openai:gpt-4o-mini"][:4] == ["4", "3", "4", "43%"]
    assert rows["openai:gpt-4o"][:4] == ["2", "1", "2", "33%"]


def test_a_cache_from_before_per_model_counts_shows_zeros_per_model_and_its_earlier_totals(
    tmp_path, sim, llmbatch, env, cache_dir
):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    assert llmbatch("run", str(path)).exit_code == 0
    assert llmbatch("run", str(path)).exit_code == 0
    db = sqlite3.connect(cache_dir / "cache.db")
    with db:
        db.execute("DROP TABLE llmbatch_lookups")  # as a cache made before the table
    db.close()

    stats = json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)
    assert (stats["hits"], stats["misses"]) == (2, 2)
    model = stats["models"]["openai:gpt-4o-mini"]
    assert (model["entries"], model["hits"], model["misses"], model["hit_rate"]) == (2, 0, 0, None)
    assert "(counted before per model)" in run_cli(["cache", "stats"], env=env).stdout

    assert llmbatch("run", str(path)).exit_code == 0  # the table comes back with the next run's counts
    model = json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["models"]["openai:gpt-4o-mini"]
    assert (model["hits"], model["misses"]) == (2, 0)
