"""``--batch-api`` as a demanding user drives it: the CLI against the simulator over HTTP, each test a
defect found by hand (the simulator restarted on the same port stands for a provider that forgot
its batches, as the in-process simulator of a ``--simulate`` run does when that run ends)."""

from __future__ import annotations

from llmbatch.sim import SimConfig, SimulatorThread
from tests.support import prompts, read_results, run_cli, write_jsonl
from tests.test_batch import batch_args, records


def test_a_job_the_provider_no_longer_knows_is_resubmitted_with_a_warning_not_silently(tmp_path, env):
    first_sim = SimulatorThread(SimConfig(batch_processing_s=600)).start()
    path = write_jsonl(tmp_path / "in.jsonl", prompts(10))
    try:
        assert run_cli(batch_args(path, first_sim, "--no-wait"), env=env).exit_code == 75
    finally:
        first_sim.close()
    [job] = records(env)
    forgetful = SimulatorThread(SimConfig(), port=int(first_sim.url.rsplit(":", 1)[1].split("/")[0])).start()  # same endpoint, no batches
    try:
        again = run_cli(batch_args(path, forgetful), env=env)
        stats = forgetful.stats()
    finally:
        forgetful.close()

    assert again.exit_code == 0, again.stderr
    assert len(read_results(tmp_path / "in.results.jsonl")) == 10
    assert stats["batches_created"] == 1
    # Not -v, and still said: a resubmission costs money a second time.
    warning = [line for line in again.stderr.splitlines() if job["batch_id"] in line]
    assert warning, again.stderr
    assert "not known to the provider" in warning[0] and "10" in warning[0] and "again" in warning[0]
    assert any(line.split() == ["calls", "made", "10"] for line in again.stderr.splitlines()), again.stderr


def test_no_wait_says_the_pending_job_once_on_plain_lines_with_no_escaped_newline(tmp_path, env, simulator):
    sim = simulator(batch_processing_s=600)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(5))

    first = run_cli(batch_args(path, sim, "--no-wait"), env=env)

    assert first.exit_code == 75, first.stderr
    assert "\\n" not in first.stderr  # a note of two lines was printed as one, with a literal \n
    [job] = records(env)
    assert sum(job["batch_id"] in line for line in first.stderr.splitlines()) == 1, first.stderr
    assert any(line.startswith("batch jobs are running") for line in first.stderr.splitlines()), first.stderr


def test_a_run_that_dies_after_the_batch_is_created_but_before_its_id_is_recorded_is_found_again(
    tmp_path, env, simulator, monkeypatch
):
    from llmbatch.errors import CacheError
    from llmbatch.store.jobs import JobBook

    sim = simulator(batch_processing_s=600)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(6))
    write = JobBook.write

    def crash_on_the_second_write(self, record):  # the disk fills between create and the record update
        if record.state == "submitted":
            raise CacheError("disk full")
        write(self, record)

    monkeypatch.setattr(JobBook, "write", crash_on_the_second_write)
    first = run_cli(batch_args(path, sim), env=env)
    monkeypatch.setattr(JobBook, "write", write)
    assert first.exit_code != 0
    [job] = records(env)
    assert job["state"] == "submitting" and job["batch_id"] is None
    sim.advance_clock(600)

    again = run_cli(batch_args(path, sim), env=env)

    assert again.exit_code == 0, again.stderr
    assert [row["via"] for row in read_results(tmp_path / "in.results.jsonl")] == ["batch"] * 6
    assert sim.stats()["batches_created"] == 1  # found by its metadata, not submitted again
    assert [r["state"] for r in records(env)] == ["collected"]


