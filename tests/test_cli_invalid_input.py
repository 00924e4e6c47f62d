"""`llmbatch run` with bad input or bad options, end to end: every problem is reported as
``FILE:LINE: message`` before anything is sent, the exit code is 2, no traceback, no call reaches
the simulator and no results file is written."""

from __future__ import annotations

import json

from tests.support import prompts, run_cli, write_jsonl

USER_HI = {"role": "user", "content": "hi"}


def assert_nothing_happened(result, sim, tmp_path):
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert sim.stats()["requests_received"] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if "results" in p.name) == []


def test_every_invalid_line_is_listed_and_nothing_is_sent(tmp_path, monkeypatch, sim, llmbatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"id": "a", "prompt": "fine"},
            {"id": "b", "prompt": "x", "temprature": 0.2},
            {"id": "c", "messages": [USER_HI]},
            "{not json",
            "[1, 2]",
            "",
            {"id": "a", "prompt": "the same id again"},
            {"id": "e", "prompt": "x", "max_tokens": -1},
            {"id": "f", "prompt": "x", "messages": [USER_HI]},
            {"id": "g", "prompt": ""},
            {"id": "h", "prompt": "x", "stream": True},
            {"id": "i", "prompt": "x", "extra": {"stream": True}},
            {"custom_id": "j", "method": "POST", "url": "/v1/embeddings", "body": {"messages": [USER_HI]}},
            {"id": "k", "prompt": "fine as well"},
        ],
    )
    result = llmbatch("run", "bad.jsonl")
    assert_nothing_happened(result, sim, tmp_path)
    lines = result.stderr.splitlines()
    assert lines[1].startswith("bad.jsonl:4: malformed JSON: ")
    assert lines[:1] + lines[2:] == [
        'bad.jsonl:2: unknown field "temprature" (did you mean "temperature"?)',
        "bad.jsonl:5: expected a JSON object, got an array",
        "bad.jsonl:7: duplicate id 'a' (first used on line 1)",
        'bad.jsonl:8: "max_tokens" must be at least 1, got -1',
        'bad.jsonl:9: give either "prompt" or "messages", not both',
        'bad.jsonl:10: "prompt" is empty',
        'bad.jsonl:11: streaming is not supported: llmbatch stores whole answers (remove "stream")',
        'bad.jsonl:12: streaming is not supported: llmbatch stores whole answers (remove "stream")',
        'bad.jsonl:13: "url" \'/v1/embeddings\' is not supported: llmbatch runs "/v1/chat/completions" requests',
        "llmbatch: error: 10 invalid lines; nothing was sent",
    ]


def test_the_file_is_named_as_given_on_the_command_line(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": 5}])
    result = llmbatch("run", str(path))
    assert_nothing_happened(result, sim, tmp_path)
    assert result.stderr == (
        f'{path}:2: "prompt" must be a string, got an integer\nllmbatch: error: 1 invalid line; nothing was sent\n'
    )


def test_a_line_with_non_utf8_bytes_is_reported(tmp_path, sim, llmbatch):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "caf\xe9"}\n')
    result = llmbatch("run", str(path))
    assert_nothing_happened(result, sim, tmp_path)
    assert result.stderr == (
        f"{path}:2: not valid UTF-8 (byte 0xe9 at column 27)\nllmbatch: error: 1 invalid line; nothing was sent\n"
    )


def test_a_model_without_a_provider_is_refused_unless_provider_is_given(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "hi", "model": "gpt-4o-mini"}])
    result = llmbatch("run", str(path))
    assert_nothing_happened(result, sim, tmp_path)
    assert result.stderr.splitlines() == [
        f"{path}:1: model 'gpt-4o-mini' has no provider: write \"openai:gpt-4o-mini\" (or another provider) "
        "or pass --provider",
        "llmbatch: error: 1 invalid line; nothing was sent",
    ]

    with_provider = llmbatch("run", str(path), "--provider", "openai")
    assert with_provider.exit_code == 0, with_provider.stderr
    assert sim.stats()["requests_received"] == 1


def test_a_bad_line_on_stdin_is_reported_against_stdin(tmp_path, sim, llmbatch):
    text = "\n".join([json.dumps({"id": "a", "prompt": "ok"}), json.dumps({"id": "b", "prompt": "x", "n": 0})]) + "\n"
    result = llmbatch("run", "-", "-o", "-", stdin=text)
    assert_nothing_happened(result, sim, tmp_path)
    assert result.stdout == ""
    assert (
        result.stderr == '<stdin>:2: "n" must be at least 1, got 0\nllmbatch: error: 1 invalid line; nothing was sent\n'
    )


def test_an_empty_file_is_refused_with_a_clear_message(tmp_path, sim, llmbatch):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = llmbatch("run", str(path))
    assert_nothing_happened(result, sim, tmp_path)
    assert result.stderr == f"llmbatch: error: {path}: no requests (the file is empty or only blank lines)\n"


def test_a_file_of_blank_lines_is_refused_like_an_empty_one(tmp_path, sim, llmbatch):
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\xef\xbb\xbf\r\n   \n\n")
    result = llmbatch("run", str(path))
    assert_nothing_happened(result, sim, tmp_path)
    assert result.stderr == f"llmbatch: error: {path}: no requests (the file is empty or only blank lines)\n"


