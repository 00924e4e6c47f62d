"""Resilience, end to end: the real CLI against the simulator over 127.0.0.1, with faults, kills,
Ctrl-C, two runs sharing a cache, unwritable paths, a deleted input and a full disk.

The promise under test everywhere: a paid answer is never paid for twice and never thrown away,
and a file at the final results name is always complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmbatch.sim import SimulatorThread
from tests.support import prompts, read_results, run_cli, write_jsonl

MODEL = "openai:gpt-4o-mini"


# --- helpers -----------------------------------------------------------------------------------


def run_args(path: Path, sim: SimulatorThread, *extra: str) -> list[str]:
    return ["run", str(path), "--api-base", sim.url, "--model", MODEL, *extra]


def spawn(args: list[str], env: dict[str, str], cwd: Path, *, own_group: bool = False) -> subprocess.Popen[str]:
    """``python -m llmbatch ARGS`` as its own process, as a shell would start it; ``own_group``:
    as a terminal starts it, in a process group of its own that Ctrl-C signals as a whole."""
    return subprocess.Popen(
        [sys.executable, "-m", "llmbatch", *args],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_group,
    )


def wait_for(
    condition: Callable[[], bool], *, timeout: float, process: subprocess.Popen[str] | None = None, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the run ended (exit {process.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def cache_entries(env: dict[str, str]) -> int:
    done = run_cli(["cache", "stats", "--json"], env=env)
    assert done.exit_code == 0, done.stderr
    return int(json.loads(done.stdout)["entries"])


def complete_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``.partial`` file a killed run left; only a last, unterminated line may be cut."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def ok_lines_from_cache_only(path: Path, sim: SimulatorThread, env: dict[str, str], out: Path) -> set[int]:
    """The input lines whose answers are in the cache: a --cache-only run never calls anyone."""
    before = sim.stats()["requests_received"]
    run_cli(run_args(path, sim, "--cache-only", "-q", "-o", str(out)), env=env)
    assert sim.stats()["requests_received"] == before
    return {
        row["line"] for row in read_results(out if out.exists() else Path(f"{out}.partial")) if row["status"] == "ok"
    }


def all_succeed(processes: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    """Wait for every process (each killed if the wait fails); each must exit 0. Their stderr."""
    try:
        finished = [p.communicate(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, stderr) in zip(processes, finished, strict=True):
        assert p.returncode == 0, stderr
    return [stderr for _, stderr in finished]


def run_reading_stdin(
    tmp_path: Path, env: dict[str, str], sim: SimulatorThread, spool_dir: Path
) -> subprocess.Popen[str]:
    """``llmbatch run -`` as its own process, its copy of stdin spooled in ``spool_dir`` (TMPDIR)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmbatch",
            "run",
            "-",
            "--api-base",
            sim.url,
            "-m",
            MODEL,
            "-o",
            str(tmp_path / "o.jsonl"),
        ],
        env={**os.environ, **env, "TMPDIR": str(spool_dir)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_complete(path: Path, n: int) -> list[dict[str, Any]]:
    rows = read_results(path)
    assert [row["id"] for row in rows] == [f"q{i}" for i in range(n)]
    assert [row["line"] for row in rows] == list(range(1, n + 1))
    assert all(row["status"] == "ok" for row in rows), [row["error"] for row in rows if row["status"] != "ok"][:3]
    return rows


def assert_one_clear_error(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("llmbatch: error:")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], stderr


# --- faults ------------------------------------------------------------------------------------


def test_a_run_through_429s_5xx_hangs_and_drops_answers_every_line_paying_for_each_once(tmp_path, env, simulator):
    # "1,000 prompts, 10% 429 (Retry-After 1 s), 5% 500/503, 2% hung, 1% dropped", scaled down.
    sim = simulator(p429=0.1, retry_after_s=0.1, p500=0.025, p503=0.025, phang=0.02, pdrop=0.01, seed=7)
    path = write_jsonl(tmp_path / "faults.jsonl", prompts(200))

    done = run_cli(run_args(path, sim, "--timeout", "1", "--max-retries", "10", "-c", "16", "-q"), env=env)

    assert done.exit_code == 0, done.stderr
    rows = assert_complete(tmp_path / "faults.results.jsonl", 200)
    assert not any(row["cached"] for row in rows)
    stats = sim.stats()
    faults = stats["faults"]
    assert faults["429"] and faults["500"] + faults["503"] and faults["hang"] and faults["drop"], stats
    assert stats["completions_served"] == 200
    assert stats["distinct_requests_served"] == 200
    assert stats["max_serves_per_request"] == 1
    assert sum(row["attempts"] for row in rows) == stats["requests_received"]
    assert cache_entries(env) == 200


# --- kill -9 -----------------------------------------------------------------------------------


def test_after_kill_9_no_results_file_exists_and_a_rerun_finishes_paying_only_for_the_rest(tmp_path, env, simulator):
    sim = simulator(latency_s=0.05)
    n = 300
    path = write_jsonl(tmp_path / "big.jsonl", prompts(n))
    results = tmp_path / "big.results.jsonl"
    partial = tmp_path / "big.results.jsonl.partial"
    args = run_args(path, sim, "-c", "8")

    process = spawn(args, env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["completions_served"] >= 100, timeout=30, process=process, what="100 answers")
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    time.sleep(0.2)  # let the simulator see the dropped connections
    served_before = sim.stats()["completions_served"]
    assert served_before < n, "the run finished before it was killed"

    assert not results.exists()
    written_before = complete_lines(partial)
    stored = cache_entries(env)
    # SIGKILL can only lose answers that were on the wire, or being parsed, at that instant: at most
    # one per call in flight. Everything stored must be a hit on the rerun.
    lost = served_before - stored
    assert 0 <= lost <= 8
    in_cache = ok_lines_from_cache_only(path, sim, env, tmp_path / "in_cache.jsonl")
    assert len(in_cache) == stored
    assert {row["line"] for row in written_before} <= in_cache

    sim.reset_stats()
    again = run_cli(args, env=env)

    assert again.exit_code == 0, again.stderr
    assert not partial.exists()
    rows = assert_complete(results, n)
    assert {row["line"] for row in rows if row["cached"]} == in_cache
    stats = sim.stats()
    assert stats["completions_served"] == n - stored  # every stored answer was a hit
    assert stats["max_serves_per_request"] == 1
    assert served_before + stats["completions_served"] == n + lost


def test_answered_lines_reach_the_partial_while_a_later_line_waits_and_survive_kill_9(tmp_path, env, simulator):
    # The .partial was block-buffered: lines answered at once stayed in this process's memory while a
    # slow line held the order, unseen by a reader (`wc -l`, `tail -f`) and lost to kill -9.
    sim = simulator(latency_s=0)
    rows = prompts(5)
    rows[3]["prompt"] += " [[sim:latency=120]]"
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    partial = tmp_path / "p.results.jsonl.partial"
    process = spawn(run_args(path, sim), env, tmp_path)
    try:
        wait_for(lambda: len(complete_lines(partial)) == 3, timeout=30, process=process, what="3 lines in the .partial")
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert [row["id"] for row in complete_lines(partial)] == ["q0", "q1", "q2"]


# --- Ctrl-C ------------------------------------------------------------------------------------


def slow_prompts(n: int) -> list[dict[str, Any]]:
    """Line 1 answers at once (a run sends one probe call before it goes concurrent), the rest are slow."""
    rows = prompts(n)
    rows[0]["prompt"] += " [[sim:latency=0]]"
    return rows


def test_one_ctrl_c_lets_calls_in_flight_finish_into_the_cache_and_exits_130(tmp_path, env, simulator):
    sim = simulator(latency_s=1.0)
    path = write_jsonl(tmp_path / "slow.jsonl", slow_prompts(12))
    process = spawn(run_args(path, sim, "-c", "4", "--timeout", "10"), env, tmp_path)
    stderr, took = interrupt_when_busy(process, sim, presses=1)

    assert process.returncode == 130, stderr
    assert took < 10, f"took {took:.1f}s to stop"  # the calls in flight take 1 s; nothing new starts
    assert "Traceback" not in stderr, stderr
    said = " ".join(stderr.split())
    assert "prompts" in said and "incomplete" in said and "run the same command again" in said, stderr
    assert not (tmp_path / "slow.results.jsonl").exists()
    stats = sim.stats()
    served = stats["completions_served"]
    assert served == stats["requests_received"] == 5, "a call in flight was cut off, or a new one started"
    answered = set(range(1, served + 1))
    partial = read_results(tmp_path / "slow.results.jsonl.partial")
    assert {row["line"] for row in partial} == answered and all(row["status"] == "ok" for row in partial)
    assert cache_entries(env) == served
    assert ok_lines_from_cache_only(path, sim, env, tmp_path / "check.jsonl") == answered


def interrupt_when_busy(
    process: subprocess.Popen, sim, *, presses: int, signum: int = signal.SIGINT
) -> tuple[str, float]:
    """Ctrl-C (``presses`` times) once 4 calls are in flight; stderr, and seconds to exit after."""
    try:
        wait_for(lambda: sim.stats()["in_flight"] >= 4, timeout=30, process=process, what="4 calls in flight")
        for press in range(presses):
            if press:
                time.sleep(0.3)
            process.send_signal(signum)
        sent = time.monotonic()
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    return stderr, time.monotonic() - sent


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_a_first_ctrl_c_and_keep_every_paid_answer(tmp_path, env, simulator, signum, code):
    # kill, timeout(1), a scheduler or a closed terminal: the calls in flight are paid for, so they
    # finish and are stored, and what there is gets written; the exit code names the signal.
    sim = simulator(latency_s=1.0)
    path = write_jsonl(tmp_path / "slow.jsonl", slow_prompts(12))
    process = spawn(run_args(path, sim, "-c", "4", "--timeout", "10"), env, tmp_path)
    stderr, took = interrupt_when_busy(process, sim, presses=1, signum=signum)

    assert process.returncode == code, stderr
    assert took < 10, f"took {took:.1f}s to stop"
    assert "Traceback" not in stderr, stderr
    said = " ".join(stderr.split())
    assert f"stopped early: stopped by {signal.Signals(signum).name}" in said, stderr
    assert "finishing" not in said.split("stopped early:")[1]  # the message is about the end, not the middle
    stats = sim.stats()
    served = stats["completions_served"]
    assert served == stats["requests_received"] == 5, "a call in flight was dropped, or a new one started"
    partial = read_results(tmp_path / "slow.results.jsonl.partial")
    assert {row["line"] for row in partial} == set(range(1, served + 1))
    assert cache_entries(env) == served


def test_sigterm_sent_twice_at_once_is_one_stop_not_a_second(tmp_path, env, simulator):
    # timeout(1) signals the command and then its whole process group: two SIGTERMs at once. That
    # must not count as the second signal that quits at once, dropping the calls in flight.
    sim = simulator(latency_s=1.0)
    path = write_jsonl(tmp_path / "slow.jsonl", slow_prompts(12))
    process = spawn(run_args(path, sim, "-c", "4", "--timeout", "10"), env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["in_flight"] >= 4, timeout=30, process=process, what="4 calls in flight")
        process.send_signal(signal.SIGTERM)
        time.sleep(0.1)  # apart enough to arrive as two signals, as timeout(1)'s sometimes do
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    stats = sim.stats()
    assert stats["completions_served"] == stats["requests_received"] == 5, "calls in flight were dropped"
    assert cache_entries(env) == 5


def test_timeout_1_ending_a_run_loses_no_paid_answer(tmp_path, env, simulator):
    # `timeout 6 llmbatch run ...` sends SIGTERM: before, 16 accepted calls were dropped.
    sim = simulator(latency_s=0.4)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(400))
    command = ["timeout", "-s", "TERM", "6", sys.executable, "-m", "llmbatch", *run_args(path, sim, "-c", "16")]
    done = subprocess.run(command, env={**os.environ, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 124, done.stderr  # timeout(1) says the time ran out; llmbatch exited cleanly
    assert "Traceback" not in done.stderr
    served = sim.stats()["completions_served"]
    assert 0 < served < 400
    assert cache_entries(env) == served  # every answer paid for is in the cache
    rerun = run_cli(run_args(path, sim, "-c", "16", "-q"), env=env)
    assert rerun.exit_code == 0
    assert sim.stats()["requests_received"] == 400  # the rerun paid only for the rest


@pytest.mark.parametrize("when", ["reading stdin", "running"])
def test_the_copy_of_stdin_is_removed_however_the_run_is_stopped(tmp_path, env, simulator, when):
    sim = simulator(latency_s=1.0)
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    process = run_reading_stdin(tmp_path, env, sim, spool_dir)
    try:
        assert process.stdin is not None
        lines = "".join(json.dumps(row) + "\n" for row in slow_prompts(8))
        process.stdin.write(lines)
        process.stdin.flush()
        if when == "running":
            process.stdin.close()
            process.stdin = None  # communicate() must not flush it again
            wait_for(lambda: sim.stats()["in_flight"] >= 1, timeout=30, process=process, what="a call in flight")
        else:
            wait_for(lambda: any(spool_dir.iterdir()), timeout=30, process=process, what="the copy of stdin")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert list(spool_dir.iterdir()) == []  # no copy of the prompts left behind in $TMPDIR


def test_a_second_ctrl_c_quits_at_once_even_with_slow_calls_in_flight(tmp_path, env, simulator):
    sim = simulator(latency_s=60.0)
    path = write_jsonl(tmp_path / "stuck.jsonl", slow_prompts(8))
    process = spawn(run_args(path, sim, "-c", "4", "--timeout", "120"), env, tmp_path)
    stderr, took = interrupt_when_busy(process, sim, presses=2)

    assert process.returncode == 130, stderr
    assert took < 10, f"took {took:.1f}s to quit"  # not the 60 s the calls in flight would take
    assert "Traceback" not in stderr, stderr
    assert "incomplete" in stderr, stderr
    assert not (tmp_path / "stuck.results.jsonl").exists()
    assert sim.stats()["completions_served"] == 1  # the probe; the slow four were abandoned
    assert cache_entries(env) == 1


# --- two runs, one cache -----------------------------------------------------------------------


def test_two_runs_at_once_on_one_cache_both_finish_and_leave_it_consistent(tmp_path, env, simulator):
    sim = simulator(latency_s=0.05)
    n = 100
    path = write_jsonl(tmp_path / "shared.jsonl", prompts(n))
    outputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    processes = [spawn(run_args(path, sim, "-c", "8", "-o", str(out)), env, tmp_path) for out in outputs]
    for stderr in all_succeed(processes, timeout=60):
        assert "Traceback" not in stderr, stderr
    a, b = (assert_complete(out, n) for out in outputs)
    assert [row["content"] for row in a] == [row["content"] for row in b]
    assert cache_entries(env) == n
    stats = sim.stats()
    assert stats["distinct_requests_served"] == n
    assert stats["max_serves_per_request"] <= 2  # at most once per run
    assert stats["completions_served"] == 2 * n - sum(row["cached"] for row in a + b)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_two_runs_started_together_pay_once_for_each_prompt(tmp_path, env, simulator, workers):
    # Before leases, 300 prompts cost 600 calls. Each run now takes a lease on the keys it calls and
    # waits for the other's answers instead of paying for them again.
    sim = simulator(latency_s=0.02)
    n = 300
    path = write_jsonl(tmp_path / "shared.jsonl", prompts(n))
    outputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    args = ["-c", "16", "--workers", workers]
    processes = [spawn(run_args(path, sim, *args, "-o", str(out)), env, tmp_path) for out in outputs]
    all_succeed(processes, timeout=120)
    a, b = (assert_complete(out, n) for out in outputs)
    assert [row["content"] for row in a] == [row["content"] for row in b]
    stats = sim.stats()
    assert stats["distinct_requests_served"] == n
    assert stats["requests_received"] == n  # every prompt paid for exactly once between the two runs
    assert sum(not row["cached"] for row in a + b) == n  # and each run says which answers it paid for


def test_a_run_that_dies_holding_leases_lets_another_take_its_keys_when_they_run_out(tmp_path, env, simulator):
    import sqlite3

    from llmbatch.store import DiskStore

    sim = simulator()
    path = write_jsonl(tmp_path / "p.jsonl", prompts(20))
    cache_dir = Path(env["LLMBATCH_CACHE_DIR"])
    # A run killed with -9 leaves its leases behind: here, leases on the first ten keys, taken by
    # an owner that will never renew them, written as that run would have.
    held_keys = [row["key"] for row in read_results(_keys_file(tmp_path, path, sim, env))][:10]
    with DiskStore(cache_dir) as cache:
        assert cache.lease(held_keys, "dead-run", ttl_s=1.5) == set(held_keys)
    started = time.monotonic()
    done = run_cli(run_args(path, sim, "-c", "8", "-q"), env=env)
    assert done.exit_code == 0, done.stderr
    assert time.monotonic() - started >= 1.0  # it waited for the dead run's leases to run out
    assert sim.stats()["requests_received"] == 20 + 20  # the keys file's 20, then these 20: none twice
    with sqlite3.connect(cache_dir / "cache.db") as db:
        assert db.execute("SELECT COUNT(*) FROM llmbatch_leases").fetchone() == (0,)  # nothing left held


def test_leases_of_a_run_on_this_machine_that_is_gone_are_taken_over_at_once(tmp_path, env, simulator):
    import socket

    from llmbatch.store import DiskStore

    sim = simulator()
    path = write_jsonl(tmp_path / "p.jsonl", prompts(20))
    held_keys = [row["key"] for row in read_results(_keys_file(tmp_path, path, sim, env))]
    dead_pid = subprocess.Popen(["true"])  # a process that has ended: its pid names nobody now
    dead_pid.wait()
    owner = f"{socket.gethostname()}:{dead_pid.pid}:killed"
    with DiskStore(Path(env["LLMBATCH_CACHE_DIR"])) as cache:
        assert cache.lease(held_keys, owner, ttl_s=3600) == set(held_keys)  # an hour: never waited out
    started = time.monotonic()
    done = run_cli(run_args(path, sim, "-c", "8", "-q"), env=env)
    assert done.exit_code == 0, done.stderr
    assert time.monotonic() - started < 30  # not the hour its leases had left
    assert sim.stats()["requests_received"] == 20 + 20


def _keys_file(tmp_path: Path, path: Path, sim, env) -> Path:
    """The request keys of ``path``'s lines, from a run into a throwaway cache."""
    out = tmp_path / "keys.jsonl"
    other = {**env, "LLMBATCH_CACHE_DIR": str(tmp_path / "throwaway")}
    assert run_cli(run_args(path, sim, "-q", "-o", str(out)), env=other).exit_code == 0
    return out


# --- unwritable paths --------------------------------------------------------------------------


def test_an_output_path_under_a_regular_file_is_refused_before_anything_is_sent(tmp_path, env, sim):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    (tmp_path / "blocker").write_text("a file, not a directory\n")

    done = run_cli(run_args(path, sim, "-o", str(tmp_path / "blocker" / "out.jsonl")), env=env)

    assert done.exit_code == 2
    assert_one_clear_error(done.stderr, "cannot write results", "blocker")
    assert sim.stats()["requests_received"] == 0


def test_an_output_path_that_is_a_directory_is_refused_before_anything_is_sent(tmp_path, env, sim):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    (tmp_path / "outdir").mkdir()

    process = subprocess.run(
        [sys.executable, "-m", "llmbatch", *run_args(path, sim, "-q", "-o", str(tmp_path / "outdir"))],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert process.returncode == 2, process.stderr[-2000:]
    assert_one_clear_error(process.stderr, "outdir")
    assert sim.stats()["requests_received"] == 0


def test_a_cache_dir_that_cannot_be_created_is_refused_before_anything_is_sent(tmp_path, env, sim):
    # Tests run as root, which ignores read-only modes: a path under a regular file can never be made.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    unwritable = {**env, "LLMBATCH_CACHE_DIR": str(tmp_path / "blocker" / "cache")}

    done = run_cli(run_args(path, sim), env=unwritable)

    assert done.exit_code == 2
    assert_one_clear_error(done.stderr, "cache", "blocker")
    assert sim.stats()["requests_received"] == 0
    assert not (tmp_path / "p.results.jsonl").exists()


def test_a_bad_line_is_reported_even_when_the_cache_cannot_be_opened(tmp_path, env, sim):
    path = write_jsonl(tmp_path / "p.jsonl", [*prompts(3), {"id": "x", "prompt": 7}])
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    unwritable = {**env, "LLMBATCH_CACHE_DIR": str(tmp_path / "blocker" / "cache")}

    done = run_cli(run_args(path, sim), env=unwritable)

    assert done.exit_code == 2
    assert "p.jsonl:4:" in done.stderr and "Traceback" not in done.stderr
    assert sim.stats()["requests_received"] == 0


def test_an_answer_the_cache_cannot_encode_stops_the_run_with_one_message(tmp_path, env, sim, monkeypatch):
    # A provider's answer that JSON cannot hold (orjson refuses integers past 64 bits) must end the
    # run with a message, never leave it waiting for a cache write that will not come.
    from llmbatch.store import DiskStore

    original = DiskStore.put

    def put(self: DiskStore, key: str, entry: dict[str, Any], **kwargs: Any) -> None:
        if "question number 2" in json.dumps(entry):
            raise TypeError("Integer exceeds 64-bit range")
        original(self, key, entry, **kwargs)

    monkeypatch.setattr(DiskStore, "put", put)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(6))

    done = run_cli(run_args(path, sim, "-c", "4", "--workers", "0"), env=env)

    assert done.exit_code == 1
    assert_one_clear_error(done.stderr, "cannot store an answer", "64-bit")


# --- the input disappears ----------------------------------------------------------------------


def test_deleting_the_input_during_the_run_does_not_stop_it(tmp_path, env, simulator):
    sim = simulator()
    # Line 1 is slow (and, as a run's first call, alone in flight), so the reader stops with most of
    # the file unread while it waits; the rest are duplicates of 10 prompts: 3,000 lines, 11 calls.
    rows = [{"id": "q0", "prompt": "slow one [[sim:latency=1.5]]"}]
    rows += [{"id": f"q{i}", "prompt": f"question {i % 10}", "metadata": {"pad": "x" * 40}} for i in range(1, 3000)]
    path = write_jsonl(tmp_path / "vanishing.jsonl", rows)
    process = spawn(run_args(path, sim, "-q"), env, tmp_path)
    try:
        wait_for(lambda: sim.stats()["in_flight"] >= 1, timeout=30, process=process, what="the slow call in flight")
        path.unlink()
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()

    assert process.returncode == 0, stderr
    assert_complete(tmp_path / "vanishing.results.jsonl", 3000)
    assert sim.stats()["completions_served"] == 11


# --- disk full ---------------------------------------------------------------------------------


def test_a_full_disk_stops_the_run_with_a_clear_message_and_keeps_the_paid_answers(tmp_path, env, sim, monkeypatch):
    from llmbatch.errors import CacheError
    from llmbatch.store import DiskStore

    original = DiskStore.put
    room: set[str] = set()  # the disk has room for 5 answers (written together or one by one)

    def put(self: DiskStore, key: str, entry: dict[str, Any], **kwargs: Any) -> None:
        if key not in room and len(room) >= 5:
            raise CacheError(f"cannot write to the cache at {self.directory}: [Errno 28] No space left on device")
        room.add(key)
        original(self, key, entry, **kwargs)

    monkeypatch.setattr(DiskStore, "put", put)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(20))

    done = run_cli(run_args(path, sim, "-c", "4"), env=env)

    assert done.exit_code != 0
    assert_one_clear_error(done.stderr, "No space left on device")
    assert not (tmp_path / "p.results.jsonl").exists()
    written = read_results(tmp_path / "p.results.jsonl.partial")
    served = sim.stats()["completions_served"]
    assert served > 5
    # Every answer paid for is somewhere: the cache (the first 5) or the results (all of them).
    assert sum(row["status"] == "ok" for row in written) == served
    assert [row["line"] for row in written] == list(range(1, len(written) + 1))
    assert cache_entries(env) == 5

    # With room again, the rerun first takes the answers that were paid for but never stored back
    # from the .partial file (before, it emptied that file and paid for them again).
    monkeypatch.setattr(DiskStore, "put", original)
    rerun = run_cli(run_args(path, sim, "-c", "4"), env=env)
    assert rerun.exit_code == 0, rerun.stderr
    said = " ".join(rerun.stderr.split())
    assert f"note: {served - 5} answers an earlier run paid for were taken back into the cache" in said
    assert sim.stats()["requests_received"] == 20  # each prompt paid for once, over both runs
    assert sim.stats()["max_serves_per_request"] == 1
    assert_complete(tmp_path / "p.results.jsonl", 20)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MB tmpfs mounted in ``tmp_path`` (needs root, as in CI)."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the patched test covers this")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_on_a_really_full_disk_paid_answers_in_the_partial_go_back_into_the_cache(tmp_path, env, sim, small_disk):
    # The cache on a real tmpfs, filled until it refuses answers; the results on the big disk.
    cache_env = {**env, "LLMBATCH_CACHE_DIR": str(small_disk / "cache")}
    seed = write_jsonl(tmp_path / "seed.jsonl", prompts(1, start=9000))
    assert run_cli(run_args(seed, sim, "-q"), env=cache_env).exit_code == 0  # the cache exists
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * max(0, free - 320 * 1024))
    path = write_jsonl(tmp_path / "p.jsonl", prompts(200))

    full = run_cli(run_args(path, sim, "-c", "4", "--workers", "0"), env=cache_env)
    assert full.exit_code == 1, full.stderr
    assert "Traceback" not in full.stderr and "full" in full.stderr, full.stderr
    paid_first = sim.stats()["requests_received"] - 1
    assert 0 < paid_first < 200

    (small_disk / "filler").unlink()  # room again
    rerun = run_cli(run_args(path, sim, "-c", "4", "--workers", "0"), env=cache_env)
    assert rerun.exit_code == 0, rerun.stderr
    assert "were taken back into the cache" in " ".join(rerun.stderr.split())
    assert sim.stats()["requests_received"] == 1 + 200  # nothing paid for twice
    assert sim.stats()["max_serves_per_request"] == 1
    assert_complete(tmp_path / "p.results.jsonl", 200)


