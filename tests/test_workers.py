"""Calls made by worker processes (``--workers N``): the same promises as a run in one process.

Each test drives the real CLI against the simulator over 127.0.0.1; the workers are real child
processes, forked by ``python -m llmbatch.providers.workers --fork ...`` and adopted by the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmbatch.app.runconfig import cpu_quota
from llmbatch.providers.workers import auto_workers
from tests.support import TEST_API_KEY, prompts, read_results, run_cli, write_jsonl
from tests.test_resilience import assert_complete, assert_one_clear_error, cache_entries, run_args, spawn, wait_for


def worker_pids(parent: int) -> list[int]:
    """The ``llmbatch.providers.workers`` processes among ``parent``'s children."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"llmbatch.providers.workers" in cmdline:
                found.append(int(pid))
    return found


def spawn_in_own_group(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return spawn(args, env, cwd, own_group=True)


def test_auto_uses_workers_only_for_long_runs_with_spare_cores_and_enough_calls_in_flight():
    assert auto_workers(16, 8, 100_000) == 0  # the default -c: one process keeps up
    assert auto_workers(100, 1, 100_000) == 0  # no second core to use
    assert auto_workers(100, 8, 500) == 0  # over before the workers have started
    assert auto_workers(64, 2, 5000) == 2
    assert auto_workers(100, 2, 5000) == 2
    assert auto_workers(400, 4, 5000) == 4
    assert auto_workers(1000, 64, 5000) == 8  # past a few, the parent is the limit


def test_workers_answer_every_line_in_order_paying_once_and_a_rerun_is_free(tmp_path, env, simulator):
    sim = simulator(latency_s=0.02)
    n = 300
    path = write_jsonl(tmp_path / "p.jsonl", prompts(n))

    done = run_cli(run_args(path, sim, "-c", "32", "--workers", "2", "-q"), env=env)

    assert done.exit_code == 0, done.stderr
    assert "stopped unexpectedly" not in done.stderr  # the workers' ordinary exit at the end is not a loss
    rows = assert_complete(tmp_path / "p.results.jsonl", n)
    assert all(
        f"question number {i}" in row["response"]["choices"][0]["message"]["content"] for i, row in enumerate(rows)
    )
    stats = sim.stats()
    assert stats["completions_served"] == n and stats["max_serves_per_request"] == 1
    assert cache_entries(env) == n

    sim.reset_stats()
    again = run_cli(run_args(path, sim, "-c", "32", "--workers", "2", "-q"), env=env)
    assert again.exit_code == 0, again.stderr
    assert all(row["cached"] for row in read_results(tmp_path / "p.results.jsonl"))
    assert sim.stats()["requests_received"] == 0


def test_workers_go_through_429s_5xx_and_hangs_paying_for_each_line_once(tmp_path, env, simulator):
    sim = simulator(p429=0.1, retry_after_s=0.1, p500=0.025, p503=0.025, phang=0.02, pdrop=0.01, seed=11)
    path = write_jsonl(tmp_path / "faults.jsonl", prompts(200))

    args = run_args(path, sim, "--timeout", "1", "--max-retries", "10", "-c", "16", "--workers", "2", "-q")
    done = run_cli(args, env=env)

    assert done.exit_code == 0, done.stderr
    rows = assert_complete(tmp_path / "faults.results.jsonl", 200)
    stats = sim.stats()
    assert stats["faults"]["429"] and stats["faults"]["hang"], stats
    assert stats["completions_served"] == 200 and stats["max_serves_per_request"] == 1
    assert sum(row["attempts"] for row in rows) == stats["requests_received"]
    assert done.stderr.count("Traceback") == 0


def test_workers_report_the_rate_limit_headers_so_a_strict_limit_is_kept(tmp_path, env, simulator):
    # The limit is learned from the simulator's x-ratelimit-* headers, which only the workers see.
    sim = simulator(rpm=1200, limit_window_s=1.0)  # 20 requests in any second
    path = write_jsonl(tmp_path / "paced.jsonl", prompts(60))

    done = run_cli(run_args(path, sim, "-c", "16", "--workers", "2", "--no-cache", "-q"), env=env)

    assert done.exit_code == 0, done.stderr
    assert_complete(tmp_path / "paced.results.jsonl", 60)
    # Paced in the parent, sent by a child: on a busy 2-core machine the hop through a pipe can
    # bunch two calls that left the pacer 50 ms apart, and a window as short as 1 s (real ones
    # are a minute) may then see one too many. Unpaced, 16 calls in flight at 0 ms latency would
    # send all 60 within the first second: 40 refusals.
    assert sim.stats()["rate_limited"] <= 2
    assert sim.stats()["completions_served"] == 60


def test_with_workers_an_invalid_api_key_stops_the_run_with_one_message(tmp_path, env, simulator):
    sim = simulator(require_api_key="sk-the-right-key-0000000000")
    path = write_jsonl(tmp_path / "p.jsonl", prompts(30))

    done = run_cli(run_args(path, sim, "-c", "8", "--workers", "2", "-q"), env=env)

    assert done.exit_code == 1
    assert_one_clear_error(done.stderr, "Incorrect API key")
    assert TEST_API_KEY not in done.stderr
    assert sim.stats()["requests_received"] <= 8


def test_with_workers_a_missing_api_key_stops_the_run_before_anything_is_sent(tmp_path, env, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    path = write_jsonl(tmp_path / "p.jsonl", prompts(5))

    done = run_cli(
        ["run", str(path), "-m", "openai:gpt-4o-mini", "--workers", "2", "-q"], env={**env, "OPENAI_API_KEY": ""}
    )

    assert done.exit_code == 2  # found while preparing, before anything is shown or written
    assert_one_clear_error(done.stderr, "no API key for openai: set OPENAI_API_KEY")


def test_a_worker_killed_mid_run_leaves_its_calls_to_the_others_and_the_run_finishes(tmp_path, env, simulator):
    sim = simulator(latency_s=0.05)
    n = 400
    path = write_jsonl(tmp_path / "p.jsonl", prompts(n))
    process = spawn_in_own_group(run_args(path, sim, "-c", "8", "--workers", "2"), env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["completions_served"] >= 50, timeout=60, process=process, what="50 answers")
        os.kill(worker_pids(process.pid)[0], signal.SIGKILL)  # as the OOM killer would
        _, stderr = process.communicate(timeout=90)
    finally:
        process.kill()

    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "note: 1 worker process stopped unexpectedly during the run; the others made the calls it had" in (
        " ".join(stderr.split())
    )
    assert_complete(tmp_path / "p.results.jsonl", n)
    assert cache_entries(env) == n
    assert sim.stats()["completions_served"] - n <= 8  # paid twice: at most what the killed one had in hand


def test_when_every_worker_is_killed_the_run_stops_with_one_message_and_a_rerun_finishes(tmp_path, env, simulator):
    sim = simulator(latency_s=0.05)
    n = 400
    path = write_jsonl(tmp_path / "p.jsonl", prompts(n))
    args = run_args(path, sim, "-c", "8", "--workers", "2")
    process = spawn_in_own_group(args, env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["completions_served"] >= 50, timeout=60, process=process, what="50 answers")
        for victim in worker_pids(process.pid):
            os.kill(victim, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == 1, stderr
    assert_one_clear_error(stderr, "worker process")
    assert not (tmp_path / "p.results.jsonl").exists()
    stored = cache_entries(env)
    served = sim.stats()["completions_served"]
    assert served < n
    assert served - stored <= 8  # at most the calls that were in the killed workers' hands

    sim.reset_stats()
    again = run_cli(run_args(path, sim, "-c", "8", "--workers", "2", "-q"), env=env)
    assert again.exit_code == 0, again.stderr
    rows = assert_complete(tmp_path / "p.results.jsonl", n)
    assert sum(row["cached"] for row in rows) == stored
    assert sim.stats()["completions_served"] == n - stored


def test_ctrl_c_at_the_terminal_lets_the_workers_finish_their_calls_into_the_cache(tmp_path, env, simulator):
    sim = simulator(latency_s=1.0)
    rows = prompts(12)
    rows[0]["prompt"] += " [[sim:latency=0]]"  # the probe call answers at once
    path = write_jsonl(tmp_path / "slow.jsonl", rows)
    process = spawn_in_own_group(run_args(path, sim, "-c", "4", "--workers", "2", "--timeout", "10"), env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["in_flight"] >= 4, timeout=60, process=process, what="4 calls in flight")
        workers = worker_pids(process.pid)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal does: the whole group
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    stats = sim.stats()
    assert stats["completions_served"] == stats["requests_received"] == 5, "a call in flight was cut off"
    assert cache_entries(env) == 5
    assert len(workers) == 2
    time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived the run"


def test_ctrl_c_while_the_workers_start_up_stops_cleanly_without_error_lines(tmp_path, env, simulator):
    sim = simulator(latency_s=0.5)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(16))
    process = spawn_in_own_group(run_args(path, sim, "-c", "4", "--workers", "2", "--timeout", "10"), env, tmp_path)
    try:
        wait_for(lambda: bool(worker_pids(process.pid)), timeout=60, process=process, what="a worker process")
        os.killpg(process.pid, signal.SIGINT)  # while the workers are still importing
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "WorkerDied" not in stderr, stderr
    partial = tmp_path / "p.results.jsonl.partial"
    rows = read_results(partial) if partial.exists() else []
    assert all(row["status"] == "ok" for row in rows), rows


def test_a_worker_that_stops_answering_is_stopped_and_the_others_finish_the_run(tmp_path, env, simulator):
    sim = simulator(latency_s=0.1)
    n = 60
    path = write_jsonl(tmp_path / "p.jsonl", prompts(n))
    process = spawn_in_own_group(run_args(path, sim, "-c", "4", "--workers", "2", "--timeout", "1"), env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["completions_served"] >= 5, timeout=60, process=process, what="5 answers")
        stuck = worker_pids(process.pid)[0]
        os.kill(stuck, signal.SIGSTOP)  # alive, but silent: as a deadlocked child would be
        _, stderr = process.communicate(timeout=90)
    finally:
        process.kill()

    assert process.returncode == 0, stderr
    assert_complete(tmp_path / "p.results.jsonl", n)
    assert not Path(f"/proc/{stuck}").exists() or "Z" in Path(f"/proc/{stuck}/stat").read_text().split()[2]


def test_the_api_key_is_not_on_a_worker_command_line(tmp_path, env, simulator):
    sim = simulator(latency_s=1.0)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(6))
    process = spawn_in_own_group(
        [*run_args(path, sim, "-c", "4", "--workers", "2"), "--timeout", "10"],
        {**env, "OPENAI_API_KEY": TEST_API_KEY},
        tmp_path,
    )
    try:
        wait_for(lambda: sim.stats()["in_flight"] >= 1, timeout=60, process=process, what="a call in flight")
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in worker_pids(process.pid)]
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert cmdlines and all(TEST_API_KEY.encode() not in c for c in cmdlines)


