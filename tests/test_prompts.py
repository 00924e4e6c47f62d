"""The input validator, as a pure function: three line shapes in, one ``Request`` out, or a
message saying exactly what is wrong with the line. No network, no CLI."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from llmbatch.errors import InputError, LineError
from llmbatch.input import (
    Defaults,
    IdHashes,
    InvalidLine,
    Request,
    check_lines,
    combine_parts,
    count_lines_before,
    line_start_near,
    parse_line,
    read_requests,
    validate_file,
)
from llmbatch.keys import request_key

MODEL = Defaults(model="openai:gpt-4o-mini")
USER_HI = {"role": "user", "content": "Say hi"}
SYSTEM_BRIEF = {"role": "system", "content": "Be brief"}


def line(obj: dict[str, Any] | str | bytes) -> bytes:
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, str):
        return obj.encode()
    return json.dumps(obj).encode()


def parse(obj: dict[str, Any] | str | bytes, defaults: Defaults = MODEL, number: int = 1) -> Request:
    return parse_line(line(obj), number, defaults)


def error_of(obj: dict[str, Any] | str | bytes, defaults: Defaults = MODEL) -> str:
    with pytest.raises(InvalidLine) as caught:
        parse(obj, defaults)
    return str(caught.value)


def batch(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": body, **fields}


# --- the three shapes ------------------------------------------------------------------------


def test_a_prompt_line_parses_to_a_request_with_normalised_messages():
    request = parse(
        {
            "id": "q1",
            "prompt": "Say hi",
            "system": "Be brief",
            "model": "openai:gpt-4o",
            "temperature": 0,
            "max_tokens": 20,
            "metadata": {"run": [1, "a"]},
            "sample": 2,
            "extra": {"store": True},
        },
        number=3,
    )
    assert request == Request(
        line=3,
        id="q1",
        provider="openai",
        model="gpt-4o",
        messages=[SYSTEM_BRIEF, USER_HI],
        params={"temperature": 0.0, "max_tokens": 20},
        extra={"store": True},
        sample=2,
        metadata={"run": [1, "a"]},
    )
    assert request.model_ref == "openai:gpt-4o"


def test_a_prompt_line_without_system_has_one_user_message():
    assert parse({"prompt": "Say hi"}).messages == [USER_HI]


def test_a_messages_line_parses_to_a_request():
    messages = [SYSTEM_BRIEF, USER_HI, {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Again"}]
    request = parse({"id": 7, "messages": messages, "top_p": 0.5}, number=2)
    assert request == Request(
        line=2, id=7, provider="openai", model="gpt-4o-mini", messages=messages, params={"top_p": 0.5}
    )


def test_prompt_and_system_equal_the_messages_form_and_share_a_key():
    simple = parse({"id": "p", "prompt": "Say hi", "system": "Be brief", "temperature": 0.3})
    messages = parse({"id": "m", "messages": [SYSTEM_BRIEF, USER_HI], "temperature": 0.3})
    as_batch = parse(batch({"model": "gpt-4o-mini", "messages": [SYSTEM_BRIEF, USER_HI], "temperature": 0.3}))
    assert simple.messages == messages.messages == as_batch.messages == [SYSTEM_BRIEF, USER_HI]
    assert simple.params == messages.params == as_batch.params == {"temperature": 0.3}
    assert request_key(simple) == request_key(messages) == request_key(as_batch)


def test_a_batch_line_puts_parameters_in_params_and_openai_only_fields_in_extra():
    body = {
        "model": "gpt-4o-mini",
        "messages": [USER_HI],
        "temperature": 0.2,
        "max_tokens": 50,
        "stop": ["\n"],
        "store": True,
        "metadata": {"team": "eval"},
        "prompt_cache_key": "k1",
        "verbosity": None,  # null: left out, like a null parameter
    }
    request = parse(batch(body), Defaults(), number=4)
    assert request == Request(
        line=4,
        id="r1",
        provider="openai",
        model="gpt-4o-mini",
        messages=[USER_HI],
        params={"temperature": 0.2, "max_tokens": 50, "stop": ["\n"], "prompt_cache_key": "k1"},
        extra={"store": True, "metadata": {"team": "eval"}},
        sample=0,
        metadata=None,
    )


def test_a_batch_line_may_leave_out_method_and_url_and_use_the_short_url():
    request = parse({"custom_id": 9, "url": "/chat/completions", "body": {"messages": [USER_HI]}})
    assert (request.id, request.provider, request.model) == (9, "openai", "gpt-4o-mini")
    assert parse({"body": {"model": "openai:gpt-4o", "messages": [USER_HI]}}, number=6).id == 6


def test_an_assistant_turn_that_only_calls_tools_needs_no_content():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        USER_HI,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert parse({"messages": messages}).messages == messages


def test_id_defaults_to_the_line_number():
    assert parse({"prompt": "x"}, number=12).id == 12
    assert parse({"messages": [USER_HI]}, number=13).id == 13


def test_metadata_is_carried_untouched_and_sample_defaults_to_zero():
    request = parse({"prompt": "x", "metadata": [None, {"deep": {"x": 1.5}}, "s"]})
    assert request.metadata == [None, {"deep": {"x": 1.5}}, "s"]
    assert request.sample == 0 and request.extra == {} and request.params == {}


# --- models ----------------------------------------------------------------------------------


def test_the_line_model_overrides_the_default_model():
    request = parse({"prompt": "x", "model": "anthropic:claude-3-5-haiku"}, Defaults(model="openai:gpt-4o"))
    assert (request.provider, request.model) == ("anthropic", "claude-3-5-haiku")


def test_the_provider_is_lower_cased_and_the_model_keeps_everything_after_the_first_colon():
    request = parse({"prompt": "x", "model": "OpenAI:ft:gpt-4o-mini:org::abc"})
    assert (request.provider, request.model) == ("openai", "ft:gpt-4o-mini:org::abc")


def test_a_bare_model_is_accepted_with_a_default_provider():
    request = parse({"prompt": "x", "model": "mistral-small"}, Defaults(provider="Mistral"))
    assert (request.provider, request.model) == ("mistral", "mistral-small")
    from_option = parse({"prompt": "x"}, Defaults(model="gpt-4o", provider="openai"))
    assert (from_option.provider, from_option.model) == ("openai", "gpt-4o")


def test_a_bare_model_in_a_batch_body_means_openai_unless_a_provider_is_given():
    body = {"model": "gpt-4o-mini", "messages": [USER_HI]}
    assert parse(batch(body), Defaults()).provider == "openai"
    assert parse(batch(body), Defaults(provider="azure")).provider == "azure"


# --- invalid lines ---------------------------------------------------------------------------

NO_PROVIDER = "model 'gpt-4o' has no provider: write \"openai:gpt-4o\" (or another provider) or pass --provider"
STREAMING = 'streaming is not supported: llmbatch stores whole answers (remove "stream")'
BAD_MODEL_SHAPE = 'must look like "provider:model" (for example "openai:gpt-4o-mini")'

INVALID: list[tuple[str, Any, str]] = [
    # not a JSON object
    ("not an object: array", b"[1, 2]", "expected a JSON object, got an array"),
    ("not an object: string", b'"Say hi"', "expected a JSON object, got a string"),
    ("not an object: null", b"null", "expected a JSON object, got null"),
    ("not an object: number", b"42", "expected a JSON object, got an integer"),
    ("non-UTF-8 byte", b'{"prompt": "caf\xe9"}', "not valid UTF-8 (byte 0xe9 at column 16)"),
    # neither or both
    ("neither prompt nor messages", {"id": "a"}, 'missing "prompt" (a string) or "messages" (an array)'),
    ("empty object", {}, 'missing "prompt" (a string) or "messages" (an array)'),
    (
        "both prompt and messages",
        {"prompt": "x", "messages": [USER_HI]},
        'give either "prompt" or "messages", not both',
    ),
    # prompt and system
    ("prompt not a string", {"prompt": ["x"]}, '"prompt" must be a string, got an array'),
    ("prompt null", {"prompt": None}, '"prompt" must be a string, got null'),
    ("empty prompt", {"prompt": ""}, '"prompt" is empty'),
    ("whitespace prompt", {"prompt": " \n\t"}, '"prompt" is empty'),
    ("system not a string", {"prompt": "x", "system": 3}, '"system" must be a string, got an integer'),
    (
        "system with messages",
        {"messages": [USER_HI], "system": "Be brief"},
        '"system" goes with "prompt"; with "messages", add a {"role": "system"} message',
    ),
    # messages
    ("messages not a list", {"messages": "Say hi"}, '"messages" must be an array, got a string'),
    ("messages an object", {"messages": USER_HI}, '"messages" must be an array, got an object'),
    ("empty messages", {"messages": []}, '"messages" must not be empty'),
    ("message not an object", {"messages": [USER_HI, "hi"]}, '"messages"[1] must be an object, got a string'),
    ("message without role", {"messages": [{"content": "x"}]}, '"messages"[0] has no "role"'),
    (
        "unknown role",
        {"messages": [{"role": "robot", "content": "x"}]},
        "\"messages\"[0] has unknown role 'robot' (expected one of assistant, developer, function, system, tool, user)",
    ),
    ("message without content", {"messages": [{"role": "user"}]}, '"messages"[0] has no "content"'),
    (
        "assistant without content or tool calls",
        {"messages": [USER_HI, {"role": "assistant"}]},
        '"messages"[1] has no "content"',
    ),
    (
        "content of a wrong type",
        {"messages": [{"role": "user", "content": 5}]},
        '"messages"[0] "content" must be a string or an array, got an integer',
    ),
    (
        "user message with empty content",
        {"messages": [SYSTEM_BRIEF, {"role": "user", "content": "  "}]},
        '"messages"[1] has empty content',
    ),
    # parameters
    ("temperature a string", {"prompt": "x", "temperature": "0.5"}, '"temperature" must be a number, got a string'),
    ("temperature a boolean", {"prompt": "x", "temperature": True}, '"temperature" must be a number, got a boolean'),
    ("temperature negative", {"prompt": "x", "temperature": -0.5}, '"temperature" must be at least 0, got -0.5'),
    ("top_p above 1", {"prompt": "x", "top_p": 1.5}, '"top_p" must be at most 1, got 1.5'),
    ("top_p negative", {"prompt": "x", "top_p": -0.1}, '"top_p" must be at least 0, got -0.1'),
    ("max_tokens 0", {"prompt": "x", "max_tokens": 0}, '"max_tokens" must be at least 1, got 0'),
    ("max_tokens negative", {"prompt": "x", "max_tokens": -5}, '"max_tokens" must be at least 1, got -5'),
    ("max_tokens fractional", {"prompt": "x", "max_tokens": 10.5}, '"max_tokens" must be an integer, got a number'),
    ("max_tokens a boolean", {"prompt": "x", "max_tokens": True}, '"max_tokens" must be an integer, got a boolean'),
    ("max_tokens a string", {"prompt": "x", "max_tokens": "100"}, '"max_tokens" must be an integer, got a string'),
    (
        "max_completion_tokens 0",
        {"prompt": "x", "max_completion_tokens": 0},
        '"max_completion_tokens" must be at least 1, got 0',
    ),
    ("n 0", {"prompt": "x", "n": 0}, '"n" must be at least 1, got 0'),
    ("seed a string", {"prompt": "x", "seed": "1"}, '"seed" must be an integer, got a string'),
    ("stop a number", {"prompt": "x", "stop": 5}, '"stop" must be a string or an array of strings, got an integer'),
    (
        "stop with a non-string",
        {"prompt": "x", "stop": ["a", 1]},
        '"stop" must be a string or an array of strings, got an array',
    ),
    ("presence_penalty above 2", {"prompt": "x", "presence_penalty": 3}, '"presence_penalty" must be at most 2, got 3'),
    (
        "frequency_penalty below -2",
        {"prompt": "x", "frequency_penalty": -2.5},
        '"frequency_penalty" must be at least -2, got -2.5',
    ),
    ("logprobs not a boolean", {"prompt": "x", "logprobs": 1}, '"logprobs" must be true or false, got an integer'),
    ("top_logprobs negative", {"prompt": "x", "top_logprobs": -1}, '"top_logprobs" must be at least 0, got -1'),
    ("logit_bias not an object", {"prompt": "x", "logit_bias": [1]}, '"logit_bias" must be an object, got an array'),
    (
        "logit_bias value not a number",
        {"prompt": "x", "logit_bias": {"50256": "-100"}},
        '"logit_bias" values must be numbers, got a string for "50256"',
    ),
    (
        "response_format a string",
        {"prompt": "x", "response_format": "json"},
        '"response_format" must be an object, got a string',
    ),
    (
        "tools not an array of objects",
        {"prompt": "x", "tools": [{"type": "function"}, "f"]},
        '"tools" must be an array of objects, got an array',
    ),
    (
        "tool_choice a number",
        {"prompt": "x", "tool_choice": 1},
        '"tool_choice" must be a string or an object, got an integer',
    ),
    (
        "unknown reasoning_effort",
        {"prompt": "x", "reasoning_effort": "extreme"},
        "\"reasoning_effort\" must be one of none, minimal, low, medium, high, xhigh, max, auto, got 'extreme'",
    ),
    ("user a number", {"prompt": "x", "user": 1}, '"user" must be a string, got an integer'),
    # refused options
    ("stream true", {"prompt": "x", "stream": True}, STREAMING),
    (
        "stream_options",
        {"messages": [USER_HI], "stream_options": {"include_usage": True}},
        'streaming is not supported: llmbatch stores whole answers (remove "stream_options")',
    ),
    ("per-line timeout", {"prompt": "x", "timeout": 5}, 'a per-line "timeout" is not supported: use --timeout'),
    # unknown fields
    (
        "misspelt temperature",
        {"prompt": "x", "temprature": 0.2},
        'unknown field "temprature" (did you mean "temperature"?)',
    ),
    ("misspelt max_tokens", {"prompt": "x", "max_token": 5}, 'unknown field "max_token" (did you mean "max_tokens"?)'),
    ("misspelt prompt", {"promt": "x"}, 'unknown field "promt" (did you mean "prompt"?)'),
    (
        "an API key in extra",
        {"prompt": "x", "extra": {"api_key": "sk-x"}},
        '"extra" must not contain "api_key": set the provider\'s key in the environment (e.g. OPENAI_API_KEY)',
    ),
    (
        "a base URL in extra",
        {"prompt": "x", "extra": {"api_base": "http://x"}},
        '"extra" must not contain "api_base": use --api-base or the provider\'s base URL variable',
    ),
    ("unknown field with no near match", {"prompt": "x", "zzzz": 1}, 'unknown field "zzzz"'),
    ("custom_id on a prompt line", {"prompt": "x", "custom_id": "a"}, 'unknown field "custom_id"'),
    # id, sample, extra
    ("id a float", {"id": 1.5, "prompt": "x"}, '"id" must be a string or an integer, got a number'),
    ("id a boolean", {"id": True, "prompt": "x"}, '"id" must be a string or an integer, got a boolean'),
    ("id null", {"id": None, "prompt": "x"}, '"id" must be a string or an integer, got null'),
    ("id an array", {"id": ["a"], "prompt": "x"}, '"id" must be a string or an integer, got an array'),
    ("id empty", {"id": "", "prompt": "x"}, '"id" must not be empty'),
    ("id blank", {"id": "   ", "prompt": "x"}, '"id" must not be empty'),
    ("sample negative", {"prompt": "x", "sample": -1}, '"sample" must be a non-negative integer, got -1'),
    ("sample fractional", {"prompt": "x", "sample": 1.5}, '"sample" must be a non-negative integer, got a number'),
    ("extra not an object", {"prompt": "x", "extra": ["store"]}, '"extra" must be an object, got an array'),
    ("extra a string", {"prompt": "x", "extra": "store"}, '"extra" must be an object, got a string'),
    (
        "extra repeating a parameter",
        {"prompt": "x", "temperature": 0.5, "extra": {"temperature": 1}},
        '"extra" must not contain "temperature": give it as a field of the line',
    ),
    (
        "extra hiding an unchecked parameter",
        {"prompt": "x", "extra": {"max_tokens": -1}},
        '"extra" must not contain "max_tokens": give it as a field of the line',
    ),
    (
        "extra setting the model",
        {"prompt": "x", "extra": {"model": "gpt-4o"}},
        '"extra" must not contain "model": give it as a field of the line',
    ),
    ("extra asking for streaming", {"prompt": "x", "extra": {"stream": True}}, STREAMING),
    # models
    ("model not a string", {"prompt": "x", "model": 4}, '"model" must be a string, got an integer'),
    ("model empty", {"prompt": "x", "model": "  "}, '"model" must not be empty'),
    ("provider without model", {"prompt": "x", "model": "openai:"}, f"model 'openai:' {BAD_MODEL_SHAPE}"),
    ("model without provider name", {"prompt": "x", "model": ":gpt-4o"}, f"model ':gpt-4o' {BAD_MODEL_SHAPE}"),
    ("bare model without provider", {"prompt": "x", "model": "gpt-4o"}, NO_PROVIDER),
    # batch lines
    (
        "batch url other than chat completions",
        batch({"messages": [USER_HI]}, url="/v1/embeddings"),
        '"url" \'/v1/embeddings\' is not supported: llmbatch runs "/v1/chat/completions" requests',
    ),
    (
        "batch url of the responses API",
        batch({"messages": [USER_HI]}, url="/v1/responses"),
        '"url" \'/v1/responses\' is not supported: llmbatch runs "/v1/chat/completions" requests',
    ),
    ("batch method GET", batch({"messages": [USER_HI]}, method="GET"), '"method" must be "POST", got \'GET\''),
    (
        "batch body missing",
        {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions"},
        '"body" must be an object, got null',
    ),
    ("batch body a string", batch("hi"), '"body" must be an object, got a string'),  # type: ignore[arg-type]
    ("batch body without messages", batch({"model": "gpt-4o-mini"}), '"body" has no "messages"'),
    ("batch body with empty messages", batch({"messages": []}), '"messages" must not be empty'),
    ("unknown batch field", batch({"messages": [USER_HI]}, bdy=1), 'unknown field "bdy" (did you mean "body"?)'),
    ("id on a batch line", batch({"messages": [USER_HI]}, id="x"), 'unknown field "id"'),
    (
        "unknown body field",
        batch({"messages": [USER_HI], "temprature": 1}),
        'unknown field "temprature" (did you mean "temperature"?) in "body"',
    ),
    ("streaming batch body", batch({"messages": [USER_HI], "stream": True}), STREAMING),
    ("bad batch parameter", batch({"messages": [USER_HI], "max_tokens": 0}), '"max_tokens" must be at least 1, got 0'),
    ("batch custom_id empty", batch({"messages": [USER_HI]}, custom_id=""), '"custom_id" must not be empty'),
    (
        "batch custom_id a float",
        batch({"messages": [USER_HI]}, custom_id=1.5),
        '"custom_id" must be a string or an integer, got a number',
    ),
    (
        "batch model not a string",
        batch({"model": 4, "messages": [USER_HI]}),
        '"model" must be a string, got an integer',
    ),
]


@pytest.mark.parametrize(("raw", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_an_invalid_line_is_refused_with_a_precise_message(raw, message):
    assert error_of(raw) == message


@pytest.mark.parametrize(
    "raw",
    [
        b"{bad",
        b"{'prompt': 'x'}",
        b'{"prompt": "x",}',
        b'{"prompt": "x"} {"prompt": "y"}',
        b"not json",
        b'{"prompt": "x", "temperature": 1e999}',
    ],
    ids=["unclosed", "single quotes", "trailing comma", "two objects", "plain text", "infinity"],
)
def test_malformed_json_is_reported_as_such(raw):
    assert error_of(raw).startswith("malformed JSON: ")


def test_a_line_without_a_model_needs_the_model_option():
    assert error_of({"prompt": "x"}, Defaults()) == (
        'no model: add "model" to the line or pass --model (for example --model openai:gpt-4o-mini)'
    )


def test_a_bare_default_model_without_a_provider_is_refused():
    assert error_of({"prompt": "x"}, Defaults(model="gpt-4o")) == NO_PROVIDER


# --- normalisation ---------------------------------------------------------------------------


def test_null_parameters_are_treated_as_absent():
    nulls = {"temperature": None, "max_tokens": None, "stop": None, "seed": None, "top_p": None}
    assert parse({"prompt": "x", **nulls}) == parse({"prompt": "x"})
    in_body = parse(batch({"messages": [USER_HI], **nulls, "store": None}))
    assert in_body.params == {} and in_body.extra == {}


def test_zero_and_zero_point_zero_temperature_are_the_same_request():
    as_int = parse({"prompt": "x", "temperature": 0})
    as_float = parse({"prompt": "x", "temperature": 0.0})
    assert as_int == as_float
    assert type(as_int.params["temperature"]) is float
    assert request_key(as_int) == request_key(as_float)
    assert request_key(parse({"prompt": "x", "temperature": 1})) == request_key(
        parse({"prompt": "x", "temperature": 1.0})
    )


def test_parse_line_accepts_text_as_well_as_bytes():
    assert parse_line('{"prompt": "café"}', 1, MODEL).messages == [{"role": "user", "content": "café"}]


# --- whole files -----------------------------------------------------------------------------


def write(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    path.write_bytes(b"".join(line(row) + b"\n" for row in rows))
    return path


def test_validate_file_reports_duplicate_ids_with_the_first_line(tmp_path):
    path = write(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "one"},
            {"id": "b", "prompt": "two"},
            {"id": "a", "prompt": "three"},
            "",
            {"id": "b", "messages": [USER_HI]},
            {"id": "a", "prompt": "again"},
        ],
    )
    report = validate_file(path, MODEL)
    assert report.errors == [
        LineError(str(path), 3, "duplicate id 'a' (first used on line 1)"),
        LineError(str(path), 5, "duplicate id 'b' (first used on line 2)"),
        LineError(str(path), 6, "duplicate id 'a' (first used on line 1)"),
    ]
    assert report.total_errors == 3


@pytest.mark.parametrize("temporary_files", ["usable", "unusable"])
def test_duplicate_ids_far_apart_in_a_long_file_are_found(tmp_path, monkeypatch, temporary_files):
    # Long enough for the id hashes to be sorted in several runs, spilled to a temporary file; or,
    # where none can be written (a full disk), kept in memory.
    if temporary_files == "unusable":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        monkeypatch.setattr(tempfile, "tempdir", str(blocker))
    rows: list[dict[str, Any] | str] = [{"id": f"q{i}", "prompt": "p"} for i in range(150_000)]
    rows[70_000] = {"id": "q5", "prompt": "the second q5, in another run"}
    rows[149_999] = {"id": "q70001", "prompt": "a neighbour's id, in the last run"}
    rows.append({"id": "q5", "prompt": "the third q5"})
    report = validate_file(write(tmp_path / "p.jsonl", rows), MODEL)
    assert [(e.line, e.message) for e in report.errors] == [
        (70_001, "duplicate id 'q5' (first used on line 6)"),
        (150_000, "duplicate id 'q70001' (first used on line 70002)"),
        (150_001, "duplicate id 'q5' (first used on line 6)"),
    ]
    assert report.requests == 150_001


def test_a_split_point_is_always_the_start_of_a_line_and_knows_its_line_number(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"ab\r\n\ncd\n" + b"e" * 10)  # lines start at 0, 4, 5, 8; the last has no newline
    starts = [line_start_near(path, offset) for offset in range(0, 19)]
    assert starts == [0, 4, 4, 4, 4, 5, 8, 8, 8, *[18] * 10]
    assert [count_lines_before(path, offset) + 1 for offset in (0, 4, 5, 8, 18)] == [1, 2, 3, 4, 4]


@pytest.mark.parametrize("split_near", [1, 500, 20_000, 40_000])
def test_a_file_checked_in_two_parts_reports_exactly_what_one_pass_does(tmp_path, split_near):
    rows: list[dict[str, Any] | str] = [{"id": f"q{i}", "prompt": f"p{i}"} for i in range(1_000)]
    rows[2] = ""
    rows[10] = "{broken"
    rows[600] = {"id": "q3", "prompt": "a reused id"}
    rows[990] = {"id": "q991", "prompt": 5}
    path = write(tmp_path / "p.jsonl", rows)
    whole = validate_file(path, MODEL)

    split = line_start_near(path, split_near)
    with IdHashes() as ids, tempfile.TemporaryFile(buffering=0) as other_file:
        first = check_lines(path, MODEL, ids, source=str(path), end=split)
        other = IdHashes(spill=other_file)  # the second part's ids, as a forked child keeps them
        second = check_lines(
            path, MODEL, other, source=str(path), start=split, first_line=count_lines_before(path, split) + 1
        )
        ids.include(other_file, other.spill_all())
        two = combine_parts(path, MODEL, [first, second], ids, source=str(path))

    assert two == whole
    assert [e.line for e in whole.errors] == [11, 601, 991]


def test_ids_are_compared_as_text_and_a_custom_id_can_clash_with_an_id(tmp_path):
    path = write(
        tmp_path / "p.jsonl",
        [
            {"id": 3, "prompt": "one"},
            {"id": "3", "prompt": "two"},
            batch({"messages": [USER_HI]}, custom_id=3),
            {"prompt": "defaults to line 4"},
            {"id": 4, "prompt": "clashes with the default"},
        ],
    )
    assert [str(e) for e in validate_file(path, MODEL).errors] == [
        f"{path}:2: duplicate id '3' (first used on line 1)",
        f"{path}:3: duplicate id 3 (first used on line 1)",
        f"{path}:5: duplicate id 4 (first used on line 4)",
    ]


def test_validate_file_collects_every_error_not_just_the_first(tmp_path):
    path = write(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": ""},
            {"id": "b", "prompt": "fine"},
            "[1]",
            {"id": "c", "prompt": "x", "temprature": 1},
            {"id": "d", "prompt": "fine too"},
            {"id": "e", "messages": []},
        ],
    )
    report = validate_file(path, MODEL, source="in.jsonl")
    assert [str(e) for e in report.errors] == [
        'in.jsonl:1: "prompt" is empty',
        "in.jsonl:3: expected a JSON object, got an array",
        'in.jsonl:4: unknown field "temprature" (did you mean "temperature"?)',
        'in.jsonl:6: "messages" must not be empty',
    ]
    assert report.total_errors == 4
    assert report.requests == 2


def test_validate_file_lists_at_most_max_errors_but_counts_them_all(tmp_path):
    rows: list[dict[str, Any] | str] = [{"prompt": "ok"}] + [{"prompt": "x", "n": 0}] * 7
    path = write(tmp_path / "p.jsonl", rows)
    report = validate_file(path, MODEL, max_errors=3)
    assert [e.line for e in report.errors] == [2, 3, 4]
    assert report.total_errors == 7
    assert report.requests == 1


def test_validate_file_lists_100_errors_by_default(tmp_path):
    path = write(tmp_path / "p.jsonl", ["[]"] * 130)
    report = validate_file(path, MODEL)
    assert len(report.errors) == 100 and report.errors[-1].line == 100
    assert report.total_errors == 130


def test_bom_crlf_blank_lines_and_a_missing_final_newline_are_fine(tmp_path):
    path = tmp_path / "messy.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"prompt": "first"}\r\n'
        b"\r\n"
        b"   \t\n"
        b'{"id": "b", "prompt": "second"}\r\n'
        b'{"id": "c", "prompt": "third"}'
    )
    report = validate_file(path, MODEL)
    assert (report.requests, report.errors, report.total_errors) == (3, [], 0)
    requests = list(read_requests(path, MODEL))
    assert [(r.line, r.id) for r in requests] == [(1, 1), (4, "b"), (5, "c")]
    assert requests[0].messages == [{"role": "user", "content": "first"}]  # no BOM, no \r
    assert requests[2].messages == [{"role": "user", "content": "third"}]


def test_error_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\r\n\n{"prompt": "ok"}\r\n\r\n{"prompt": 5}')
    assert validate_file(path, MODEL).errors == [LineError(str(path), 5, '"prompt" must be a string, got an integer')]


def test_a_bom_is_only_skipped_at_the_start_of_the_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n\xef\xbb\xbf{"prompt": "second"}\n')
    [error] = validate_file(path, MODEL).errors
    assert error.line == 2 and error.message.startswith("malformed JSON: ")


def test_an_empty_file_has_no_requests_and_no_errors(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\xef\xbb\xbf\n  \n")
    report = validate_file(path, MODEL)
    assert (report.requests, report.errors, report.total_errors) == (0, [], 0)


def test_read_requests_reports_a_file_that_changed_after_validation(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    assert validate_file(path, MODEL).errors == []
    write(path, [{"prompt": "one"}, {"prompt": ""}])
    requests = read_requests(path, MODEL, source="p.jsonl")
    assert next(requests).line == 1
    with pytest.raises(InputError) as caught:
        next(requests)
    assert str(caught.value) == 'p.jsonl:2: "prompt" is empty (the file changed during the run)'


def test_stream_false_is_accepted_and_changes_nothing():
    plain = parse_line(json.dumps({"prompt": "x", "model": "openai:m"}), 1)
    explicit = parse_line(json.dumps({"prompt": "x", "model": "openai:m", "stream": False}), 1)
    assert explicit == plain