def test_a_job_another_run_submitted_after_this_run_started_is_attached_to_not_paid_again(tmp_path, env, simulator):
    """Run B starts (no job on record) and works on its first waves, leasing only what it holds at
    once (32 keys here); run A, on three of B's later lines, submits them with --no-wait and returns.
    When B reaches those lines they are misses nobody leases: B must attach to A's job, not submit
    them a second time."""
    import signal
    import time

    from tests.test_resilience import spawn, wait_for

    sim = simulator(batch_processing_s=600)
    later = prompts(3, start=100)
    path_b = write_jsonl(tmp_path / "b.jsonl", prompts(32) + later)
    path_a = write_jsonl(tmp_path / "a.jsonl", later)
    run_b = spawn(batch_args(path_b, sim, "--batch-window", "16"), env, tmp_path)
    try:
        wait_for(lambda: len(records(env)) == 1, timeout=60, process=run_b, what="B's first job")
        a = run_cli(batch_args(path_a, sim, "--no-wait"), env=env)
        assert a.exit_code == 75, a.stderr
        deadline = time.monotonic() + 60
        while run_b.poll() is None and time.monotonic() < deadline:
            sim.advance_clock(600)  # every job out ends; B goes on to its next wave
            time.sleep(0.2)
        _, stderr = run_b.communicate(timeout=30)
    finally:
        if run_b.poll() is None:
            run_b.send_signal(signal.SIGKILL)
            run_b.communicate(timeout=10)
    assert run_b.returncode == 0, stderr
    assert [row["status"] for row in read_results(tmp_path / "b.results.jsonl")] == ["ok"] * 35
    stats = sim.stats()
    assert stats["max_answers_per_request"] == 1, stats  # A's three lines were not paid for twice
    assert stats["batch_requests_submitted"] == 35


def test_a_route_fallback_the_anthropic_batch_path_cannot_carry_is_refused_before_anything_is_sent(tmp_path, env, sim):
    # A line's fallback (or cascade) model is asked through the same batch path when its model fails:
    # any-llm's Anthropic translation would drop "stop", and the answer be filed under a key with it.
    config = tmp_path / "routes.toml"
    config.write_text(
        '[[route]]\nmodel = "openai:gpt-4o-mini"\nfallback = ["anthropic:claude-sonnet-4-5"]\n'
        '[[route]]\nwhen = { metadata = { task = "x" } }\nmodel = "openai:gpt-4o-mini"\n'
        'escalate = { on = ["length"], to = "anthropic:claude-sonnet-4-5" }\n',
        encoding="utf-8",
    )
    rows = [
        {"id": "a", "prompt": "count to ten", "stop": ["5"]},
        {"id": "b", "prompt": "fine", "max_tokens": 5},
        {"id": "c", "prompt": "count to ten", "stop": ["5"], "metadata": {"task": "x"}},
    ]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["run", str(path), "--config", str(config), "--api-base", sim.url, "--batch-api"]

    result = run_cli(args, env={**env, "ANTHROPIC_API_KEY": "sk-ant-llmbatch-test-0123456789"})

    assert result.exit_code == 2, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{path}:1: ") and '"stop"' in line and "anthropic" in line for line in lines), lines
    assert any(line.startswith(f"{path}:3: ") and '"stop"' in line for line in lines), lines
    assert not any(line.startswith(f"{path}:2: ") for line in lines), lines
    assert "Traceback" not in result.stderr
    stats = sim.stats()
    assert stats["batches_created"] == 0 and stats["files_uploaded"] == 0 and stats["completions_served"] == 0
    assert records(env) == []


def test_the_display_shows_a_lost_job_as_lost_not_as_still_being_polled(tmp_path, env):
    import os
    import subprocess
    import sys
    import time

    first_sim = SimulatorThread(SimConfig(batch_processing_s=600)).start()
    path = write_jsonl(tmp_path / "in.jsonl", prompts(4))
    try:
        assert run_cli(batch_args(path, first_sim, "--no-wait"), env=env).exit_code == 75
    finally:
        first_sim.close()
    [job] = records(env)
    port = int(first_sim.url.rsplit(":", 1)[1].split("/")[0])
    forgetful = SimulatorThread(SimConfig(batch_processing_s=600), port=port).start()
    log = tmp_path / "stderr.txt"
    try:
        with log.open("w") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "llmbatch", *batch_args(path, forgetful)],
                env={**os.environ, **env},
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and log.read_text().count(f"job {job['batch_id']} (") < 1:
                    time.sleep(0.1)  # the plain progress lines come every few seconds
                forgetful.advance_clock(600)
                assert process.wait(timeout=60) == 0, log.read_text()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        forgetful.close()
    shown = [line for line in log.read_text().splitlines() if line.startswith(f"llmbatch: job {job['batch_id']} (")]
    assert shown, log.read_text()
    assert all(": lost," in line and "next poll" not in line for line in shown), shown


def test_no_wait_with_simulate_is_refused_since_no_later_run_could_collect(tmp_path, env):
    path = write_jsonl(tmp_path / "in.jsonl", prompts(3))

    result = run_cli(["run", str(path), "--simulate", "--batch-api", "--no-wait"], env=env)

    assert result.exit_code == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("llmbatch: error: --no-wait with --simulate") and "llmbatch sim" in line
    assert records(env) == [] and not (tmp_path / "in.results.jsonl").exists()
