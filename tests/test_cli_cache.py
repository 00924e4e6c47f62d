"""`llmbatch cache stats` and `llmbatch cache purge`, end to end."""

from __future__ import annotations

import json
import time

from tests.support import prompts, run_cli, write_jsonl


def test_stats_on_a_cache_that_does_not_exist_yet(env):
    result = run_cli(["cache", "stats", "--json"], env=env)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["entries"] == 0
    assert "no cache yet" in run_cli(["cache", "stats"], env=env).stdout


def test_stats_report_entries_size_models_and_lifetime_lookups(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(4) + prompts(2, start=10, model="openai:gpt-4o"))
    assert llmbatch("run", str(path)).exit_code == 0
    assert llmbatch("run", str(path)).exit_code == 0
    stats = json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)
    assert stats["entries"] == 6
    assert stats["size_bytes"] > 0 and stats["size_limit"] == 20 * 10**9
    assert stats["by_model"] == {"openai:gpt-4o-mini": 4, "openai:gpt-4o": 2}
    assert (stats["hits"], stats["misses"]) == (6, 6)
    assert stats["oldest"] <= stats["newest"]
    text = run_cli(["cache", "stats"], env=env).stdout
    assert "openai:gpt-4o-mini" in text and "entries" in text


def test_purge_removes_entries_older_than_the_duration(tmp_path, sim, llmbatch, env):
    old = write_jsonl(tmp_path / "old.jsonl", prompts(3))
    assert llmbatch("run", str(old)).exit_code == 0
    time.sleep(1.1)
    new = write_jsonl(tmp_path / "new.jsonl", prompts(2, start=100))
    assert llmbatch("run", str(new)).exit_code == 0

    dry = run_cli(["cache", "purge", "--older-than", "1s", "--dry-run"], env=env)
    assert dry.exit_code == 0 and dry.stdout.strip() == "would remove 3 entries older than 1s"
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["entries"] == 5

    done = run_cli(["cache", "purge", "--older-than", "1s"], env=env)
    assert done.stdout.strip() == "removed 3 entries older than 1s"
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["entries"] == 2
    # The purged prompts are paid again, the kept ones are not.
    assert llmbatch("run", str(old)).exit_code == 0 and llmbatch("run", str(new)).exit_code == 0
    assert sim.stats()["requests_received"] == 8


def test_purge_can_be_limited_to_one_model(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2) + prompts(3, start=10, model="openai:gpt-4o"))
    assert llmbatch("run", str(path)).exit_code == 0
    result = run_cli(["cache", "purge", "--older-than", "90s", "--model", "openai:gpt-4o"], env=env)
    assert result.stdout.strip() == "removed 0 entries of openai:gpt-4o older than 90s"
    time.sleep(0.05)
    # Every unit the issue names parses; a tiny duration removes just that model's entries.
    for text in ("90s", "45m", "12h", "30d", "2w"):
        assert run_cli(["cache", "purge", "--older-than", text, "--dry-run"], env=env).exit_code == 0
    assert run_cli(["cache", "purge", "--older-than", "0.01s", "--model", "openai:gpt-4o"], env=env).stdout.startswith(
        "removed 3 entries"
    )
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["by_model"] == {"openai:gpt-4o-mini": 2}


def test_purge_with_a_bad_duration_is_a_usage_error(env):
    result = run_cli(["cache", "purge", "--older-than", "soon"], env=env)
    assert result.exit_code == 2
    assert "--older-than: invalid duration 'soon'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cache_dir_option_wins_over_the_environment(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    other = tmp_path / "elsewhere"
    assert llmbatch("run", str(path), "--cache-dir", str(other)).exit_code == 0
    assert (other / "cache.db").exists()
    assert json.loads(run_cli(["cache", "stats", "--json", "--cache-dir", str(other)], env=env).stdout)["entries"] == 1


def test_purge_by_model_alone_removes_every_entry_of_that_model(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2) + prompts(3, start=10, model="openai:gpt-4o"))
    assert llmbatch("run", str(path)).exit_code == 0
    dry = run_cli(["cache", "purge", "--model", "openai:gpt-4o", "--dry-run"], env=env)
    assert (dry.exit_code, dry.stdout) == (0, "would remove 3 entries of openai:gpt-4o\n")
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["entries"] == 5
    done = run_cli(["cache", "purge", "--model", "openai:gpt-4o"], env=env)
    assert (done.exit_code, done.stdout) == (0, "removed 3 entries of openai:gpt-4o\n")
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["by_model"] == {"openai:gpt-4o-mini": 2}


def test_purge_with_neither_an_age_nor_a_model_is_a_usage_error_that_points_to_clear(tmp_path, sim, llmbatch, env):
    assert llmbatch("run", str(write_jsonl(tmp_path / "p.jsonl", prompts(2)))).exit_code == 0
    result = run_cli(["cache", "purge"], env=env)
    assert result.exit_code == 2
    assert result.stderr == (
        "llmbatch: error: cache purge needs --older-than DURATION, --model provider:model, or both; "
        "to remove every entry, use llmbatch cache clear\n"
    )
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["entries"] == 2


