"""The request key: everything that can change the answer is in it, nothing else is."""

from __future__ import annotations

import json

import pytest

from llmbatch.input import Defaults, parse_line
from llmbatch.keys import SIMULATOR_ENDPOINT, canonical_json, credentials, key_material, request_key
from llmbatch.urls import secret_name

BASE = {
    "id": "q1",
    "prompt": "What is the capital of France?",
    "system": "Answer in one word.",
    "model": "openai:gpt-4o-mini",
    "temperature": 0,
    "max_tokens": 16,
}


def key_of(row: dict, endpoint: str | None = None, defaults: Defaults | None = None) -> str:
    return request_key(parse_line(json.dumps(row), 1, defaults or Defaults()), endpoint)


def test_one_fixed_request_maps_to_a_pinned_key():
    # If this fails, every user's cache silently empties: bump KEY_VERSION on purpose instead.
    assert key_of(BASE) == "v1:3eb0d02b8d1077022a2eb2973199cb6795f0ea1dab5a3babb92c98b2f38b3ff7"
    assert key_of(BASE, "http://localhost:8000/v1") == (
        "v1:bec5143f551f7b7cfcae3dc01bfb8676b9d64ab9e947775ca00c6c540784931d"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "What is the capital of Spain?"},
        {"system": "Answer in two words."},
        {"model": "openai:gpt-4o"},
        {"model": "anthropic:gpt-4o-mini"},
        {"temperature": 0.7},
        {"max_tokens": 17},
        {"top_p": 0.5},
        {"stop": ["\n"]},
        {"seed": 1},
        {"n": 2},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "auto"},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"logit_bias": {"50256": -100}},
        {"logprobs": True},
        {"reasoning_effort": "low"},
        {"max_completion_tokens": 16},
        {"extra": {"top_k": 40}},
        {"sample": 1},
    ],
    ids=lambda change: next(iter(change)),
)
def test_each_answer_affecting_field_changes_the_key(change):
    assert key_of({**BASE, **change}) != key_of(BASE)


def test_the_endpoint_is_part_of_the_key_when_set():
    assert key_of(BASE, "http://a:8000/v1") != key_of(BASE)
    assert key_of(BASE, "http://a:8000/v1") != key_of(BASE, "http://b:8000/v1")
    assert key_of(BASE, "http://a:8000/v1/") == key_of(BASE, "http://a:8000/v1")
    assert key_of(BASE, SIMULATOR_ENDPOINT) not in (key_of(BASE), key_of(BASE, "http://a:8000/v1"))


@pytest.mark.parametrize(
    "change",
    [{"id": "another-id"}, {"metadata": {"split": "eval"}}, {"metadata": None}],
    ids=["id", "metadata", "null-metadata"],
)
def test_id_and_metadata_do_not_change_the_key(change):
    assert key_of({**BASE, **change}) == key_of(BASE)


def test_field_order_does_not_change_the_key():
    assert key_of(dict(reversed(list(BASE.items())))) == key_of(BASE)
    nested = {**BASE, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True}}}
    reordered = {**BASE, "response_format": {"json_schema": {"strict": True, "name": "x"}, "type": "json_schema"}}
    assert key_of(nested) == key_of(reordered)


def test_prompt_and_system_give_the_same_key_as_the_equivalent_messages():
    messages = {k: v for k, v in BASE.items() if k not in ("prompt", "system")}
    messages["messages"] = [
        {"role": "system", "content": BASE["system"]},
        {"role": "user", "content": BASE["prompt"]},
    ]
    assert key_of(messages) == key_of(BASE)


def test_a_batch_api_line_gives_the_same_key_as_the_plain_line():
    batch = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": BASE["system"]}, {"role": "user", "content": BASE["prompt"]}],
            "temperature": 0,
            "max_tokens": 16,
        },
    }
    assert key_of(batch) == key_of(BASE)


def test_equal_numbers_spelled_differently_share_a_key():
    assert key_of({**BASE, "temperature": 0.0}) == key_of({**BASE, "temperature": 0})


def test_a_null_parameter_is_the_same_as_leaving_it_out():
    assert key_of({**BASE, "top_p": None}) == key_of(BASE)


def test_the_model_from_the_command_line_counts_like_one_on_the_line():
    bare = {k: v for k, v in BASE.items() if k != "model"}
    assert key_of(bare, defaults=Defaults(model="openai:gpt-4o-mini")) == key_of(BASE)
    assert key_of({**bare, "model": "gpt-4o-mini"}, defaults=Defaults(provider="openai")) == key_of(BASE)


def test_the_api_key_and_timeout_are_not_in_the_key_material():
    material = key_material(parse_line(json.dumps(BASE), 1))
    assert set(material) == {"provider", "endpoint", "model", "messages", "params", "extra", "sample"}


def test_canonical_json_is_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": {"d": "é", "c": [1, 2]}}) == '{"a":{"c":[1,2],"d":"é"},"b":1}'.encode()


