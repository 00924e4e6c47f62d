"""What a provider's HTTP 200 must hold to be an answer, and what is kept of it: bodies that are not
answers become error lines and are never cached; answers are made safe to store (big integers,
echoed API keys); an answer that cannot be stored is a clear error line, never a crash. End to end,
through the CLI and the simulator's ``[[sim:quirk=...]]`` directives."""

from __future__ import annotations

import pytest

from llmbatch.answers import keepable, problem
from tests.support import TEST_API_KEY, read_results, write_jsonl


def one_line(tmp_path, prompt):
    return write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": prompt}])


@pytest.mark.parametrize("quirk", ["no_choices", "choice_error"])
def test_a_200_that_is_not_an_answer_is_an_error_line_and_never_cached(tmp_path, sim, llmbatch, quirk):
    path = one_line(tmp_path, f"tell me [[sim:quirk={quirk}]]")
    first = llmbatch("run", str(path), "--max-retries", "1")
    assert first.exit_code == 1
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["status"] == "error" and row["content"] is None
    assert row["error"]["type"] == {"no_choices": "EmptyAnswer", "choice_error": "ErrorInAnswer"}[quirk]
    assert row["attempts"] == 2  # both are transient by the providers' docs: retried
    assert sim.stats()["requests_received"] == 2
    # Not cached: the rerun asks again instead of serving the non-answer as a hit.
    llmbatch("run", str(path), "--max-retries", "0")
    assert sim.stats()["requests_received"] == 3


def test_an_error_in_an_answer_that_clears_up_is_retried_into_an_ok_line(tmp_path, sim, llmbatch):
    path = one_line(tmp_path, "tell me [[sim:quirk=choice_error]] [[sim:quirk_first=1]]")
    result = llmbatch("run", str(path))
    assert result.exit_code == 0, result.stderr
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["status"] == "ok" and row["attempts"] == 2 and row["content"].startswith("Simulated answer")
    llmbatch("run", str(path))
    assert sim.stats()["requests_received"] == 2  # the good answer was cached


def test_an_answer_with_an_integer_over_64_bits_is_stored_with_it_as_a_string(tmp_path, sim, llmbatch):
    path = one_line(tmp_path, "big numbers [[sim:quirk=bigint]]")
    result = llmbatch("run", str(path))
    assert result.exit_code == 0, result.stderr
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["status"] == "ok" and row["response"]["big"] == "123456789012345678901234567890"
    again = llmbatch("run", str(path))
    assert again.exit_code == 0
    assert sim.stats()["requests_received"] == 1  # stored: the rerun is a hit, not another payment
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["cached"] is True and row["response"]["big"] == "123456789012345678901234567890"


def test_an_answer_nested_too_deep_to_store_is_a_clear_error_line_not_a_crash(tmp_path, sim, llmbatch):
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"id": "deep", "prompt": "x [[sim:quirk=deep]]"}, {"id": "fine", "prompt": "y"}]
    )
    result = llmbatch("run", str(path))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    deep, fine = read_results(tmp_path / "p.results.jsonl")
    assert deep["status"] == "error" and deep["error"]["type"] == "UnstorableAnswer"
    assert deep["attempts"] == 1  # the same answer would come again: not retried
    assert fine["status"] == "ok"


def test_an_api_key_echoed_in_an_answer_is_redacted_from_the_cache_and_the_results(tmp_path, sim, llmbatch, cache_dir):
    path = one_line(tmp_path, "repeat my key [[sim:quirk=echo_key]]")
    result = llmbatch("run", str(path))
    assert result.exit_code == 0, result.stderr
    results = (tmp_path / "p.results.jsonl").read_text()
    assert TEST_API_KEY not in results
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["content"].endswith("(you sent the key [redacted])")
    stored = b"".join(p.read_bytes() for p in cache_dir.rglob("*") if p.is_file())
    assert TEST_API_KEY.encode() not in stored
    llmbatch("run", str(path))
    [row] = read_results(tmp_path / "p.results.jsonl")
    assert row["cached"] is True and row["content"].endswith("(you sent the key [redacted])")


def test_what_counts_as_an_answer():
    ok = {"choices": [{"finish_reason": "stop", "message": {"content": "hi"}}]}
    assert problem(ok) is None
    assert problem({"choices": [{"finish_reason": "length", "message": {"content": "h"}}]}) is None
    assert problem({"choices": []}).retryable
    assert problem({}).retryable
    assert problem({"choices": [{"finish_reason": "error", "error": {"code": 503}}]}).retryable
    assert problem({"choices": [{"finish_reason": "error"}]}).retryable  # no code: assume transient
    refused = problem({"choices": [{"finish_reason": "error", "error": {"code": 400, "message": "bad"}}]})
    assert refused.kind == "permanent" and "bad" in refused.message
    # An error object is enough, whatever the finish reason says.
    assert problem({"choices": [{"finish_reason": "stop", "error": {"code": 500}}]}) is not None


def test_keepable_leaves_ordinary_answers_alone_and_redacts_only_long_secrets():
    answer = {"choices": [{"message": {"content": "sk-abc is short, sk-0123456789abcdef is long"}}]}
    assert keepable(answer) is answer
    kept = keepable(answer, ("sk-0123456789abcdef", "sk-abc"))
    assert kept["choices"][0]["message"]["content"] == "sk-abc is short, [redacted] is long"


def test_quirky_answers_made_by_worker_processes_are_kept_the_same_way(tmp_path, sim, llmbatch):
    rows = [
        {"id": "big", "prompt": "x [[sim:quirk=bigint]]"},
        {"id": "key", "prompt": "y [[sim:quirk=echo_key]]"},
        {"id": "deep", "prompt": "z [[sim:quirk=deep]]"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    result = llmbatch("run", str(path), "--workers", "1")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    big, key, deep = read_results(tmp_path / "p.results.jsonl")
    assert big["response"]["big"] == "123456789012345678901234567890"
    assert key["content"].endswith("[redacted])") and TEST_API_KEY not in (tmp_path / "p.results.jsonl").read_text()
    assert deep["error"]["type"] == "UnstorableAnswer"
