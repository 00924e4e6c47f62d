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


def test_no_wait_says_the_pending_job_once_on_plain_lines_with_no_escaped_newline(tmp_path, env, simulator):
    sim = simulator(batch_processing_s=600)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(5))

    first = run_cli(batch_args(path, sim, "--no-wait"), env=env)

    assert first.exit_code == 75, first.stderr
    assert "\\n" not in first.stderr  # a note of two lines was printed as one, with a literal \n
    [job] = records(env)
    assert sum(job["batch_id"] in line for line in first.stderr.splitlines()) == 1, first.stderr
    assert any(line.startswith("batch jobs are running") for line in first.stderr.splitlines()), first.stderr
