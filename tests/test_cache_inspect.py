"""`llmbatch cache explain`, `cache show` and `cache verify`, end to end against the simulator."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from llmbatch.app.inspect import diff_material, split_line_ref
from llmbatch.store import DiskStore
from tests.support import prompts, read_results, run_cli, write_jsonl

MODEL = "openai:gpt-4o-mini"


def explain(env, sim, *args: str):
    return run_cli(["cache", "explain", *args, "--api-base", sim.url, "--model", MODEL], env=env)


def key_of(env, sim, ref: str) -> str:
    return json.loads(explain(env, sim, ref, "--json").stdout)["key"]


# --- explain -------------------------------------------------------------------------------------


def test_explain_against_a_line_that_differs_in_temperature_names_the_temperature(tmp_path, sim, env):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": "a", "prompt": "hi", "temperature": 0}, {"id": "b", "prompt": "hi", "temperature": 0.7}],
    )
    result = explain(env, sim, f"{path}:2", "--against", f"{path}:1")
    assert result.exit_code == 0, result.stderr
    assert "the keys differ: 1 field of the key material" in result.stdout
    assert "  params.temperature: 0.0 → 0.7\n" in result.stdout
    data = json.loads(explain(env, sim, f"{path}:2", "--against", f"{path}:1", "--json").stdout)
    assert data["same_key"] is False
    assert data["differences"] == [{"field": "params.temperature", "before": 0.0, "after": 0.7}]


def test_explain_against_a_line_that_asks_the_same_says_the_keys_are_equal(tmp_path, sim, env):
    # Another id, other metadata, a messages line for a prompt line: none of it is in the key.
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "hi", "metadata": {"n": 1}},
            {"id": "b", "messages": [{"role": "user", "content": "hi"}]},
        ],
    )
    result = explain(env, sim, f"{path}:1", "--against", f"{path}:2")
    assert result.exit_code == 0
    assert "the keys are equal" in result.stdout
    assert json.loads(explain(env, sim, f"{path}:1", "--against", f"{path}:2", "--json").stdout)["differences"] == []


def test_explain_says_not_stored_before_a_run_and_when_and_at_what_cost_after(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    before = json.loads(explain(env, sim, f"{path}:2", "--json").stdout)
    assert before["stored"] is None
    assert "not stored" in explain(env, sim, f"{path}:2").stdout
    assert llmbatch("run", str(path)).exit_code == 0

    after = json.loads(explain(env, sim, f"{path}:2", "--json").stdout)
    results = read_results(path.with_name("p.results.jsonl"))
    assert after["key"] == before["key"] == results[1]["key"]
    assert after["stored"]["served"] is True and after["stored"]["cost_usd"] == results[1]["cost_usd"]
    assert after["stored"]["tag"] == MODEL
    assert after["material"] == {
        "provider": "openai",
        "endpoint": "llmbatch-simulator@" + sim.url.rstrip("/"),  # the simulator answers there
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "question number 1"}],
        "params": {},
        "extra": {},
        "sample": 0,
    }
    text = explain(env, sim, f"{path}:2").stdout
    assert text.startswith(f"{path}:2  {after['key']}\nstored ") and MODEL in text
    # The key follows the options that make it, as in run: --simulate files answers elsewhere.
    simulated = run_cli(["cache", "explain", f"{path}:2", "--simulate", "--json"], env=env)
    assert json.loads(simulated.stdout)["material"]["endpoint"] == "llmbatch-simulator"


def test_explain_of_a_bad_line_gives_the_error_run_gives(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "hi", "temperature": "hot"}])
    ran = llmbatch("run", str(path))
    explained = explain(env, sim, f"{path}:1")
    assert (explained.exit_code, ran.exit_code) == (2, 2)
    assert explained.stderr == ran.stderr
    assert f'{path}:1: "temperature" must be a number, got a string' in explained.stderr


def test_explain_of_a_line_past_the_end_blank_or_not_a_number_is_a_usage_error(tmp_path, sim, env):
    path = write_jsonl(tmp_path / "p.jsonl", [*prompts(1), ""])
    for ref, message in (
        (f"{path}:9", f"{path}:9: {path} has only 2 lines"),
        (f"{path}:2", f"{path}:2 is a blank line"),
        (f"{path}:0", "the line number must be a whole number from 1"),
        (f"{path}:two", "the line number must be a whole number from 1"),
        (str(path), "name a line as FILE:LINE"),
    ):
        result = explain(env, sim, ref)
        assert result.exit_code == 2, ref
        assert message in result.stderr and "Traceback" not in result.stderr


def test_explain_splits_at_the_last_colon_so_file_names_may_hold_colons(tmp_path, sim, env):
    path = write_jsonl(tmp_path / "run 12:30.jsonl", prompts(3))
    assert split_line_ref(f"{path}:3") == (str(path), 3)
    result = explain(env, sim, f"{path}:3", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["material"]["messages"][0]["content"] == "question number 2"


def test_differences_name_fields_that_one_side_does_not_have():
    before = {"params": {"temperature": 0.0}, "messages": [{"role": "user", "content": "a"}]}
    after = {"params": {"temperature": 0.0, "top_p": 0.5}, "messages": []}
    found = [d.to_dict() for d in diff_material(before, after)]
    assert found == [
        {"field": "messages[0]", "before": {"role": "user", "content": "a"}},
        {"field": "params.top_p", "after": 0.5},
    ]


# --- show ----------------------------------------------------------------------------------------


def test_show_renders_the_prompt_and_the_answer_and_json_round_trips_the_record(
    tmp_path, sim, llmbatch, env, cache_dir
):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "system": "be brief", "prompt": "what is 2+2?"}])
    assert llmbatch("run", str(path)).exit_code == 0
    result = read_results(path.with_name("p.results.jsonl"))[0]
    key = result["key"]

    shown = run_cli(["cache", "show", key], env=env)
    assert shown.exit_code == 0, shown.stderr
    answer = result["response"]["choices"][0]["message"]["content"]
    for text in ("system: be brief", "user: what is 2+2?", answer, MODEL, "never", "prompt", "answer"):
        assert text in shown.stdout, text

    raw = run_cli(["cache", "show", key, "--json"], env=env)
    with DiskStore(cache_dir, create=False) as store:
        assert json.loads(raw.stdout) == store.get(key)
    # A unique prefix of the key names the same entry, with or without v1:.
    assert run_cli(["cache", "show", key[:13], "--json"], env=env).stdout == raw.stdout
    assert run_cli(["cache", "show", key[3:13], "--json"], env=env).stdout == raw.stdout


def test_show_of_a_key_not_in_the_cache_exits_1_and_of_what_is_not_a_key_exits_2(tmp_path, sim, llmbatch, env):
    assert llmbatch("run", str(write_jsonl(tmp_path / "p.jsonl", prompts(1)))).exit_code == 0
    missing = run_cli(["cache", "show", "v1:" + "0" * 64], env=env)
    assert missing.exit_code == 1
    assert missing.stderr.startswith(f"llmbatch: error: no entry v1:{'0' * 64} in the cache at ")
    for text in ("v1:abc", "hello world", "v1:" + "0" * 65):
        assert run_cli(["cache", "show", text], env=env).exit_code == 2, text


# --- verify --------------------------------------------------------------------------------------


def _damage(cache_dir: Path, keys: dict[str, str]) -> None:
    """Damage three rows as a disk or a hand could: cut short, the request edited, the digest edited."""
    db = sqlite3.connect(cache_dir / "cache.db")
    with db:
        for how, key in keys.items():
            (value,) = db.execute("SELECT value FROM Cache WHERE key = ?", (key,)).fetchone()
            if how == "cut":
                value = value[: len(value) // 2]
            elif how == "request":
                value = value.replace(b'"content":"question number 1"', b'"content":"question number 100"')
            else:
                record = json.loads(value)
                record["digest"] = "0" * 64
                value = json.dumps(record).encode()
            db.execute("UPDATE Cache SET value = ? WHERE key = ?", (value, key))
    db.close()


def test_verify_finds_damaged_rows_and_repair_removes_exactly_those_so_the_rerun_pays_only_for_them(
    tmp_path, sim, llmbatch, env, cache_dir
):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(6))
    assert llmbatch("run", str(path)).exit_code == 0
    keys = [row["key"] for row in read_results(path.with_name("p.results.jsonl"))]
    clean = run_cli(["cache", "verify"], env=env)
    assert clean.exit_code == 0 and "ok                                 6" in clean.stdout
    _damage(cache_dir, {"cut": keys[0], "request": keys[1], "digest": keys[2]})

    found = run_cli(["cache", "verify", "--json"], env=env)
    assert found.exit_code == 1
    report = json.loads(found.stdout)
    assert report["found"] == {"undecodable": 1, "key_mismatch": 1, "digest_mismatch": 1, "expired": 0, "gone": 0}
    assert report["examples"]["undecodable"] == [keys[0]]
    assert report["examples"]["key_mismatch"] == [keys[1]]
    assert report["examples"]["digest_mismatch"] == [keys[2]]
    assert (report["checked"], report["ok"], report["broken"], report["removed"]) == (6, 3, 3, None)
    text = run_cli(["cache", "verify"], env=env)
    assert text.exit_code == 1 and "llmbatch cache verify --repair removes them" in text.stdout

    repaired = run_cli(["cache", "verify", "--repair"], env=env)
    assert repaired.exit_code == 0
    assert "removed 3 entries" in repaired.stdout
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["entries"] == 3
    assert run_cli(["cache", "verify"], env=env).exit_code == 0

    paid = sim.stats()["requests_received"]
    assert llmbatch("run", str(path)).exit_code == 0
    assert sim.stats()["requests_received"] - paid == 3


def test_verify_counts_older_entries_apart_and_expired_ones_without_failing(tmp_path, sim, llmbatch, env, cache_dir):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    assert llmbatch("run", str(path)).exit_code == 0
    keys = [row["key"] for row in read_results(path.with_name("p.results.jsonl"))]
    db = sqlite3.connect(cache_dir / "cache.db")
    with db:
        # An entry from before v3 (no request, no digest) and one whose --ttl ran out.
        (value,) = db.execute("SELECT value FROM Cache WHERE key = ?", (keys[0],)).fetchone()
        record = json.loads(value)
        del record["request"], record["digest"]
        db.execute("UPDATE Cache SET value = ? WHERE key = ?", (json.dumps(record).encode(), keys[0]))
        db.execute("UPDATE Cache SET expire_time = 1 WHERE key = ?", (keys[1],))
    db.close()
    result = run_cli(["cache", "verify", "--json"], env=env)
    report = json.loads(result.stdout)
    assert result.exit_code == 0
    assert (report["ok"], report["unverifiable"], report["found"]["expired"], report["broken"]) == (1, 1, 1, 0)
    assert json.loads(run_cli(["cache", "verify", "--repair", "--json"], env=env).stdout)["removed"] == 1


def test_verify_without_a_cache_says_so(env, cache_dir):
    result = run_cli(["cache", "verify"], env=env)
    assert (result.exit_code, result.stdout) == (0, f"no cache at {cache_dir}: nothing to verify\n")