def test_a_partial_that_no_run_of_this_cache_wrote_never_plants_answers(tmp_path, env, sim):
    # A .partial shipped with a cloned repository, its lines crafted to match the input's keys.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    other = {**env, "LLMBATCH_CACHE_DIR": str(tmp_path / "elsewhere")}
    assert run_cli(run_args(path, sim, "-q"), env=other).exit_code == 0
    lines = [json.loads(line) for line in (tmp_path / "p.results.jsonl").read_text().splitlines()]
    (tmp_path / "p.results.jsonl").unlink()
    for row in lines:
        row["response"]["choices"][0]["message"]["content"] = "a planted answer"
    (tmp_path / "p.results.jsonl.partial").write_text("".join(json.dumps(row) + "\n" for row in lines))

    done = run_cli(run_args(path, sim, "-q"), env=env)
    assert done.exit_code == 0, done.stderr
    assert "taken back" not in done.stderr
    assert all(row["content"] != "a planted answer" for row in read_results(tmp_path / "p.results.jsonl"))
    assert sim.stats()["requests_received"] == 3 + 3  # answered afresh, not from the planted file


class _SmallDisk:
    """A results file on a disk with room for ``room`` more bytes (a real full disk cannot be
    made without privileges); everything else goes to the real file."""

    def __init__(self, stream: Any, room: int) -> None:
        self._stream = stream
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(28, "No space left on device")
        self._room -= len(data)
        return self._stream.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def test_a_full_disk_under_the_results_stops_the_run_with_a_clear_message_and_a_rerun_pays_nothing_more(
    tmp_path, env, sim, monkeypatch
):
    from llmbatch.results import ResultWriter

    original_open = ResultWriter.open

    def open_on_a_small_disk(self: ResultWriter) -> ResultWriter:
        original_open(self)
        self._stream = _SmallDisk(self._stream, room=2_500)  # two or three result lines
        return self

    monkeypatch.setattr(ResultWriter, "open", open_on_a_small_disk)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(12))

    done = run_cli(run_args(path, sim, "-c", "2"), env=env)

    assert done.exit_code == 1  # stopped early; 2 would say that nothing was sent
    assert_one_clear_error(done.stderr, "cannot write results to", "No space left on device", "in the cache")
    assert not (tmp_path / "p.results.jsonl").exists()
    served = sim.stats()["completions_served"]
    assert 2 <= served < 12
    assert cache_entries(env) == served  # every answer paid for was stored before it was written

    monkeypatch.setattr(ResultWriter, "open", original_open)  # room again
    sim.reset_stats()
    again = run_cli(run_args(path, sim), env=env)
    assert again.exit_code == 0, again.stderr
    rows = assert_complete(tmp_path / "p.results.jsonl", 12)
    assert sum(row["cached"] for row in rows) == served
    assert sim.stats()["completions_served"] == 12 - served


