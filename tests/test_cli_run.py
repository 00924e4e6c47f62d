"""`llmbatch run` end to end: the real CLI, the real any-llm OpenAI provider, the simulator over
HTTP on 127.0.0.1, and a real diskcache in a temporary directory. The simulator's counters prove
what was paid for."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from tests.support import TEST_API_KEY, prompts, read_results, run_cli, write_jsonl


def test_rerun_pays_only_for_new_prompts(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(10))
    first = llmbatch("run", str(path))
    assert first.exit_code == 0, first.stderr
    assert sim.stats()["completions_served"] == 10

    again = llmbatch("run", str(path))
    assert again.exit_code == 0
    assert sim.stats()["requests_received"] == 10  # not one more call
    assert all(r["cached"] for r in read_results(tmp_path / "p.results.jsonl"))

    write_jsonl(path, prompts(20))  # ten new lines after the first ten
    grown = llmbatch("run", str(path))
    assert grown.exit_code == 0
    assert sim.stats()["requests_received"] == 20
    results = read_results(tmp_path / "p.results.jsonl")
    assert [r["cached"] for r in results] == [True] * 10 + [False] * 10


def test_duplicates_in_one_file_cost_one_call(tmp_path, sim, llmbatch):
    rows = [{"id": f"d{i}", "prompt": "the same question"} for i in range(8)]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    result = llmbatch("run", str(path), "--concurrency", "4")
    assert result.exit_code == 0, result.stderr
    assert sim.stats()["requests_received"] == 1
    results = read_results(tmp_path / "dup.results.jsonl")
    assert len({r["content"] for r in results}) == 1
    assert sum(not r["cached"] for r in results) == 1


def test_changing_temperature_costs_a_call_and_changing_metadata_does_not(tmp_path, sim, llmbatch):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [{"id": "a", "prompt": "hello", "temperature": 0, "metadata": {"v": 1}}])
    assert llmbatch("run", str(path)).exit_code == 0
    write_jsonl(path, [{"id": "a", "prompt": "hello", "temperature": 0, "metadata": {"v": 2}}])
    assert llmbatch("run", str(path)).exit_code == 0
    assert sim.stats()["requests_received"] == 1
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["cached"] is True and row["metadata"] == {"v": 2}  # metadata is the line's, not the cache's

    write_jsonl(path, [{"id": "a", "prompt": "hello", "temperature": 0.5, "metadata": {"v": 2}}])
    assert llmbatch("run", str(path)).exit_code == 0
    assert sim.stats()["requests_received"] == 2


def test_results_follow_input_order_with_the_right_answer_on_each_line(tmp_path, simulator, env):
    # Lognormal latency makes calls finish out of order; the file must still be in input order.
    slow = simulator(latency_s=0.01, latency_dist="lognormal", latency_sigma=1.0, seed=7)
    rows = prompts(60)
    path = write_jsonl(tmp_path / "order.jsonl", rows)
    result = run_cli(["run", str(path), "--api-base", slow.url, "--model", "openai:gpt-4o-mini", "-c", "20"], env=env)
    assert result.exit_code == 0, result.stderr
    results = read_results(tmp_path / "order.results.jsonl")
    assert [r["id"] for r in results] == [row["id"] for row in rows]
    for row, res in zip(rows, results, strict=True):
        assert res["status"] == "ok"
        assert res["content"].endswith(f"to: {row['prompt']}")
        assert res["key"].startswith("v1:")
        assert res["response"]["choices"][0]["message"]["content"] == res["content"]
        assert res["usage"]["total_tokens"] > 0 and res["attempts"] == 1


def test_a_prompt_line_and_the_equivalent_messages_line_share_one_answer(tmp_path, sim, llmbatch):
    rows = [
        {"id": "p", "prompt": "Say hi", "system": "Be brief"},
        {"id": "m", "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Say hi"}]},
        {
            "custom_id": "b",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Say hi"}],
            },
        },
    ]
    path = write_jsonl(tmp_path / "shapes.jsonl", rows)
    result = llmbatch("run", str(path))
    assert result.exit_code == 0, result.stderr
    assert sim.stats()["requests_received"] == 1
    results = read_results(tmp_path / "shapes.results.jsonl")
    assert [r["id"] for r in results] == ["p", "m", "b"]
    assert len({r["key"] for r in results}) == 1


def test_sample_index_draws_separately_cached_answers(tmp_path, sim, llmbatch):
    rows = [{"id": f"s{i}", "prompt": "a poem", "temperature": 1.0, "sample": i} for i in range(3)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    assert llmbatch("run", str(path)).exit_code == 0
    assert llmbatch("run", str(path)).exit_code == 0
    assert sim.stats()["requests_received"] == 3  # three samples, each paid once
    assert len({r["key"] for r in read_results(tmp_path / "s.results.jsonl")}) == 3


def test_blank_lines_bom_crlf_and_missing_final_newline_are_accepted(tmp_path, sim, llmbatch):
    path = tmp_path / "messy.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "prompt": "first"}\r\n\r\n   \n{"id": "b", "prompt": "second"}\r\n{"id": "c", "prompt": "third"}'
    )
    result = llmbatch("run", str(path))
    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in read_results(tmp_path / "messy.results.jsonl")] == ["a", "b", "c"]


def test_ids_default_to_line_numbers(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "noid.jsonl", [{"prompt": "one"}, "", {"prompt": "two"}])
    assert llmbatch("run", str(path)).exit_code == 0
    assert [r["id"] for r in read_results(tmp_path / "noid.results.jsonl")] == [1, 3]


def test_stdin_in_and_stdout_out(sim, llmbatch):
    text = "\n".join(json.dumps(row) for row in prompts(3)) + "\n"
    result = llmbatch("run", "-", "-o", "-", "-q", stdin=text)
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in lines] == ["q0", "q1", "q2"]
    assert "prompts" in result.stderr  # the summary goes to stderr, never into the results


def test_stdin_with_no_room_for_its_copy_is_one_clear_error_and_nothing_is_sent(tmp_path, sim, llmbatch, monkeypatch):
    # No usable temporary directory (as on a full disk): a path under a regular file.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))
    text = "\n".join(json.dumps(row) for row in prompts(3)) + "\n"
    result = llmbatch("run", "-", "-o", "-", "-q", stdin=text)
    assert result.exit_code == 2
    assert result.stderr.startswith("llmbatch: error: cannot keep a copy of stdin in a temporary file (")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert sim.stats()["requests_received"] == 0


def test_output_option_writes_where_asked_and_leaves_no_partial_file(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    out = tmp_path / "out" / "results.jsonl"
    assert llmbatch("run", str(path), "-o", str(out)).exit_code == 0
    assert len(read_results(out)) == 2
    assert not (tmp_path / "out" / "results.jsonl.partial").exists()


def test_a_rejected_request_is_an_error_line_and_is_not_retried(tmp_path, sim, llmbatch):
    rows = [{"id": "good", "prompt": "fine"}, {"id": "bad", "prompt": "please fail [[sim:status=400]]"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    result = llmbatch("run", str(path))
    assert result.exit_code == 1
    good, bad = read_results(tmp_path / "p.results.jsonl")
    assert good["status"] == "ok"
    assert bad["status"] == "error" and bad["content"] is None and bad["attempts"] == 1
    assert bad["error"]["status_code"] == 400 and bad["error"]["type"] == "InvalidRequestError"
    assert sim.stats()["requests_received"] == 2
    # Errors are never cached: a rerun asks again.
    llmbatch("run", str(path))
    assert sim.stats()["requests_received"] == 3


def test_a_transient_server_error_is_retried_until_it_succeeds(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "flaky", "prompt": "try again [[sim:fail_first=2]]"}])
    result = llmbatch("run", str(path))
    assert result.exit_code == 0, result.stderr
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["status"] == "ok" and row["attempts"] == 3
    assert sim.stats()["faults"]["503"] == 2 and sim.stats()["completions_served"] == 1


def test_retries_give_up_after_max_retries(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "down", "prompt": "never [[sim:fail_first=50]]"}])
    result = llmbatch("run", str(path), "--max-retries", "1")
    assert result.exit_code == 1
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["status"] == "error" and row["attempts"] == 2 and row["error"]["status_code"] == 503


def test_a_filtered_answer_is_returned_but_never_cached(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "f", "prompt": "x [[sim:finish=content_filter]]"}])
    assert llmbatch("run", str(path)).exit_code == 0
    llmbatch("run", str(path))
    assert sim.stats()["requests_received"] == 2
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["finish_reason"] == "content_filter"


def test_max_tokens_reaches_the_provider(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "short", "prompt": "tell me a long story", "max_tokens": 3}])
    assert llmbatch("run", str(path)).exit_code == 0
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["finish_reason"] == "length" and row["usage"]["completion_tokens"] == 3


def test_no_cache_neither_reads_nor_writes(tmp_path, sim, llmbatch, cache_dir):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    assert llmbatch("run", str(path), "--no-cache").exit_code == 0
    assert llmbatch("run", str(path), "--no-cache").exit_code == 0
    assert sim.stats()["requests_received"] == 6
    assert not (cache_dir / "cache.db").exists()


def test_refresh_ignores_hits_and_overwrites_them(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [*prompts(3), {"id": "dup", "prompt": "question number 0"}])
    assert llmbatch("run", str(path)).exit_code == 0
    assert sim.stats()["requests_received"] == 3
    assert llmbatch("run", str(path), "--refresh").exit_code == 0
    assert sim.stats()["requests_received"] == 6  # each key refreshed once, the duplicate coalesced
    assert not any(r["cached"] for r in read_results(tmp_path / "p.results.jsonl")[:3])
    assert llmbatch("run", str(path)).exit_code == 0
    assert sim.stats()["requests_received"] == 6


def test_cache_only_never_calls_and_reports_misses_as_errors(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    assert llmbatch("run", str(path)).exit_code == 0
    write_jsonl(path, prompts(3))
    result = llmbatch("run", str(path), "--cache-only")
    assert result.exit_code == 1
    rows = read_results(tmp_path / "p.results.jsonl")
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert "--cache-only" in rows[2]["error"]["message"]
    assert sim.stats()["requests_received"] == 2


def test_ttl_expires_new_entries(tmp_path, sim, llmbatch):
    import time

    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    assert llmbatch("run", str(path), "--ttl", "1s").exit_code == 0
    time.sleep(1.2)
    assert llmbatch("run", str(path)).exit_code == 0
    assert sim.stats()["requests_received"] == 2


def test_the_api_key_never_reaches_the_cache_or_the_results(tmp_path, simulator, env, cache_dir):
    locked = simulator(require_api_key=TEST_API_KEY)
    rows = [*prompts(3), {"id": "bad", "prompt": "x [[sim:status=400]]"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    result = run_cli(["run", str(path), "--api-base", locked.url, "--model", "openai:gpt-4o-mini"], env=env)
    assert result.exit_code == 1  # the 400 line
    assert locked.stats()["completions_served"] == 3  # so the key was really sent
    needle = TEST_API_KEY.encode()
    for file in [*cache_dir.rglob("*"), tmp_path / "p.results.jsonl"]:
        if file.is_file():
            assert needle not in file.read_bytes(), file
    assert TEST_API_KEY not in result.stdout + result.stderr


def test_a_proxy_token_in_extra_headers_is_sent_but_never_kept_and_a_new_one_still_hits(
    tmp_path, simulator, env, cache_dir
):
    token = "proxy-token-ONE-4c1d9e"
    locked = simulator(require_api_key=token)  # answers 401 unless the header reaches it
    path = tmp_path / "p.jsonl"
    where = ["--api-base", locked.url, "--model", "openai:gpt-4o-mini"]

    def run(token: str, *extra: str):
        write_jsonl(path, [{"prompt": "hi", "extra": {"extra_headers": {"Authorization": f"Bearer {token}"}}}])
        return run_cli(["run", str(path), *where, *extra], env=env)

    first = run(token, "-v", "--log", str(tmp_path / "log.jsonl"))
    assert first.exit_code == 0, first.stderr
    assert locked.stats()["completions_served"] == 1  # so the header was really sent
    shown = [
        first.stdout + first.stderr,
        run_cli(["cache", "export", "-o", "-"], env=env).stdout,
        run_cli(["cache", "explain", f"{path}:1", *where], env=env).stdout,
    ]
    files = [*cache_dir.rglob("*"), tmp_path / "p.results.jsonl", tmp_path / "log.jsonl"]
    for text in [*shown, *(f.read_bytes().decode(errors="replace") for f in files if f.is_file())]:
        assert token not in text

    # A rotated token asks the same question: served from the cache (the server would refuse it).
    rotated = run("proxy-token-TWO-8b7f2a")
    assert rotated.exit_code == 0, rotated.stderr
    assert locked.stats()["requests_received"] == 1
    assert read_results(tmp_path / "p.results.jsonl")[0]["cached"] is True


def test_the_cache_holds_json_and_never_a_pickle(tmp_path, sim, llmbatch, cache_dir):
    import sqlite3

    path = write_jsonl(tmp_path / "p.jsonl", prompts(5))
    assert llmbatch("run", str(path)).exit_code == 0
    with sqlite3.connect(cache_dir / "cache.db") as db:
        rows = db.execute("SELECT mode, value, filename FROM Cache").fetchall()
    assert len(rows) == 5
    for mode, value, filename in rows:
        assert mode == 1 and filename is None  # diskcache MODE_RAW: our JSON bytes; MODE_PICKLE is 4
        entry = json.loads(value)
        assert {"stored_at", "provider", "model", "usage", "latency_ms", "response"} <= entry.keys()


def test_an_invalid_api_key_stops_the_run_with_one_message(tmp_path, simulator, env):
    locked = simulator(require_api_key="sk-the-right-one-123456")
    path = write_jsonl(tmp_path / "p.jsonl", prompts(200))
    result = run_cli(["run", str(path), "--api-base", locked.url, "--model", "openai:gpt-4o-mini", "-c", "4"], env=env)
    assert result.exit_code == 1
    assert result.stderr.count("llmbatch: error:") == 1
    assert "Incorrect API key" in result.stderr
    assert locked.stats()["requests_received"] <= 4  # no retries, no further calls
    assert TEST_API_KEY not in result.stderr
    assert not (tmp_path / "p.results.jsonl").exists()  # incomplete output never takes the final name


def test_an_unknown_model_stops_the_run(tmp_path, simulator, env):
    strict = simulator(models=("gpt-4o-mini",))
    path = write_jsonl(tmp_path / "p.jsonl", prompts(50))
    result = run_cli(["run", str(path), "--api-base", strict.url, "--model", "openai:gpt-9", "-c", "2"], env=env)
    assert result.exit_code == 1
    assert "gpt-9" in result.stderr and result.stderr.count("llmbatch: error:") == 1
    assert strict.stats()["requests_received"] <= 2


def test_concurrency_bounds_calls_in_flight(tmp_path, simulator, env):
    slow = simulator(latency_s=0.05)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(40))
    result = run_cli(["run", str(path), "--api-base", slow.url, "--model", "openai:m", "-c", "5"], env=env)
    assert result.exit_code == 0, result.stderr
    assert slow.stats()["max_in_flight"] == 5


def test_simulate_runs_the_quickstart_without_a_key_and_reruns_free(tmp_path, env):
    sample = Path(__file__).parent.parent / "sample_prompts" / "quickstart.jsonl"
    path = tmp_path / "quickstart.jsonl"
    path.write_bytes(sample.read_bytes())
    env = {**env, "OPENAI_API_KEY": ""}
    first = run_cli(["run", str(path), "--simulate"], env=env)
    assert first.exit_code == 0, first.stderr
    rows = read_results(tmp_path / "quickstart.results.jsonl")
    assert len(rows) == len(path.read_text().splitlines())
    assert all(r["status"] == "ok" for r in rows)
    assert any(r["cached"] for r in rows)  # the file has duplicates
    second = run_cli(["run", str(path), "--simulate"], env=env)
    assert second.exit_code == 0
    assert all(r["cached"] for r in read_results(tmp_path / "quickstart.results.jsonl"))


def test_simulated_answers_never_serve_a_real_endpoint(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2, model="openai:gpt-4o-mini"))
    assert run_cli(["run", str(path), "--simulate"], env=env).exit_code == 0
    assert llmbatch("run", str(path)).exit_code == 0
    assert sim.stats()["requests_received"] == 2  # the simulate-mode answers were not reused


def test_a_base_url_from_the_environment_is_part_of_the_key(tmp_path, simulator, env):
    # Two OpenAI-compatible servers reached through OPENAI_BASE_URL must never share answers.
    first, second = simulator(), simulator()
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3, model="openai:gpt-4o-mini"))
    assert run_cli(["run", str(path)], env={**env, "OPENAI_BASE_URL": first.url}).exit_code == 0
    assert run_cli(["run", str(path)], env={**env, "OPENAI_BASE_URL": second.url}).exit_code == 0
    assert first.stats()["requests_received"] == 3 and second.stats()["requests_received"] == 3
    assert run_cli(["run", str(path)], env={**env, "OPENAI_BASE_URL": first.url + "/"}).exit_code == 0
    assert first.stats()["requests_received"] == 3  # the same server, spelled with a slash: hits


_BAD_URLS = [
    (["--api-base", "HOSTPORT/v1"], {}, "--api-base HOSTPORT/v1: no scheme: write http://HOSTPORT/v1"),
    (["--api-base", "ftp://HOSTPORT/v1"], {}, "--api-base ftp://HOSTPORT/v1: use an http:// or https:// URL"),
    (["--api-base", "http://:hunter2-pw@[::1"], {}, "--api-base http://…: not a URL (Invalid IPv6 URL)"),
    (
        ["--api-base", "https://hunter2-pw@localhost:99999/v1"],
        {},
        "--api-base https://***@localhost:99999/v1: not a URL (Port out of range 0-65535)",
    ),
    (["--cache", "redis://:hunter2-pw@[::1"], {}, "--cache redis://…: not a URL (Invalid IPv6 URL)"),
    ([], {"OPENAI_BASE_URL": "HOSTPORT/v1"}, "OPENAI_BASE_URL HOSTPORT/v1: no scheme: write http://HOSTPORT/v1"),
    ([], {"OPENAI_BASE_URL": "http://:hunter2-pw@[::1"}, "OPENAI_BASE_URL http://…: not a URL (Invalid IPv6 URL)"),
]


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize(("options", "variables", "message"), _BAD_URLS)
def test_a_url_no_client_could_use_is_one_usage_error_and_nothing_is_sent(
    tmp_path, env, sim, command, options, variables, message
):
    # Such URLs were accepted: every line retried and written as "Connection error" (exit 1), or a
    # traceback from urlsplit. The password must not be shown either way.
    hostport = sim.url.removeprefix("http://").partition("/")[0]
    options = [o.replace("HOSTPORT", hostport) for o in options]
    variables = {name: value.replace("HOSTPORT", hostport) for name, value in variables.items()}
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    args = [command, str(path), "-m", "openai:gpt-4o-mini", *options]
    args += ["-o", str(tmp_path / "out.jsonl"), "--max-retries", "0"] if command == "run" else []
    result = run_cli(args, env={**env, **variables})
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"llmbatch: error: {message.replace('HOSTPORT', hostport)}\n"
    assert sim.stats()["requests_received"] == 0
    assert {p.name for p in tmp_path.iterdir()} <= {"cache", "p.jsonl"}  # no results, no .partial


def test_the_cache_commands_refuse_a_url_no_server_could_be_at(env):
    result = run_cli(["cache", "stats", "--cache", "redis://:hunter2-pw@[::1"], env=env)
    assert result.exit_code == 2
    assert result.stderr == "llmbatch: error: --cache redis://…: not a URL (Invalid IPv6 URL)\n"


def test_a_unix_socket_url_two_slashes_short_gets_the_right_spelling(env):
    result = run_cli(["cache", "stats", "--cache", "unix:/run/redis.sock"], env=env)
    assert result.exit_code == 2
    assert result.stderr == (
        "llmbatch: error: --cache unix:/run/redis.sock: write unix:///run/redis.sock (three slashes before an absolute path)\n"
    )


def test_a_broken_base_url_of_a_provider_the_run_does_not_use_is_no_error(tmp_path, env):
    # Checked when a line needs it; Ollama's client takes a bare host, as OLLAMA_HOST often is.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    variables = {"ANTHROPIC_BASE_URL": "localhost:1", "OLLAMA_HOST": "0.0.0.0"}
    assert run_cli(["plan", str(path), "-m", "ollama:llama3"], env={**env, **variables}).exit_code == 0


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_missing_api_key_is_one_usage_error_before_anything_is_shown_or_written(tmp_path, env, workers):
    # Each provider the file uses is prepared before the display starts and before a results file
    # exists: a missing key is one line and exit 2, with no summary and no .partial.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(5))
    args = ["run", str(path), "--model", "openai:gpt-4o-mini", "--workers", workers]
    result = run_cli(args, env={**env, "OPENAI_API_KEY": ""})
    assert result.exit_code == 2
    assert result.stderr == "llmbatch: error: no API key for openai: set OPENAI_API_KEY\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "p.jsonl"]  # no results, no .partial


def test_an_unknown_provider_is_one_usage_error_before_anything_is_shown_or_written(tmp_path, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    result = run_cli(["run", str(path), "-m", "foo:bar"], env=env)
    assert result.exit_code == 2
    assert result.stderr == "llmbatch: error: --model foo:bar: unknown provider 'foo'\n"
    assert not any(p.name.startswith("p.results") for p in tmp_path.iterdir())


def test_lines_naming_an_unknown_provider_are_each_reported_as_file_line_and_nothing_is_sent(tmp_path, env, sim):
    # They were one error without a line (and any-llm's list of ~60 providers). Now every such line
    # is found while the file is checked, as any other invalid line is.
    rows = prompts(5)
    rows[1]["model"], rows[2]["model"], rows[4]["model"] = "foo:bar", "openia:gpt-4o", "foo:baz"
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    result = run_cli(["run", str(path), "-m", "openai:gpt-4o-mini", "--api-base", sim.url], env=env)
    assert result.exit_code == 2
    assert result.stderr == (
        f"{path}:2: unknown provider 'foo'\n"
        f"{path}:3: unknown provider 'openia' (did you mean \"openai\"?)\n"
        f"{path}:5: unknown provider 'foo'\n"
        "llmbatch: error: 3 invalid lines; nothing was sent\n"
    )
    assert sim.stats()["requests_received"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]  # found before the cache is opened


@pytest.mark.parametrize("command", [["plan"], ["run", "--simulate"], ["run", "--simulate", "--batch-api"]])
def test_a_misspelt_provider_is_refused_by_plan_and_the_simulator_as_a_real_run_refuses_it(tmp_path, env, command):
    # plan and --simulate never prepare a client: they used to price or answer "openia:gpt-4o",
    # which the real run then refused.
    rows = prompts(2)
    rows[1]["model"] = "openia:gpt-4o"
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    result = run_cli([command[0], str(path), *command[1:], "-m", "openai:gpt-4o-mini"], env=env)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"{path}:2: unknown provider 'openia' (did you mean \"openai\"?)"
    assert not any(p.name.startswith("p.results") for p in tmp_path.iterdir())


def test_a_route_to_a_misspelt_provider_is_refused_where_the_route_is(tmp_path, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    (tmp_path / "routes.toml").write_text('[[route]]\nmodel = "anthorpic:claude-x"\n')
    result = run_cli(["plan", str(path), "--config", str(tmp_path / "routes.toml")], env=env)
    assert result.exit_code == 2
    assert "unknown provider 'anthorpic' (did you mean \"anthropic\"?)" in result.stderr


def test_a_line_naming_a_provider_whose_sdk_is_missing_is_reported_as_file_line_and_nothing_is_sent(
    tmp_path, env, sim
):
    try:
        import mistralai  # noqa: F401
    except ImportError:
        missing = "cannot use provider 'mistral': mistralai is not installed; pip install 'llmbatch[mistral]'"
    else:
        pytest.skip("the mistral SDK is installed here")
    rows = prompts(5)
    rows[3]["model"] = rows[4]["model"] = "mistral:small"  # the first line naming it is the one reported
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    args = ["run", str(path), "-m", "openai:gpt-4o-mini", "--api-base", sim.url]
    result = run_cli(args, env={**env, "MISTRAL_API_KEY": "x"})
    assert result.exit_code == 2
    assert result.stderr == f"{path}:4: {missing}\nllmbatch: error: 1 invalid line; nothing was sent\n"
    assert sim.stats()["requests_received"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "p.jsonl"]


def test_a_missing_key_after_a_cached_prefix_leaves_no_partial_behind(tmp_path, env, sim):
    # The leading hits are answered while the input is checked (into a new .partial); a provider
    # that cannot be prepared afterwards must take that file away again.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    assert run_cli(["run", str(path), "-m", "openai:gpt-4o-mini", "--api-base", sim.url], env=env).exit_code == 0
    (tmp_path / "p.results.jsonl").unlink()
    write_jsonl(path, prompts(5))
    result = run_cli(["run", str(path), "-m", "openai:gpt-4o-mini"], env={**env, "OPENAI_API_KEY": ""})
    assert result.exit_code == 2
    assert not any(p.name.startswith("p.results") for p in tmp_path.iterdir())


def test_a_fully_cached_rerun_needs_no_api_key(tmp_path, env, sim):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    assert run_cli(["run", str(path), "-m", "openai:gpt-4o-mini", "--api-base", sim.url], env=env).exit_code == 0
    again = run_cli(
        ["run", str(path), "-m", "openai:gpt-4o-mini", "--api-base", sim.url], env={**env, "OPENAI_API_KEY": ""}
    )
    assert again.exit_code == 0, again.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_server_that_is_not_there_stops_the_run_with_one_message(tmp_path, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(50))
    url = f"http://127.0.0.1:{_free_port()}/v1"
    result = run_cli(["run", str(path), "--api-base", url, "-m", "openai:gpt-4o-mini", "-c", "4"], env=env)
    assert result.exit_code == 1
    assert result.stderr.count("llmbatch: error: cannot connect to") == 1 and url in result.stderr


def test_a_server_that_is_not_there_is_named_without_the_credentials_in_its_url(tmp_path, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(5))
    url = f"http://127.0.0.1:{_free_port()}/v1?api-key=hunter2-key"
    result = run_cli(["run", str(path), "--api-base", url, "-m", "openai:gpt-4o-mini", "-c", "4"], env=env)
    assert result.exit_code == 1
    assert "/v1?api-key=*** (" in result.stderr
    shown = result.stderr + result.stdout + (tmp_path / "p.results.jsonl.partial").read_text()
    assert "hunter2" not in shown


def test_a_provider_whose_sdk_is_not_installed_says_how_to_install_it(tmp_path, env):
    pytest.importorskip("any_llm")
    try:
        import google.genai  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the gemini SDK is installed here")
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    result = run_cli(["run", str(path), "-m", "gemini:gemini-2.0-flash"], env={**env, "GEMINI_API_KEY": "x"})
    assert result.exit_code == 2
    assert (
        result.stderr
        == "llmbatch: error: --model gemini:gemini-2.0-flash: cannot use provider 'gemini': google is not installed; "
        "pip install 'llmbatch[gemini]'\n"
    )
    assert not any(p.name.startswith("p.results") for p in tmp_path.iterdir())


def test_a_fatal_stop_mid_run_says_to_fix_the_error_before_running_again(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [*prompts(3), {"id": "locked", "prompt": "x [[sim:status=401]]"}])
    result = llmbatch("run", str(path), "-c", "1")
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert "fix what the error below says, then run the same command again" in said
    assert "run the same command again to finish" not in said


def test_integers_beyond_64_bits_in_metadata_and_ids_come_back_whole(tmp_path, sim, llmbatch):
    # Order numbers and snowflake ids: orjson alone would read them as floats, rounding two ids into one.
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"id": 123456789012345678901234567890, "prompt": "a", "metadata": {"order": 98765432109876543210987}}\n'
        '{"id": 123456789012345678901234567891, "prompt": "b", "metadata": [-18446744073709551617, 1.5]}\n'
    )
    done = llmbatch("run", str(path))
    assert done.exit_code == 0, done.stderr
    rows = read_results(tmp_path / "p.results.jsonl")
    assert [(r["id"], r["metadata"]) for r in rows] == [
        (123456789012345678901234567890, {"order": 98765432109876543210987}),
        (123456789012345678901234567891, [-18446744073709551617, 1.5]),
    ]
    assert all(r["status"] == "ok" for r in rows)


def test_the_simulator_on_a_port_in_use_is_one_clear_line(sim, env):
    port = sim.url.split(":")[-1].split("/")[0]
    result = run_cli(["sim", "--port", port], env=env)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"llmbatch: error: sim: cannot listen on 127.0.0.1:{port}: ")
    assert len(result.stderr.splitlines()) == 1