def shared_anonymous_mb(pid: int) -> float:
    """Memory of ``pid`` that is not a file's and that other processes map too (copy-on-write after
    a fork): all its anonymous pages less its proportional share of them."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return (fields["Anonymous"] - fields["Pss_Anon"]) / 1024


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux 4.14+: smaps_rollup")
def test_the_workers_share_one_import_of_the_sdk_instead_of_each_importing_it(tmp_path, env, simulator):
    # Forked from one process that imported any-llm and the SDKs: each worker maps those modules'
    # pages instead of holding a copy of its own (~70 MB, and 1.5-2 s of CPU to import, each).
    sim = simulator(latency_s=1.0)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(12))
    process = spawn_in_own_group(run_args(path, sim, "-c", "4", "--workers", "2", "--timeout", "10"), env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["in_flight"] >= 2, timeout=60, process=process, what="calls in flight")
        workers = worker_pids(process.pid)
        shared = [shared_anonymous_mb(pid) for pid in workers]
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == 0, stderr
    assert len(workers) == 2
    assert all(mb >= 15 for mb in shared), shared  # each shares half of what the two map together
    assert_complete(tmp_path / "p.results.jsonl", 12)


def test_killing_the_run_outright_ends_its_workers_too(tmp_path, env, simulator):
    sim = simulator(latency_s=1.0)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(40))
    process = spawn_in_own_group(run_args(path, sim, "-c", "8", "--workers", "2", "--timeout", "10"), env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["in_flight"] >= 4, timeout=60, process=process, what="calls in flight")
        workers = worker_pids(process.pid)
        process.send_signal(signal.SIGKILL)  # no handler runs: the workers see their stdin close
        process.communicate(timeout=30)
    finally:
        process.kill()

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except OSError:
            return True

    assert len(workers) == 2
    wait_for(lambda: all(gone(pid) for pid in workers), timeout=30, what="the workers to exit")


@pytest.mark.parametrize("value", ["-1", "many", "65"])
def test_a_bad_workers_value_is_one_usage_error(tmp_path, env, sim, value):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    done = run_cli(["run", str(path), "--api-base", sim.url, "-m", "openai:gpt-4o-mini", "--workers", value], env=env)
    assert done.exit_code == 2
    assert "--workers" in done.stderr and "Traceback" not in done.stderr
    assert sim.stats()["requests_received"] == 0


def test_sigterm_to_the_whole_process_tree_keeps_the_calls_the_workers_have_in_flight(tmp_path, env, simulator):
    # systemd's stop (and `kill` on every pid of the run) signals the workers too: they leave the
    # stop to the parent, which lets their calls in flight finish and stores the answers.
    sim = simulator(latency_s=1.0)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(100))
    process = spawn_in_own_group(run_args(path, sim, "-c", "8", "--workers", "2"), env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["in_flight"] >= 6, timeout=60, process=process, what="calls in flight")
        for pid in [process.pid, *worker_pids(process.pid)]:
            os.kill(pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "stopped unexpectedly" not in stderr
    stats = sim.stats()
    assert stats["completions_served"] == stats["requests_received"], "calls in flight were dropped"
    assert cache_entries(env) == stats["completions_served"]


def test_a_run_that_exits_at_once_has_written_every_result_and_stored_every_paid_answer(tmp_path, env, simulator):
    # The command leaves with os._exit as soon as the run is finished, and kills idle workers
    # instead of waiting for them: nothing written to a pipe may be lost, nothing paid unstored,
    # and no worker may be left behind.
    sim = simulator(latency_s=0.01)
    n = 400
    path = write_jsonl(tmp_path / "p.jsonl", prompts(n))
    proc = spawn(run_args(path, sim, "-c", "32", "--workers", "2", "-q", "-o", "-"), env, tmp_path)
    workers: list[int] = []
    wait_for(lambda: bool(workers.extend(worker_pids(proc.pid)) or workers), timeout=60, process=proc, what="workers")
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopped unexpectedly" not in stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [row["id"] for row in rows] == [f"q{i}" for i in range(n)] and all(r["status"] == "ok" for r in rows)
    assert sim.stats()["completions_served"] == n
    assert cache_entries(env) == n
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=10, what="workers gone")


def test_on_one_cpu_auto_makes_every_call_in_this_process_and_says_why(tmp_path, env, simulator):
    # A run that would use workers on two cores (2,000 requests at -c 64), pinned to one CPU as a
    # container with one CPU is: workers would only share that CPU, so none start, and the run says so.
    from llmbatch.providers.workers import AUTO_MIN_REQUESTS

    sim = simulator()
    path = write_jsonl(tmp_path / "p.jsonl", prompts(AUTO_MIN_REQUESTS))
    one = min(os.sched_getaffinity(0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", *run_args(path, sim, "-c", "64")],
        env={**os.environ, **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {one}),
    )
    seen: list[int] = []
    while proc.poll() is None:
        with contextlib.suppress(OSError):  # the run ended between the look and the listing
            seen += worker_pids(proc.pid)
        time.sleep(0.05)
    stderr = proc.stderr.read() if proc.stderr is not None else ""
    assert proc.returncode == 0, stderr
    assert seen == []
    assert "one CPU is available to this run, so --workers auto made every call in this process" in stderr
    assert_complete(tmp_path / "p.results.jsonl", AUTO_MIN_REQUESTS)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),  # cgroup v2, no quota
        ("100000 100000\n", 1.0),  # docker run --cpus 1
        ("150000 100000\n", 1.5),  # --cpus 1.5: auto may use two
        ("-1 100000", None),  # cgroup v1, no quota
        ("", None),
    ],
)
def test_a_cpu_quota_counts_as_the_cpus_it_allows(text, cpus):
    # A container given one CPU by quota still sees every core in its affinity mask: auto must
    # count the quota, or it starts workers that only share that one CPU.
    assert cpu_quota(text) == cpus