# --- timeouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["0", "1"])
def test_timeout_bounds_the_whole_attempt_even_when_the_server_trickles_bytes(tmp_path, env, sim, workers):
    # A stalled upstream that sends a byte every 0.2 s never trips a per-read timeout; --timeout must
    # still end the attempt (headers and body) at its limit, not several seconds later.
    # The same run with a prompt answered at once is the baseline: starting and stopping (a worker
    # process too) takes what it takes on a loaded machine, and is not what is measured here.
    quick = write_jsonl(tmp_path / "quick.jsonl", [{"id": "quick", "prompt": "x"}])
    started = time.monotonic()
    assert run_cli(run_args(quick, sim, "--timeout", "1", "--no-cache", "--workers", workers), env=env).exit_code == 0
    baseline = time.monotonic() - started
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "slow", "prompt": "x [[sim:trickle=0.2]]"}])
    started = time.monotonic()
    done = run_cli(run_args(path, sim, "--timeout", "1", "--max-retries", "0", "--workers", workers), env=env)
    took = time.monotonic() - started
    assert done.exit_code == 1
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["status"] == "error" and row["error"]["type"] == "Timeout"
    # Before: the timeout plus 5 s, at least, over the baseline.
    assert took - baseline < 3.0, f"an attempt limited to 1 s took {took:.1f} s ({baseline:.1f} s to start and stop)"


