"""The provider layer: the real any-llm OpenAI client against the simulator, and how each
failure is classified (retryable, permanent for the line, or fatal for the run)."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json

import pytest

from llmbatch.input import parse_line
from llmbatch.providers.anyllm import AnyLLMProvider
from llmbatch.providers.base import CallError, classify, parse_retry_after, redact
from tests.support import TEST_API_KEY


def request(prompt: str = "hello", **fields):
    return parse_line(json.dumps({"prompt": prompt, "model": "openai:gpt-4o-mini", **fields}), 1)


def attempt(provider: AnyLLMProvider, req, timeout_s: float = 10.0):
    async def main():
        try:
            return await provider.complete(req, timeout_s=timeout_s)
        finally:
            await provider.aclose()

    return asyncio.run(main())


def failure(provider: AnyLLMProvider, req, timeout_s: float = 10.0) -> CallError:
    with pytest.raises(CallError) as info:
        attempt(provider, req, timeout_s)
    return info.value


def test_a_completion_arrives_as_json_data_with_its_latency(sim):
    reply = attempt(AnyLLMProvider(api_base=sim.url, api_key="k"), request("hi there", max_tokens=50))
    assert reply.response["choices"][0]["message"]["content"].endswith("to: hi there")
    assert reply.response["usage"]["prompt_tokens"] == 2
    assert reply.latency_s >= 0
    json.dumps(reply.response)  # plain JSON, ready for the cache


def test_the_sdk_does_not_retry_on_its_own(simulator):
    always_down = simulator(p503=1.0)
    error = failure(AnyLLMProvider(api_base=always_down.url, api_key="k"), request())
    assert error.kind == "retryable" and error.status_code == 503
    assert always_down.stats()["requests_received"] == 1  # max_retries=0: tenacity alone retries


def test_a_429_is_retryable_and_carries_retry_after(simulator):
    limited = simulator(p429=1.0, retry_after_s=3)
    error = failure(AnyLLMProvider(api_base=limited.url, api_key="k"), request())
    assert (error.kind, error.status_code, error.retry_after_s) == ("retryable", 429, 3.0)


def test_a_429_for_a_request_too_large_for_the_token_limit_is_permanent_and_says_what_to_do(simulator):
    tight = simulator(tpm=60)  # a request of 70 tokens never fits, however long it waits
    error = failure(AnyLLMProvider(api_base=tight.url, api_key="k"), request("w " * 30, max_tokens=40))
    assert (error.kind, error.type, error.status_code) == ("permanent", "RequestTooLarge", 429)
    assert "lower max_tokens or split the prompt" in error.message and "it needs 70 tokens" in error.message


class Refusal(Exception):
    """What an SDK raises, as far as ``classify`` reads it."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def test_openais_request_too_large_is_permanent_and_its_rate_limit_reached_is_retried():
    too_large = (
        "Request too large for gpt-4o-mini in organization org-abc on tokens per min (TPM): Limit 30000, "
        "Requested 50000. The input or output tokens must be reduced in order to run successfully."
    )
    assert classify(Refusal(too_large, 429)).kind == "permanent"
    reached = (
        "Rate limit reached for gpt-4o-mini in organization org-abc on tokens per min (TPM): Limit 30000, "
        "Used 29000, Requested 2000. Please try again in 2s."
    )
    assert classify(Refusal(reached, 429)).kind == "retryable"
    assert classify(Refusal(too_large, 413)).type == "Refusal"  # only a 429 is read this way


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
def test_server_errors_and_timeouts_statuses_are_retryable(sim, status):
    error = failure(AnyLLMProvider(api_base=sim.url, api_key="k"), request(f"x [[sim:status={status}]]"))
    assert error.kind == "retryable" and error.status_code == status


@pytest.mark.parametrize("status", [400, 422])
def test_a_rejected_request_is_permanent(sim, status):
    error = failure(AnyLLMProvider(api_base=sim.url, api_key="k"), request(f"x [[sim:status={status}]]"))
    assert error.kind == "permanent" and error.status_code == status


def test_a_hung_request_ends_at_the_timeout_and_is_retryable(simulator):
    hung = simulator(phang=1.0)
    error = failure(AnyLLMProvider(api_base=hung.url, api_key="k"), request(), timeout_s=0.3)
    assert error.kind == "retryable" and error.status_code is None


def test_a_dropped_connection_is_retryable(simulator):
    dropping = simulator(pdrop=1.0)
    error = failure(AnyLLMProvider(api_base=dropping.url, api_key="k"), request())
    assert error.kind == "retryable" and error.status_code is None


def test_a_wrong_api_key_is_fatal_and_the_key_is_not_in_the_message(simulator):
    locked = simulator(require_api_key="sk-right-key-1234567890")
    error = failure(AnyLLMProvider(api_base=locked.url, api_key=TEST_API_KEY), request())
    assert error.kind == "fatal" and error.status_code == 401
    assert TEST_API_KEY not in error.message and "sk-right" not in error.message


def test_an_unknown_model_is_fatal(simulator):
    strict = simulator(models=("other",))
    error = failure(AnyLLMProvider(api_base=strict.url, api_key="k"), request())
    assert error.kind == "fatal" and error.status_code == 404 and "gpt-4o-mini" in error.message


def test_a_missing_api_key_is_fatal_and_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    error = failure(AnyLLMProvider(), request())
    assert error.kind == "fatal" and "OPENAI_API_KEY" in error.message


def test_a_provider_any_llm_does_not_know_is_fatal_if_one_ever_gets_past_the_input_check():
    # The input check refuses names missing from ENV_API_BASE (test_cli_run.py); this is the net
    # under it, should the two lists ever disagree.
    req = dataclasses.replace(request(), provider="nosuchprovider", model="m")
    error = failure(AnyLLMProvider(api_key="k"), req)
    assert error.kind == "fatal" and "nosuchprovider" in error.message


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_redact_removes_known_secrets_and_key_shaped_strings():
    text = f"Incorrect API key provided: {TEST_API_KEY}. Also sk-proj-ABCDEFGH12345678 leaked."
    clean = redact(text, (TEST_API_KEY,))
    assert TEST_API_KEY not in clean and "sk-proj-ABCDEFGH12345678" not in clean
    assert clean.startswith("Incorrect API key provided: [redacted]")


def test_the_status_decides_even_when_the_message_sounds_fatal(sim):
    # any-llm picks its exception type from the message text: a 400 that mentions "author"
    # arrives as an AuthenticationError, but it is this line's problem, not the run's.
    error = failure(AnyLLMProvider(api_base=sim.url, api_key="k"), request("x [[sim:author=1]]"))
    assert error.status_code == 400 and error.kind == "permanent"


def test_the_base_url_table_matches_the_installed_any_llm():
    from any_llm import AnyLLM
    from any_llm.constants import LLMProvider

    from llmbatch.providers.base import ENV_API_BASE

    for provider in LLMProvider:
        try:
            cls = AnyLLM.get_provider_class(provider.value)
        except ImportError:
            continue  # an optional SDK that is not installed here
        name = getattr(cls, "ENV_API_BASE_NAME", None)
        if name:
            assert ENV_API_BASE.get(provider.value) == name, provider.value
    # Every provider, SDK installed or not: a name missing here is refused on an input line.
    assert set(ENV_API_BASE) == {provider.value for provider in LLMProvider}
