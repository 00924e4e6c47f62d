"""The simulator's Batch APIs over real HTTP, through the real SDKs: the openai package's Files and
Batches, the anthropic package's Message Batches, and any-llm's batch calls for both providers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from llmbatch.sim import SimulatorThread
from tests.support import run_cli

StartSim = Callable[..., SimulatorThread]
KEY = "sk-batch-test"
ENDPOINT = "/v1/chat/completions"


def body(content: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def line(custom_id: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body(content, **extra)}


def jsonl(rows: list[Any]) -> bytes:
    return b"".join((row if isinstance(row, bytes) else orjson.dumps(row)) + b"\n" for row in rows)


def oa(server: SimulatorThread, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)


def ant(server: SimulatorThread, key: str = KEY) -> anthropic.Anthropic:
    # Anthropic's SDK takes the server's root: it adds /v1/messages itself.
    return anthropic.Anthropic(base_url=server.url.removesuffix("/v1"), api_key=key, max_retries=0)


def submit(client: openai.OpenAI, rows: list[Any], name: str = "in.jsonl") -> Any:
    uploaded = client.files.create(file=(name, jsonl(rows)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(text) for text in client.files.content(file_id).text.splitlines()]


def advance(server: SimulatorThread, seconds: float) -> None:
    response = httpx.post(f"{server.url.removesuffix('/v1')}/clock/advance", json={"seconds": seconds})
    assert response.status_code == 200, response.text


def message_params(content: str, model: str = "claude-sim", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": content}], **extra}


def without_ids(completion: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in completion.items() if k not in ("id", "created")}


# --- OpenAI: files and batches through the openai SDK -------------------------------------------


def test_upload_create_retrieve_download_with_the_openai_sdk(sim: SimulatorThread) -> None:
    client = oa(sim)
    rows = [line(f"r{i}", f"question {i}") for i in range(5)]
    uploaded = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(rows)) and uploaded.filename == "in.jsonl"
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == jsonl(rows)

    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", metadata={"run": "t1"}
    )
    assert batch.status == "validating" and batch.id.startswith("batch_")
    assert batch.metadata == {"run": "t1"} and batch.input_file_id == uploaded.id

    done = client.batches.retrieve(batch.id)  # batch_processing_s=0: ended on the next look
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
    assert done.completed_at is not None and done.error_file_id is None and done.model == "gpt-4o-mini"
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (10, 30)
    output = file_lines(client, done.output_file_id)
    assert [entry["custom_id"] for entry in output] == [f"r{i}" for i in range(5)]
    first = output[0]
    assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
    assert first["id"].startswith("batch_req_")
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"].startswith("req_")
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"


def test_a_batch_answer_equals_the_live_answer_for_the_same_body(sim: SimulatorThread) -> None:
    client = oa(sim)
    bodies = [body("what is 2+2?"), body("json please", response_format={"type": "json_object"}, max_tokens=3)]
    batch = submit(
        client, [{"custom_id": f"c{i}", "method": "POST", "url": ENDPOINT, "body": b} for i, b in enumerate(bodies)]
    )
    output = file_lines(client, client.batches.retrieve(batch.id).output_file_id)
    for entry, sent in zip(output, bodies, strict=True):
        live = httpx.post(f"{sim.url}/chat/completions", json=sent).json()
        assert without_ids(entry["response"]["body"]) == without_ids(live)
    digest = hashlib.sha256(orjson.dumps(bodies[0], option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == (
        f"Simulated answer {digest[:8]} to: what is 2+2?"
    )


def test_failed_lines_go_to_the_error_file_in_openais_shape(sim: SimulatorThread) -> None:
    client = oa(sim)
    rows = [
        line("ok", "fine"),
        line("bad", "no [[sim:status=400]]"),
        line("flaky", "again [[sim:fail_first=1]]"),
        line("odd", "unknown [[sim:nonsense=1]]"),
    ]
    done = client.batches.retrieve(submit(client, rows).id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 3)
    errors = {entry["custom_id"]: entry for entry in file_lines(client, done.error_file_id)}
    assert set(errors) == {"bad", "flaky", "odd"}
    assert errors["bad"]["error"] is None  # an executed request: its HTTP answer, top-level error null
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["bad"]["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert errors["flaky"]["response"]["status_code"] == 503
    assert "unknown sim directive" in errors["odd"]["response"]["body"]["error"]["message"]
    # fail_first counts attempts of the same body, live or batch: the live retry now succeeds.
    assert httpx.post(f"{sim.url}/chat/completions", json=body("again [[sim:fail_first=1]]")).status_code == 200


def test_batch_fail_directive_fails_only_in_the_first_n_batches(sim: SimulatorThread) -> None:
    client = oa(sim)
    rows = [line("x", "please [[sim:batch_fail=1]]"), line("y", "fine")]
    first = client.batches.retrieve(submit(client, rows).id)
    assert [e["custom_id"] for e in file_lines(client, first.error_file_id)] == ["x"]
    assert file_lines(client, first.error_file_id)[0]["response"]["status_code"] == 500
    second = client.batches.retrieve(submit(client, rows[:1]).id)
    assert second.error_file_id is None and len(file_lines(client, second.output_file_id)) == 1
    # Live calls are not batches: the directive does not touch them.
    assert httpx.post(f"{sim.url}/chat/completions", json=body("please [[sim:batch_fail=5]]")).status_code == 200


def test_every_line_failed_gives_no_output_file(sim: SimulatorThread) -> None:
    client = oa(sim)
    done = client.batches.retrieve(submit(client, [line("a", "[[sim:status=500]]")]).id)
    assert done.status == "completed" and done.output_file_id is None and done.error_file_id is not None


def test_batch_fail_share_is_seeded(simulator: StartSim) -> None:
    rows = [line(f"r{i}", f"q{i}") for i in range(200)]
    failed: list[set[str]] = []
    for _ in range(2):
        client = oa(simulator(batch_fail_share=0.25, seed=7))
        done = client.batches.retrieve(submit(client, rows).id)
        failed.append({e["custom_id"] for e in file_lines(client, done.error_file_id)})
    assert failed[0] == failed[1]
    assert 20 <= len(failed[0]) <= 80


@pytest.mark.parametrize(
    ("rows", "code", "line_no"),
    [
        ([line("a", "x"), line("b", "y", model="gpt-4o")], "mismatched_model", 2),
        ([line("a", "x"), line("a", "y")], "duplicate_custom_id", 2),
        ([line("a", "x"), {**line("b", "y"), "url": "/v1/embeddings"}], "url_mismatch", 2),
        ([line("a", "x"), b"{not json"], "invalid_json_line", 2),
        ([{k: v for k, v in line("a", "x").items() if k != "custom_id"}], "missing_required_parameter", 1),
        ([line("a", "x", model="no-such-model")], "model_not_found", 1),
        ([b""], "empty_file", None),
        ([line(f"r{i}", "x") for i in range(4)], "too_many_tasks", None),
    ],
)
def test_a_bad_input_file_fails_the_batch_as_openai_does(
    simulator: StartSim, rows: list[Any], code: str, line_no: int | None
) -> None:
    server = simulator(batch_max_requests=3, models=("gpt-4o-mini", "gpt-4o"))
    client = oa(server)
    batch = submit(client, rows)
    assert batch.status == "validating"  # OpenAI validates after accepting the batch
    failed = client.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.output_file_id is None and failed.error_file_id is None
    assert failed.errors is not None and failed.errors.data
    error = failed.errors.data[0]
    assert (error.code, error.line) == (code, line_no)
    assert error.message
    assert server.stats()["batch_lines_answered"] == 0


def test_requests_openai_refuses_at_once_are_400s(sim: SimulatorThread) -> None:
    client = oa(sim)
    with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
        client.files.create(file=("in.txt", b"{}\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-nope", endpoint=ENDPOINT, completion_window="24h")
    uploaded = client.files.create(file=("in.jsonl", jsonl([line("a", "x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    assert sim.stats()["batches_created"] == 0


def test_processing_time_runs_on_the_simulators_clock(simulator: StartSim) -> None:
    server = simulator(batch_processing_s=1000)
    client = oa(server)
    batch = submit(client, [line(f"r{i}", f"q{i}") for i in range(10)])
    assert client.batches.retrieve(batch.id).status == "validating"
    advance(server, 500)  # half way through the answering span (10% to 90%): 5 of 10 lines
    middle = client.batches.retrieve(batch.id)
    assert middle.status == "in_progress" and middle.in_progress_at is not None
    assert middle.request_counts is not None and middle.request_counts.completed == 5
    assert middle.output_file_id is None
    assert server.stats()["batch_lines_answered"] == 5
    advance(server, 420)
    assert client.batches.retrieve(batch.id).status == "finalizing"
    advance(server, 80)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == 10
    assert done.finalizing_at is not None and done.completed_at is not None
    assert done.in_progress_at is not None and done.in_progress_at <= done.finalizing_at <= done.completed_at


def test_expire_after_keeps_the_answered_lines_and_reports_the_rest_expired(simulator: StartSim) -> None:
    server = simulator(batch_expire_after=6)
    client = oa(server)
    done = client.batches.retrieve(submit(client, [line(f"r{i}", f"q{i}") for i in range(10)]).id)
    assert done.status == "expired" and done.expired_at is not None
    assert done.request_counts is not None and done.request_counts.completed == 6
    assert [e["custom_id"] for e in file_lines(client, done.output_file_id)] == [f"r{i}" for i in range(6)]
    expired = file_lines(client, done.error_file_id)
    assert [e["custom_id"] for e in expired] == [f"r{i}" for i in range(6, 10)]
    assert expired[0]["response"] is None
    assert expired[0]["error"]["code"] == "batch_expired"
    stats = server.stats()
    assert (stats["batch_lines_answered"], stats["batch_lines_expired"]) == (6, 4)
    # A job no larger than the limit completes.
    assert client.batches.retrieve(submit(client, [line("a", "b")]).id).status == "completed"


def test_a_job_longer_than_its_window_expires_at_24h(simulator: StartSim) -> None:
    server = simulator(batch_processing_s=48 * 3600)
    client = oa(server)
    batch = submit(client, [line(f"r{i}", f"q{i}") for i in range(10)])
    advance(server, 24 * 3600 + 1)
    done = client.batches.retrieve(batch.id)
    assert done.status == "expired" and done.expired_at == batch.expires_at
    assert done.request_counts is not None and 0 < done.request_counts.completed < 10


def test_cancel_mid_processing_keeps_the_finished_lines(simulator: StartSim) -> None:
    server = simulator(batch_processing_s=100)
    client = oa(server)
    batch = submit(client, [line(f"r{i}", f"q{i}") for i in range(10)])
    advance(server, 30)  # 2 of 10 answered
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    advance(server, 100)  # nothing more is answered after the cancel
    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert [e["custom_id"] for e in file_lines(client, cancelled.output_file_id)] == ["r0", "r1"]
    rest = file_lines(client, cancelled.error_file_id)
    assert len(rest) == 8 and {e["error"]["code"] for e in rest} == {"batch_cancelled"}
    stats = server.stats()
    assert (stats["batch_lines_answered"], stats["batch_lines_cancelled"]) == (2, 8)
    assert client.batches.cancel(batch.id).status == "cancelled"  # cancelling again changes nothing
    finished = client.batches.retrieve(submit(client, [line("a", "b")]).id)
    advance(server, 100)
    with pytest.raises(openai.BadRequestError, match="completed"):
        client.batches.cancel(finished.id)


def test_list_paginates_newest_first(sim: SimulatorThread) -> None:
    client = oa(sim)
    ids = [submit(client, [line("a", f"q{i}")]).id for i in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK follows `after`
    assert {b.status for b in client.batches.list()} == {"completed"}


def test_stats_count_batches_apart_from_live_calls(sim: SimulatorThread) -> None:
    client = oa(sim)
    submit(client, [line(f"r{i}", f"q{i}") for i in range(3)])
    httpx.post(f"{sim.url}/chat/completions", json=body("q0"))
    stats = httpx.get(f"{sim.url.removesuffix('/v1')}/stats").json()
    assert stats["files_uploaded"] == 1 and stats["batches_created"] == 1
    assert stats["batch_requests_submitted"] == 3 and stats["batch_lines_answered"] == 3
    assert stats["completions_served"] == 1 and stats["max_serves_per_request"] == 1
    assert stats["max_batch_answers_per_request"] == 1 and stats["batch_distinct_requests_answered"] == 3
    assert stats["max_answers_per_request"] == 2  # q0: once in the batch, once live
    assert stats["batch_prompt_tokens"] == 3 and stats["batch_completion_tokens"] > 0
    sim.reset_stats()
    assert sim.stats()["batches_created"] == 0
    assert len(client.batches.list().data) == 1  # jobs are server state: a reset keeps them


def test_batch_endpoints_need_the_key(simulator: StartSim) -> None:
    server = simulator(require_api_key=KEY)
    with pytest.raises(openai.AuthenticationError):
        oa(server, "sk-wrong").files.create(file=("in.jsonl", jsonl([line("a", "x")])), purpose="batch")
    with pytest.raises(anthropic.AuthenticationError):
        ant(server, "sk-wrong").messages.batches.list()
    assert submit(oa(server), [line("a", "x")]).status == "validating"
    assert ant(server).messages.create(**message_params("hi")).content


def test_thread_advance_clock_moves_jobs_along(simulator: StartSim) -> None:
    server = simulator(batch_processing_s=3600)
    client = oa(server)
    batch = submit(client, [line("a", "x")])
    assert client.batches.retrieve(batch.id).status == "validating"
    assert server.advance_clock(3600) >= batch.created_at + 3600
    assert client.batches.retrieve(batch.id).status == "completed"


def test_clock_advance_rejects_going_back(sim: SimulatorThread) -> None:
    root = sim.url.removesuffix("/v1")
    assert httpx.post(f"{root}/clock/advance", json={"seconds": -1}).status_code == 400
    now = httpx.post(f"{root}/clock/advance", json={"seconds": 3600}).json()["now"]
    assert now > 3600


# --- OpenAI through any-llm --------------------------------------------------------------------


def test_anyllm_openai_batch_calls(simulator: StartSim, tmp_path: Path) -> None:
    from any_llm import AnyLLM
    from any_llm.exceptions import BatchNotCompleteError

    sim = simulator(batch_processing_s=60)

    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([line("a", "first"), line("b", "second [[sim:status=400]]"), line("c", "third")]))

    async def main() -> None:
        client = AnyLLM.create("openai", api_key=KEY, api_base=sim.url, max_retries=0, unified_exceptions=True)
        try:
            batch = await client.acreate_batch(input_file_path=str(path), endpoint=ENDPOINT, metadata={"k": "v"})
            assert batch.status == "validating"
            with pytest.raises(BatchNotCompleteError):
                await client.aretrieve_batch_results(batch.id)
            advance(sim, 60)
            done = await client.aretrieve_batch(batch.id)
            assert done.status == "completed"
            results = await client.aretrieve_batch_results(batch.id)
            by_id = {item.custom_id: item for item in results.results}
            assert set(by_id) == {"a", "c"}  # any-llm reads the output file only, never error_file_id
            result = by_id["a"].result
            assert result is not None and result.choices[0].message.content is not None
            assert result.choices[0].message.content.endswith("to: first")
            assert [b.id for b in await client.alist_batches(limit=5)] == [batch.id]

            other = await client.acreate_batch(input_file_path=str(path), endpoint=ENDPOINT)
            assert (await client.acancel_batch(other.id)).status == "cancelling"
            with pytest.raises(BatchNotCompleteError):
                await client.aretrieve_batch_results(other.id)  # a cancelled batch's results
        finally:
            await client.client.close()

    asyncio.run(main())
    assert sim.stats()["files_uploaded"] == 2


# --- Anthropic: /v1/messages and Message Batches through the anthropic SDK ----------------------


def test_anthropic_live_message_is_the_same_content_function(sim: SimulatorThread) -> None:
    client = ant(sim)
    params = message_params("what is 2+2?", system="be brief")
    message = client.messages.create(**params)
    digest = hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert message.content[0].type == "text"
    assert message.content[0].text == f"Simulated answer {digest[:8]} to: what is 2+2?"
    assert message.stop_reason == "end_turn" and message.model == "claude-sim"
    assert message.usage.input_tokens == 5  # "be brief" + "what is 2+2?"
    cut = client.messages.create(**message_params("a long question here", max_tokens=2))
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    no_max = {"model": "claude-sim", "messages": [{"role": "user", "content": "x"}]}
    refused = httpx.post(f"{sim.url}/messages", json=no_max, headers={"x-api-key": KEY})
    assert refused.status_code == 400
    assert refused.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(**message_params("[[sim:status=429]]"))


def test_numbers_count_by_value_so_anyllms_two_anthropic_paths_agree(sim: SimulatorThread) -> None:
    # any-llm's live Anthropic call sends temperature 0.0 where its batch translation sends 0.
    client = ant(sim)
    assert client.messages.create(**message_params("hi", temperature=0)).content == (
        client.messages.create(**message_params("hi", temperature=0.0)).content
    )
    assert client.messages.create(**message_params("hi", temperature=0.5)).content != (
        client.messages.create(**message_params("hi", temperature=0)).content
    )


def test_anthropic_message_batch_lifecycle(simulator: StartSim) -> None:
    server = simulator(batch_processing_s=100)
    client = ant(server)
    requests = [
        {"custom_id": "ok-1", "params": message_params("hello")},
        {"custom_id": "bad_2", "params": {"model": "claude-sim", "messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "fails-3", "params": message_params("[[sim:status=500]]")},
    ]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing == 3
    advance(server, 50)
    middle = client.messages.batches.retrieve(batch.id)
    assert middle.processing_status == "in_progress"
    assert (middle.request_counts.processing, middle.request_counts.succeeded) == (3, 0)  # 0 until the end
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)
    advance(server, 50)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.ended_at is not None
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 1, 2)
    assert ended.results_url == f"{server.url.removesuffix('/v1')}/v1/messages/batches/{batch.id}/results"
    results = {entry.custom_id: entry.result for entry in client.messages.batches.results(batch.id)}
    ok = results["ok-1"]
    assert ok.type == "succeeded"
    live = client.messages.create(**message_params("hello"))
    assert ok.message.content == live.content and ok.message.usage == live.usage
    bad = results["bad_2"]
    assert bad.type == "errored" and bad.error.error.type == "invalid_request_error"
    fails = results["fails-3"]
    assert fails.type == "errored" and fails.error.error.type == "api_error"
    stats = server.stats()
    assert (stats["batches_created"], stats["batch_lines_answered"], stats["batch_lines_failed"]) == (1, 1, 2)
    assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"


@pytest.mark.parametrize(
    "custom_ids",
    [["x" * 65], ["has space"], ["v1:abc"], [""], ["same", "same"]],
)
def test_anthropic_refuses_bad_custom_ids_at_once(sim: SimulatorThread, custom_ids: list[str]) -> None:
    requests = [{"custom_id": c, "params": message_params("hi")} for c in custom_ids]
    with pytest.raises(anthropic.BadRequestError):
        ant(sim).messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert sim.stats()["batches_created"] == 0


def test_anthropic_custom_id_of_64_allowed_characters_is_accepted(sim: SimulatorThread) -> None:
    custom_id = ("aZ09_-" * 11)[:64]
    batch = ant(sim).messages.batches.create(requests=[{"custom_id": custom_id, "params": message_params("hi")}])
    assert batch.request_counts.processing == 1


def test_anthropic_cancel_and_expiry(simulator: StartSim) -> None:
    server = simulator(batch_processing_s=100, batch_expire_after=3)
    client = ant(server)
    requests = [{"custom_id": f"r{i}", "params": message_params(f"q{i}")} for i in range(10)]
    cancelled = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    expired = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    advance(server, 30)  # 2 of 10 answered in each
    canceling = client.messages.batches.cancel(cancelled.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    advance(server, 100)
    counts = client.messages.batches.retrieve(cancelled.id).request_counts
    assert (counts.succeeded, counts.canceled) == (2, 8)
    kinds = [entry.result.type for entry in client.messages.batches.results(cancelled.id)]
    assert kinds == ["succeeded"] * 2 + ["canceled"] * 8
    counts = client.messages.batches.retrieve(expired.id).request_counts
    assert (counts.succeeded, counts.expired) == (3, 7)
    page = client.messages.batches.list(limit=1)
    assert [b.id for b in page.data] == [expired.id] and page.has_more
    assert [b.id for b in client.messages.batches.list(limit=1)] == [expired.id, cancelled.id]


def test_anyllm_anthropic_batch_calls(simulator: StartSim, tmp_path: Path) -> None:
    from any_llm import AnyLLM

    sim = simulator(batch_processing_s=60)

    path = tmp_path / "requests.jsonl"
    rows = [line("a", "first", max_tokens=50), line("b", "second", max_tokens=50)]
    for row in rows:
        row["body"]["model"] = "claude-sim"
    path.write_bytes(jsonl(rows))

    async def main() -> None:
        client = AnyLLM.create("anthropic", api_key=KEY, api_base=sim.url.removesuffix("/v1"), unified_exceptions=True)
        try:
            batch = await client.acreate_batch(input_file_path=str(path), endpoint=ENDPOINT)
            assert batch.status == "in_progress"
            advance(sim, 60)
            assert (await client.aretrieve_batch(batch.id)).status == "completed"
            results = await client.aretrieve_batch_results(batch.id)
            contents = {
                item.custom_id: item.result.choices[0].message.content for item in results.results if item.result
            }
            assert contents["a"] is not None and contents["a"].endswith("to: first")
            assert [b.id for b in await client.alist_batches(limit=10)] == [batch.id]
            other = await client.acreate_batch(input_file_path=str(path), endpoint=ENDPOINT)
            assert (await client.acancel_batch(other.id)).status == "cancelling"
        finally:
            await client.client.close()

    asyncio.run(main())
    # any-llm's translation sends model, max_tokens and messages: the same body as a live call.
    live = ant(sim).messages.create(model="claude-sim", max_tokens=50, messages=[{"role": "user", "content": "first"}])
    assert sim.stats()["max_answers_per_request"] == 2  # one batch line and one live call of one body
    assert isinstance(live.content[0], anthropic.types.TextBlock)


# --- llmbatch sim ------------------------------------------------------------------------------


def test_llmbatch_sim_serves_the_batch_apis_with_its_options() -> None:
    command = [sys.executable, "-m", "llmbatch", "sim", "--port", "0", "--batch-processing", "1h"]
    command += ["--batch-expire-after", "1", "--batch-max-requests", "5", "--require-api-key", KEY]
    root = Path(__file__).resolve().parent.parent  # this tree's llmbatch, whatever is installed
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=root)
    try:
        assert proc.stderr is not None
        url = proc.stderr.readline().split(" listening on ")[1].split()[0]
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        batch = submit(client, [line("a", "x"), line("b", "y")])
        too_many = submit(client, [line(f"r{i}", "x") for i in range(6)])
        httpx.post(f"{url.removesuffix('/v1')}/clock/advance", json={"seconds": 3600})
        done = client.batches.retrieve(batch.id)
        assert done.status == "expired" and done.request_counts is not None and done.request_counts.completed == 1
        failed = client.batches.retrieve(too_many.id)
        assert failed.errors is not None and failed.errors.data is not None
        assert failed.status == "failed" and failed.errors.data[0].code == "too_many_tasks"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_llmbatch_sim_refuses_a_bad_batch_option() -> None:
    run = run_cli(["sim", "--batch-processing", "soon"])
    assert run.exit_code == 2 and "--batch-processing" in run.stderr
