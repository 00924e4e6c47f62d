"""The Batch-API pieces that are pure or local: custom ids, what a provider's batch path carries, job
lines, splitting, line errors, and the job records on disk."""

from __future__ import annotations

import re
import stat

from llmbatch.engine.batch import custom_id_for, split_jobs
from llmbatch.engine.executor import Call
from llmbatch.model.request import Request
from llmbatch.providers.batch import JobLimits, batch_line, cannot_carry, line_error
from llmbatch.store.jobs import JobBook, JobRecord

KEY = "v1:" + "0123456789abcdef" * 4
ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def request(**fields: object) -> Request:
    base: dict[str, object] = {
        "line": 1,
        "id": 1,
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    }
    return Request(**{**base, **fields})  # type: ignore[arg-type]


def test_custom_ids_are_ones_anthropic_accepts_and_differ_by_place_and_key():
    ids = {custom_id_for(KEY, n) for n in range(1000)}
    assert len(ids) == 1000
    assert all(ANTHROPIC_ID.match(cid) for cid in ids)
    assert custom_id_for("v1:" + "f" * 64, 0) != custom_id_for(KEY, 0)


def test_anthropic_carries_max_tokens_temperature_top_p_and_text_messages():
    assert cannot_carry(request(params={"max_tokens": 10, "temperature": 0.5, "top_p": 0.9}), "anthropic") is None


def test_anthropic_refuses_what_any_llm_would_drop():
    assert cannot_carry(request(params={"stop": ["x"]}), "anthropic") == (
        'anthropic\'s batch path (any-llm) would drop "stop"; remove it or run without --batch-api'
    )
    assert "tools" in (cannot_carry(request(params={"tools": [], "max_tokens": 5}), "anthropic") or "")
    assert "response_format" in (cannot_carry(request(params={"response_format": {}}), "anthropic") or "")
    assert "extra" in (cannot_carry(request(extra={"top_k": 3}), "anthropic") or "")
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    assert "text messages" in (cannot_carry(request(messages=image), "anthropic") or "")


def test_openai_carries_every_parameter_but_not_extra_arguments_outside_the_body():
    assert cannot_carry(request(provider="openai", params={"stop": ["x"], "seed": 1}), "openai") is None
    assert cannot_carry(request(provider="openai", extra={"extra_body": {"x": 1}}), "openai") is None
    assert "timeout" in (cannot_carry(request(provider="openai", extra={"timeout": 3}), "openai") or "")


def test_a_provider_without_a_batch_path_is_refused():
    assert "no Batch API" in (cannot_carry(request(provider="mistral"), "mistral") or "")


def test_an_anthropic_job_line_puts_system_messages_in_system():
    line = batch_line("r0-ab", request(params={"max_tokens": 5}), "anthropic")
    assert line == {
        "custom_id": "r0-ab",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "Hi"}],
            "system": "Be brief.",
        },
    }


def test_jobs_are_split_by_request_count_and_by_bytes_in_order():
    calls = [Call(request(line=n, id=n, provider="openai"), f"v1:{n:064x}") for n in range(10)]
    by_count = split_jobs(calls, JobLimits(requests=4, bytes=10**9), "openai")
    assert [len(job) for job in by_count] == [4, 4, 2]
    assert [c for job in by_count for c in job] == calls
    one_line = len(str(batch_line(custom_id_for(calls[0].key, 0), calls[0].request, "openai")))
    by_bytes = split_jobs(calls, JobLimits(requests=100, bytes=one_line * 3), "openai")
    assert len(by_bytes) > 1 and all(len(job) <= 3 for job in by_bytes)


def test_failed_lines_are_worth_another_job_for_429_and_5xx_only():
    assert line_error(500, "server_error", "boom").retryable
    assert line_error(429, "rate_limit", "slow down").retryable
    assert not line_error(400, "invalid_request_error", "bad").retryable
    assert not line_error(None, "invalid_request_error", "bad").retryable
    assert line_error(None, "overloaded_error", "busy").retryable
    assert (
        "sk-secret-123456789" not in line_error(400, None, "key sk-secret-123456789", ("sk-secret-123456789",)).message
    )


def test_job_records_are_private_durable_files_read_back_as_written(tmp_path):
    book = JobBook(tmp_path / "batches")
    record = JobRecord(
        id=book.new_id(), provider="openai", model="m", endpoint="default", ids={"r0-a": KEY}, submitted_at=1.0
    )
    book.write(record)
    record.state, record.batch_id = "submitted", "batch_1"
    book.write(record)

    assert book.read(record.id) == record
    assert book.find("batch_1") == record
    assert [r.id for r in book.pending("default")] == [record.id]
    assert book.pending("http://elsewhere/v1") == []
    files = list((tmp_path / "batches").iterdir())
    assert [f.name for f in files] == [f"{record.id}.json"]  # no temporary file left behind
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "batches").stat().st_mode) == 0o700


def test_the_display_has_a_line_per_job_with_its_counts_elapsed_time_and_next_poll():
    from llmbatch.display import job_lines
    from llmbatch.engine.batch import JobView
    from llmbatch.model.stats import RunStats

    stats = RunStats()
    stats.batch_jobs = {
        "job_1": JobView("job_1", "batch_9", "openai:gpt-4o-mini", "in_progress", 100, 40, 2, 1000.0, 1130.0),
        "job_2": JobView("job_2", None, "openai:gpt-4o-mini", "submitting", 5, submitted_at=1090.0),
    }

    assert job_lines(stats, 1100.0) == [
        "job batch_9 (openai:gpt-4o-mini): in_progress, 40/2/100 done/failed/total, elapsed 1m40s, next poll in 30s",
        "job job_2 (openai:gpt-4o-mini): submitting, 0/0/5 done/failed/total, elapsed 10s",
    ]


def test_an_anthropic_line_without_max_tokens_gets_any_llms_live_default():
    from any_llm.providers.anthropic.utils import DEFAULT_MAX_TOKENS

    from llmbatch.providers.batch import ANTHROPIC_DEFAULT_MAX_TOKENS

    assert ANTHROPIC_DEFAULT_MAX_TOKENS == DEFAULT_MAX_TOKENS
    assert batch_line("r0-ab", request(), "anthropic")["body"]["max_tokens"] == DEFAULT_MAX_TOKENS
    assert "max_tokens" not in batch_line("r0-ab", request(provider="openai"), "openai")["body"]


def test_records_of_jobs_collected_a_month_ago_are_pruned_and_pending_ones_never(tmp_path):
    book = JobBook(tmp_path / "batches")
    old = dict(provider="openai", model="m", endpoint="default", ids={}, submitted_at=0.0)
    book.write(JobRecord(id="job_done", state="collected", **old))  # type: ignore[arg-type]
    book.write(JobRecord(id="job_waiting", state="submitted", **old))  # type: ignore[arg-type]
    book.write(JobRecord(id="job_recent", state="collected", **{**old, "submitted_at": 40 * 86_400.0}))  # type: ignore[arg-type]

    assert book.prune(now=41 * 86_400.0) == 1
    assert sorted(r.id for r in book.all()) == ["job_recent", "job_waiting"]