def test_credentials_in_a_base_url_never_enter_a_key_or_an_entry():
    from llmbatch.providers.base import Destination

    plain = Destination(api_base="https://proxy.example/v1?api-version=2024-06-01")
    assert plain.key_endpoint("openai") == "https://proxy.example/v1?api-version=2024-06-01"  # as given
    for url in ("https://bob:s3cret@proxy.example/v1", "https://proxy.example/v1?api-key=s3cret"):
        endpoint = Destination(api_base=url).key_endpoint("openai")
        assert endpoint is not None and "s3cret" not in endpoint and "bob" not in endpoint
    assert Destination(api_base="https://proxy.example/v1?token=s3cret&api-version=1").key_endpoint("openai") == (
        "https://proxy.example/v1?api-version=1"
    )


def test_credential_headers_stay_out_of_the_key_and_answer_shaping_headers_stay_in():
    def with_headers(**headers: str) -> dict:
        return {**BASE, "extra": {"extra_headers": {k.replace("_", "-"): v for k, v in headers.items()}}}

    one, two = with_headers(Authorization="Bearer tok-1"), with_headers(Authorization="Bearer tok-2")
    assert key_of(one) == key_of(two)  # a rotated proxy token still hits
    for name in ("Proxy_Authorization", "api_key", "X_API_KEY", "Cookie", "X_Auth_Token", "X_Client_Secret"):
        assert key_of(with_headers(**{name: "a"})) == key_of(with_headers(**{name: "b"})), name
    for name in ("OpenAI_Beta", "anthropic_beta", "X_Max_Tokens"):
        assert key_of(with_headers(**{name: "a"})) != key_of(with_headers(**{name: "b"})), name
    request = parse_line(json.dumps(with_headers(Authorization="Bearer tok-1", OpenAI_Beta="assistants=v2")), 1)
    assert key_material(request)["extra"] == {"extra_headers": {"OpenAI-Beta": "assistants=v2"}}
    assert request.extra["extra_headers"]["Authorization"] == "Bearer tok-1"  # still sent


def test_a_credential_query_parameter_stays_out_of_the_key_and_is_redacted_like_a_header():
    def with_query(**query: str) -> dict:
        return {**BASE, "extra": {"extra_query": {k.replace("_", "-"): v for k, v in query.items()}}}

    assert key_of(with_query(api_key="s3cret-1")) == key_of(with_query(api_key="s3cret-2"))
    assert key_of(with_query(api_version="1")) != key_of(with_query(api_version="2"))  # shapes the answer
    request = parse_line(json.dumps(with_query(api_key="s3cret-1", api_version="1")), 1)
    assert key_material(request)["extra"] == {"extra_query": {"api-version": "1"}}
    assert request.extra["extra_query"]["api-key"] == "s3cret-1"  # still sent
    assert credentials(request.extra) == ("s3cret-1",)


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "Proxy-Authorization",
        "X-API-Key",
        "api_key",
        "apiKey",
        "Helicone-Auth",
        "X-Auth-Token",
        "access_token",
        "Cookie",
        "X-Client-Secret",
        "password",
        "sig",
        "Ocp-Apim-Subscription-Key",
        # A review found these stored in the cache, exported and shown by `cache explain`:
        "X-Authentication",
        "X-Api-Keys",
        "api_keys",
        "ApiKeys",
        "client_secrets",
        "passphrase",
        "X-JWT",
        "X-Authn",
    ],
)
def test_names_that_carry_a_credential_are_secrets(name):
    assert secret_name(name)
    one = {**BASE, "extra": {"extra_query": {name: "secret-one"}, "extra_headers": {name: "secret-one"}}}
    two = {**BASE, "extra": {"extra_query": {name: "secret-two"}, "extra_headers": {name: "secret-two"}}}
    assert key_of(one) == key_of(two)  # left out of the key material, so never stored


def test_a_base_url_keeps_no_credential_in_the_key_endpoint():
    from llmbatch.providers.base import without_credentials

    url = "http://proxy:8000/v1?authentication=AUTHN&apikeys=KEYS&deployment=blue"
    assert without_credentials(url) == "http://proxy:8000/v1?deployment=blue"


@pytest.mark.parametrize("name", ["keywords", "X-Author-Style", "X-Author", "X-Max-Tokens", "OpenAI-Beta", "monkey"])
def test_names_that_only_contain_a_secret_word_stay_in_the_key(name):
    # Left out of the key, they would make two requests that differ in them share an answer.
    assert not secret_name(name)
    one = {**BASE, "extra": {"extra_query": {name: "cats"}, "extra_headers": {name: "cats"}}}
    two = {**BASE, "extra": {"extra_query": {name: "dogs"}, "extra_headers": {name: "dogs"}}}
    assert key_of(one) != key_of(two)


def test_extra_without_credential_headers_keeps_the_key_it_had():
    # Pinned before credential headers were left out: such keys must not move (no KEY_VERSION bump).
    row = {**BASE, "extra": {"extra_headers": {"OpenAI-Beta": "assistants=v2"}, "top_k": 40}}
    assert key_of(row) == "v1:c54674d3b114f5545ddafc02a0e39a829b652a41aa613cbc17ee443294204a0c"
