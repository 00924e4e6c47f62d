"""`--cache redis://…` from the command line, against a real redis-server and the simulator:
one cache for many runs and machines, the same entries as the disk cache, and a server that is
not there is one clear error before anything is sent."""

from __future__ import annotations

import json

from tests.support import prompts, read_results, run_cli, write_jsonl
from tests.test_resilience import all_succeed, assert_complete, assert_one_clear_error, run_args, spawn


def test_a_rerun_through_redis_pays_nothing_and_stats_and_purge_read_the_server(tmp_path, sim, env, redis_server):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(6))
    first = run_cli(run_args(path, sim, "--cache", redis_server.url, "-o", str(tmp_path / "a.jsonl")), env=env)
    assert first.exit_code == 0, first.stderr
    again = run_cli(run_args(path, sim, "--cache", redis_server.url, "-o", str(tmp_path / "b.jsonl")), env=env)
    assert again.exit_code == 0
    assert sim.stats()["requests_received"] == 6
    assert all(row["cached"] for row in read_results(tmp_path / "b.jsonl"))
    stats = json.loads(run_cli(["cache", "stats", "--json", "--cache", redis_server.url], env=env).stdout)
    assert stats["entries"] == 6 and (stats["hits"], stats["misses"]) == (6, 6)
    assert stats["maxmemory_policy"] == "noeviction"
    # The disk cache of this machine holds no answer: they are on the server.
    local = json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)
    assert local["entries"] == 0
    purged = run_cli(["cache", "purge", "--model", "openai:gpt-4o-mini", "--cache", redis_server.url], env=env)
    assert purged.stdout.strip() == "removed 6 entries of openai:gpt-4o-mini"


def test_the_cache_url_can_come_from_the_environment_with_a_namespace(tmp_path, sim, env, redis_server):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    team = {**env, "LLMBATCH_CACHE_URL": redis_server.url, "LLMBATCH_CACHE_NAMESPACE": "team-a:"}
    assert run_cli(run_args(path, sim), env=team).exit_code == 0
    stats = json.loads(run_cli(["cache", "stats", "--json"], env=team).stdout)
    assert stats["entries"] == 2 and stats["namespace"] == "team-a:"
    other = json.loads(run_cli(["cache", "stats", "--json", "--cache-namespace", "team-b:"], env=team).stdout)
    assert other["entries"] == 0


def test_a_disk_cache_exported_and_imported_into_redis_answers_the_file_with_no_calls(tmp_path, sim, env, redis_server):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(5))
    assert run_cli(run_args(path, sim, "-o", str(tmp_path / "disk.jsonl")), env=env).exit_code == 0
    records = tmp_path / "answers.jsonl"
    assert run_cli(["cache", "export", "-o", str(records)], env=env).exit_code == 0
    done = run_cli(["cache", "import", str(records), "--cache", redis_server.url], env=env)
    assert done.exit_code == 0 and "5 new" in done.stdout
    rerun = run_cli(run_args(path, sim, "--cache", redis_server.url, "-o", str(tmp_path / "redis.jsonl")), env=env)
    assert rerun.exit_code == 0
    assert sim.stats()["requests_received"] == 5  # the first run's only
    disk, shared = read_results(tmp_path / "disk.jsonl"), read_results(tmp_path / "redis.jsonl")
    assert [r["response"] for r in shared] == [r["response"] for r in disk]
    # And back: Redis to an empty disk cache.
    back = tmp_path / "back.jsonl"
    assert run_cli(["cache", "export", "-o", str(back), "--cache", redis_server.url], env=env).exit_code == 0
    empty = {**env, "LLMBATCH_CACHE_DIR": str(tmp_path / "empty")}
    assert "5 new" in run_cli(["cache", "import", str(back)], env=empty).stdout


def test_two_runs_sharing_a_redis_cache_pay_once_for_each_prompt(tmp_path, env, simulator, redis_server):
    sim = simulator(latency_s=0.02)
    n = 200
    path = write_jsonl(tmp_path / "shared.jsonl", prompts(n))
    outputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    # Two machines: each its own local directory, one server between them.
    envs = [{**env, "LLMBATCH_CACHE_DIR": str(tmp_path / f"machine-{i}")} for i in range(2)]
    processes = [
        spawn(run_args(path, sim, "-c", "16", "--cache", redis_server.url, "-o", str(out)), machine, tmp_path)
        for out, machine in zip(outputs, envs, strict=True)
    ]
    all_succeed(processes, timeout=120)
    a, b = (assert_complete(out, n) for out in outputs)
    assert [row["content"] for row in a] == [row["content"] for row in b]
    assert sim.stats()["requests_received"] == n  # each prompt paid once between the two
    assert sum(not row["cached"] for row in a + b) == n


def test_an_unreachable_server_is_one_error_before_anything_is_sent_and_hides_the_password(tmp_path, sim, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    out = tmp_path / "out.jsonl"
    done = run_cli(run_args(path, sim, "--cache", "redis://:hunter2-pw@127.0.0.1:1/0", "-o", str(out)), env=env)
    assert done.exit_code == 2
    assert_one_clear_error(done.stderr, "cannot reach the cache at redis://:***@127.0.0.1:1/0")
    assert "hunter2-pw" not in done.stderr + done.stdout
    assert sim.stats()["requests_received"] == 0
    assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()
    bad = run_cli(["cache", "stats", "--cache", "http://cache.internal"], env=env)
    assert bad.exit_code == 2 and "use a redis://, rediss:// or unix:// URL" in bad.stderr
    # redis-py would read /abc as no database at all and use db 0: someone else's answers.
    no_db = run_cli(["cache", "stats", "--cache", "redis://127.0.0.1:1/abc"], env=env)
    assert no_db.exit_code == 2
    assert_one_clear_error(no_db.stderr, "the path must be a database number")


def test_a_server_lost_mid_run_stops_the_run_and_nothing_paid_is_lost_or_paid_twice(
    tmp_path, env, simulator, redis_server
):
    import time

    sim = simulator(latency_s=0.05)
    n = 120
    path = write_jsonl(tmp_path / "p.jsonl", prompts(n))
    out = tmp_path / "out.jsonl"
    args = run_args(path, sim, "-c", "4", "--cache", redis_server.url, "-o", str(out))
    process = spawn(args, env, tmp_path)
    deadline = time.monotonic() + 30
    while sim.stats()["completions_served"] < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    redis_server.stop()  # the server goes away, and comes back empty (no persistence)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert_one_clear_error(stderr, "the cache at", "stopping so that no more answers are paid for and lost")
    assert "or in the .partial file" in stderr
    kept = len(read_results(tmp_path / "out.jsonl.partial"))
    paid = sim.stats()["completions_served"]
    assert 12 <= kept <= paid < n

    redis_server.start()
    again = spawn(args, env, tmp_path)
    _, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    assert f"{kept} answers an earlier run paid for were taken back into the cache" in stderr
    assert_complete(out, n)
    assert sim.stats()["completions_served"] == n + (paid - kept)  # only what was in flight, if anything
    assert paid - kept <= 4