def test_clear_with_yes_removes_every_entry_keeps_the_settings_and_the_next_run_pays_again(
    tmp_path, sim, llmbatch, env, cache_dir
):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(4) + prompts(1, start=10, model="openai:gpt-4o"))
    assert llmbatch("run", str(path), "--cache-size-limit", "5GB").exit_code == 0
    result = run_cli(["cache", "clear", "--yes"], env=env)
    assert (result.exit_code, result.stdout) == (0, f"removed 5 entries from the cache at {cache_dir}\n")
    stats = json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)
    assert (stats["entries"], stats["size_limit"]) == (0, 5 * 10**9)
    assert run_cli(["cache", "clear", "-y"], env=env).stdout == f"removed 0 entries from the cache at {cache_dir}\n"
    assert llmbatch("run", str(path)).exit_code == 0
    assert sim.stats()["requests_received"] == 10


def test_clear_off_a_terminal_without_yes_refuses_and_removes_nothing(tmp_path, sim, llmbatch, env, cache_dir):
    assert llmbatch("run", str(write_jsonl(tmp_path / "p.jsonl", prompts(2)))).exit_code == 0
    result = run_cli(["cache", "clear"], env=env, stdin="y\n")  # piped, not a person: not an answer
    assert result.exit_code == 2
    assert result.stderr == (
        f"llmbatch: error: cache clear removes every entry in {cache_dir}: add --yes to do it without a question\n"
    )
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["entries"] == 2


def test_clear_on_a_terminal_asks_first(tmp_path, sim, llmbatch, env, cache_dir, monkeypatch):
    assert llmbatch("run", str(write_jsonl(tmp_path / "p.jsonl", prompts(2)))).exit_code == 0
    monkeypatch.setattr("llmbatch.cli._stdin_is_terminal", lambda: True)
    declined = run_cli(["cache", "clear"], env=env, stdin="n\n")
    assert declined.exit_code == 1
    assert f"Remove all 2 entries from the cache at {cache_dir}? [y/N]" in declined.stderr
    assert "nothing was removed" in declined.stderr and "removed 2" not in declined.stdout
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["entries"] == 2
    walked_away = run_cli(["cache", "clear"], env=env, stdin="")  # end of input, as Ctrl-C at the question
    assert walked_away.exit_code == 1 and "Aborted" not in walked_away.stderr
    assert walked_away.stderr.endswith("\nnothing was removed\n")
    accepted = run_cli(["cache", "clear", "--cache-dir", str(cache_dir)], env=env, stdin="y\n")
    assert accepted.exit_code == 0 and f"removed 2 entries from the cache at {cache_dir}\n" in accepted.stdout


def test_clear_with_no_cache_there_says_so(tmp_path, env):
    result = run_cli(["cache", "clear", "--cache-dir", str(tmp_path / "none")], env=env)
    assert (result.exit_code, result.stdout) == (0, f"no cache at {tmp_path / 'none'}: nothing to clear\n")
    assert not (tmp_path / "none").exists()


def test_a_cache_directory_removed_mid_run_keeps_the_answers_from_then_on(tmp_path, simulator, env, cache_dir):
    import shutil
    import threading

    from tests.support import read_results

    slow = simulator(latency_s=0.05)
    total = 40
    path = write_jsonl(tmp_path / "p.jsonl", prompts(total))
    args = ["run", str(path), "--api-base", slow.url, "--model", "openai:gpt-4o-mini", "-c", "2", "--workers", "0"]
    removed = threading.Event()

    def remove_mid_run() -> None:
        deadline = time.monotonic() + 60
        while slow.stats()["completions_served"] < 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        while cache_dir.exists():  # the run may create a file in it while it is being removed: again
            shutil.rmtree(cache_dir, ignore_errors=True)
        removed.set()

    remover = threading.Thread(target=remove_mid_run)
    remover.start()
    first = run_cli(args, env=env)
    remover.join()
    assert removed.is_set() and first.exit_code == 0, first.stderr
    assert f"the cache directory {cache_dir} was removed during the run" in " ".join(first.stderr.split())
    assert all(r["status"] == "ok" for r in read_results(path.with_suffix(".results.jsonl")))
    assert slow.stats()["requests_received"] == total
    kept = json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["entries"]
    assert 0 < kept < total  # what came after the removal is in a new cache there

    assert run_cli(args, env=env).exit_code == 0
    paid_again = slow.stats()["requests_received"] - total
    assert paid_again == total - kept  # only what was answered before the removal
    assert paid_again < total - 20  # most of the run was answered after it


def test_purge_by_model_wants_provider_and_model_and_points_at_simulated_answers(tmp_path, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    assert run_cli(["run", str(path), "--simulate", "-q"], env=env).exit_code == 0
    bare = run_cli(["cache", "purge", "--model", "gpt-4o-mini"], env=env)
    assert bare.exit_code == 2 and "name it as provider:model" in bare.stderr
    real = run_cli(["cache", "purge", "--model", "openai:gpt-4o-mini"], env=env)
    assert real.exit_code == 0 and real.stdout.startswith("removed 0 entries of openai:gpt-4o-mini")
    assert "note: this cache also holds simulated/openai:gpt-4o-mini" in real.stdout