def test_a_missing_input_file_is_refused_with_a_clear_message(tmp_path, sim, llmbatch):
    missing = tmp_path / "nope.jsonl"
    result = llmbatch("run", str(missing))
    assert_nothing_happened(result, sim, tmp_path)
    assert result.stderr == f"llmbatch: error: input file not found: {missing}\n"


def test_no_cache_and_refresh_cannot_be_combined(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    result = llmbatch("run", str(path), "--no-cache", "--refresh")
    assert_nothing_happened(result, sim, tmp_path)
    assert result.stderr == "llmbatch: error: --no-cache, --refresh and --cache-only cannot be combined\n"


def test_an_invalid_ttl_names_the_option(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    result = llmbatch("run", str(path), "--ttl", "3x")
    assert_nothing_happened(result, sim, tmp_path)
    assert result.stderr == (
        "llmbatch: error: --ttl: invalid duration '3x'; use a number and a unit, like 90s, 45m, 12h, 30d or 2w\n"
    )


def test_the_error_list_is_capped_at_100_lines_but_every_error_is_counted(tmp_path, sim, llmbatch):
    rows = [{"id": f"q{i}", "prompt": "x", "max_tokens": 0} for i in range(150)]
    path = write_jsonl(tmp_path / "many.jsonl", prompts(1, start=999) + rows)
    result = llmbatch("run", str(path))
    assert_nothing_happened(result, sim, tmp_path)
    lines = result.stderr.splitlines()
    assert lines[:100] == [f'{path}:{n}: "max_tokens" must be at least 1, got 0' for n in range(2, 102)]
    assert lines[100:] == [
        "... and 50 more invalid lines",
        "llmbatch: error: 150 invalid lines; nothing was sent",
    ]


def test_a_bare_model_option_without_provider_is_one_usage_error(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    result = llmbatch("run", str(path), "--model", "gpt-4o-mini")
    assert result.exit_code == 2
    assert result.stderr == (
        "llmbatch: error: --model gpt-4o-mini has no provider: write --model openai:gpt-4o-mini "
        "(or another provider) or add --provider\n"
    )
    assert sim.stats()["requests_received"] == 0


# --- lines that could be paid for and then never written (poison lines) -----------------------


def test_lines_nested_too_deep_to_write_are_refused_before_anything_is_sent(tmp_path, sim, llmbatch):
    deep_metadata = '{"id": "m", "prompt": "x", "metadata": ' + "[" * 255 + "]" * 255 + "}"
    deep_extra = '{"id": "e", "prompt": "y", "extra": {"a": ' + '{"b": ' * 120 + "1" + "}" * 120 + "}}"
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "ok", "prompt": "fine"}, deep_metadata, deep_extra])
    result = llmbatch("run", str(path))
    assert result.exit_code == 2
    assert f"{path}:2: the line nests 256 levels deep; at most 100 can be stored and written" in result.stderr
    assert f"{path}:3: the line nests 122 levels deep" in result.stderr
    assert "Traceback" not in result.stderr
    assert sim.stats()["requests_received"] == 0
    assert not (tmp_path / "p.results.jsonl").exists()


def test_a_line_with_absurdly_many_messages_is_refused_unless_the_limit_is_raised(tmp_path, sim, llmbatch):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] * 150_000
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "huge", "messages": messages}])
    result = llmbatch("run", str(path))
    assert result.exit_code == 2
    assert f'{path}:1: "messages" has 300,000 messages, over the limit of 10,000 (--max-messages)' in result.stderr
    assert sim.stats()["requests_received"] == 0

    small = write_jsonl(tmp_path / "s.jsonl", [{"id": "s", "messages": messages[:12] + messages[:1]}])
    assert llmbatch("run", str(small), "--max-messages", "12").exit_code == 2
    assert llmbatch("run", str(small), "--max-messages", "13").exit_code == 0


def test_a_line_over_the_size_limit_is_refused_and_the_limit_can_be_raised(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "big", "prompt": "x" * 2000}])
    result = llmbatch("run", str(path), "--max-line-size", "1KB")
    assert result.exit_code == 2
    assert f"{path}:1: the line is 2,027 bytes, over the limit of 1,000 (--max-line-size)" in result.stderr
    assert llmbatch("run", str(path), "--max-line-size", "1MB").exit_code == 0


def test_the_line_limits_hold_with_simulate_and_no_model(tmp_path, env):
    # --simulate gives model-less lines a default model; that must not drop the limits given.
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "big", "prompt": "x" * 2000}])
    result = run_cli(["run", str(path), "--simulate", "--max-line-size", "1KB"], env=env)
    assert result.exit_code == 2
    assert f"{path}:1: the line is 2,027 bytes, over the limit of 1,000 (--max-line-size)" in result.stderr


def test_a_line_of_absurdly_many_content_parts_or_tools_is_refused_too(tmp_path, sim, llmbatch):
    parts = {"id": "parts", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 300_000}]}
    tools = {
        "id": "tools",
        "prompt": "hi",
        "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(100_000)],
    }
    path = write_jsonl(tmp_path / "p.jsonl", [parts, tools])
    result = llmbatch("run", str(path))
    assert result.exit_code == 2
    assert f"{path}:1: the line holds 300,004 objects and arrays, over the limit of 50,000" in result.stderr
    assert f"{path}:2: the line holds 200,002 objects and arrays" in result.stderr
    assert sim.stats()["requests_received"] == 0