def test_the_timeout_derived_from_max_tokens_has_a_ceiling():
    from llmbatch.engine import LiveExecutor, RunOptions
    from llmbatch.model.request import Request
    from llmbatch.providers.anyllm import AnyLLMProvider

    engine = LiveExecutor(AnyLLMProvider(), options=RunOptions(timeout_s=30, timeout_auto=True))
    huge = Request(line=1, id=1, provider="openai", model="m", messages=[], params={"max_tokens": 10**18})
    assert engine._timeout_for(huge) == 600
    modest = Request(line=1, id=1, provider="openai", model="m", messages=[], params={"max_tokens": 4000})
    assert engine._timeout_for(modest) == 90
    given = LiveExecutor(AnyLLMProvider(), options=RunOptions(timeout_s=2000))
    assert given._timeout_for(huge) == 2000  # --timeout given: the user's choice stands


def test_a_partial_at_the_inode_of_one_this_cache_wrote_but_without_its_mark_plants_nothing(tmp_path, env, sim):
    # The inode number of a deleted .partial is reused by the next file made on that disk: a
    # planted file can sit at the very inode a run recorded. Only the run's own mark (an extended
    # attribute, which a clone or a copy does not carry) lets recovery read a .partial.
    from llmbatch.results import PARTIAL_MARK

    path = write_jsonl(tmp_path / "p.jsonl", prompts(200))
    budget = run_cli(run_args(path, sim, "-c", "1", "--max-cost", "0.0003"), env=env)
    assert budget.exit_code == 3, budget.stderr
    partial = tmp_path / "p.results.jsonl.partial"
    rows = read_results(partial)
    assert rows
    os.removexattr(partial, PARTIAL_MARK)  # the same inode, as a reused one would be, unmarked
    planted = [{**row, "cached": False, "line": row["line"], "key": row["key"]} for row in rows]
    for row in planted:
        row["response"]["choices"][0]["message"]["content"] = "a planted answer"
    with open(partial, "r+") as same_inode:
        same_inode.write("".join(json.dumps(row) + "\n" for row in planted))
        same_inode.truncate()
    # Those answers gone from the cache, so that recovery would have something to put back.
    assert run_cli(["cache", "purge", "--model", MODEL], env=env).exit_code == 0
    rerun = run_cli(run_args(path, sim, "-c", "4", "-q"), env=env)
    assert rerun.exit_code == 0, rerun.stderr
    assert all(row["content"] != "a planted answer" for row in read_results(tmp_path / "p.results.jsonl"))


def test_a_run_killed_with_9_leaves_no_copy_of_the_prompts_in_tmpdir(tmp_path, env, simulator):
    sim = simulator(latency_s=1.0)
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    process = run_reading_stdin(tmp_path, env, sim, spool_dir)
    try:
        assert process.stdin is not None
        process.stdin.write("".join(json.dumps(row) + "\n" for row in slow_prompts(8)))
        process.stdin.close()
        process.stdin = None
        wait_for(lambda: sim.stats()["in_flight"] >= 1, timeout=30, process=process, what="a call in flight")
        assert list(spool_dir.iterdir()) == []  # the copy has no name while the run reads it
        process.kill()
        process.communicate(timeout=30)
    finally:
        process.kill()
    assert list(spool_dir.iterdir()) == []


def test_results_on_standard_output_appended_to_the_file_that_is_standard_input_are_refused(tmp_path, env):
    path = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    before = path.read_bytes()
    with open(path, "rb") as stdin, open(path, "ab") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "llmbatch", "run", "-", "--simulate", "-o", "-", "-q"],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            timeout=120,
        )
    assert done.returncode == 2 and "it is the input file <stdin>" in done.stderr
    assert path.read_bytes() == before
