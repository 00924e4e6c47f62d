"""`llmbatch cache export` and `llmbatch cache import`, end to end: a cache handed to a colleague
serves the same hits there, and a file that was tampered with or damaged files nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

from tests.support import prompts, run_cli, write_jsonl


def exported(tmp_path, env, *extra):
    out = tmp_path / "answers.jsonl"
    done = run_cli(["cache", "export", "-o", str(out), *extra], env=env)
    assert done.exit_code == 0, done.stderr
    return out


def test_an_exported_cache_imported_elsewhere_answers_the_same_file_with_no_calls(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(5) + prompts(2, start=10, model="openai:gpt-4o"))
    assert llmbatch("run", str(path), "-o", str(tmp_path / "first.jsonl")).exit_code == 0
    out = exported(tmp_path, env)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 7 and {r["llmbatch_cache"] for r in records} == {1}
    assert all(r["entry"]["request"]["model"] in ("gpt-4o-mini", "gpt-4o") for r in records)

    elsewhere = {**env, "LLMBATCH_CACHE_DIR": str(tmp_path / "colleague")}
    done = run_cli(["cache", "import", str(out)], env=elsewhere)
    assert done.exit_code == 0 and "imported 7 records" in done.stdout and "7 new" in done.stdout
    before = sim.stats()["requests_received"]
    again = run_cli(
        ["run", str(path), "--api-base", sim.url, "-m", "openai:gpt-4o-mini", "-o", str(tmp_path / "second.jsonl")],
        env=elsewhere,
    )
    assert again.exit_code == 0
    assert sim.stats()["requests_received"] == before  # zero calls
    first = [json.loads(line) for line in (tmp_path / "first.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (tmp_path / "second.jsonl").read_text().splitlines()]
    assert [r["response"] for r in second] == [r["response"] for r in first]
    assert all(r["cached"] for r in second)


def test_export_piped_into_import_through_standard_streams(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    assert llmbatch("run", str(path)).exit_code == 0
    cli = [sys.executable, "-m", "llmbatch", "cache"]
    base = {**os.environ, **env}
    export = subprocess.Popen([*cli, "export", "-o", "-"], env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    target = str(tmp_path / "piped")
    imported = subprocess.run(
        [*cli, "import", "-", "--cache-dir", target], env=base, stdin=export.stdout, capture_output=True, text=True
    )
    export.stdout.close()
    assert export.wait() == 0 and "exported 3 entries" in export.stderr.read().decode()
    assert imported.returncode == 0 and "imported 3 records" in imported.stdout
    stats = json.loads(run_cli(["cache", "stats", "--json", "--cache-dir", target], env=env).stdout)
    assert stats["entries"] == 3


def test_import_keeps_when_each_answer_was_stored_so_purge_by_age_still_applies(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    assert llmbatch("run", str(path)).exit_code == 0
    out = exported(tmp_path, env)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    lines[0]["stored_at"] = time.time() - 40 * 86400  # exported from a cache where it is old
    out.write_text("".join(json.dumps(r) + "\n" for r in lines))
    target = str(tmp_path / "other")
    assert run_cli(["cache", "import", str(out), "--cache-dir", target], env=env).exit_code == 0
    stats = json.loads(run_cli(["cache", "stats", "--json", "--cache-dir", target], env=env).stdout)
    assert stats["oldest"] < time.time() - 39 * 86400
    purged = run_cli(["cache", "purge", "--older-than", "30d", "--cache-dir", target], env=env)
    assert purged.stdout.strip() == "removed 1 entry older than 30d"


def test_a_record_whose_request_was_edited_is_refused_by_line_and_nothing_is_imported(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    assert llmbatch("run", str(path)).exit_code == 0
    out = exported(tmp_path, env)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # An answer moved under another question: the request no longer makes the key it is filed under.
    lines[1]["entry"]["request"]["messages"][-1]["content"] = "What is the capital of France?"
    out.write_text("".join(json.dumps(r) + "\n" for r in lines))
    target = tmp_path / "other"
    done = run_cli(["cache", "import", str(out), "--cache-dir", str(target)], env=env)
    assert done.exit_code == 2
    assert f"{out}:2: the key does not match the request stored with it" in done.stderr
    assert "1 invalid line; nothing was imported" in done.stderr
    assert "Traceback" not in done.stderr
    assert not target.exists()  # no cache was even made


def test_damaged_answer_bytes_fail_the_digest_and_each_bad_record_is_named(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(4))
    assert llmbatch("run", str(path)).exit_code == 0
    out = exported(tmp_path, env)
    lines = out.read_text().splitlines()
    record = json.loads(lines[0])
    text = record["entry"]["response"]["choices"][0]["message"]["content"]
    record["entry"]["response"]["choices"][0]["message"]["content"] = text[:-1] + "!"  # one byte changed
    lines[0] = json.dumps(record)
    lines[2] = lines[2][: len(lines[2]) // 2]  # cut in half
    lines.append('{"llmbatch_cache": 7, "key": "v1:x"}')
    out.write_text("\n".join(lines) + "\n")
    done = run_cli(["cache", "import", str(out), "--cache-dir", str(tmp_path / "other")], env=env)
    assert done.exit_code == 2
    assert f"{out}:1: the entry's digest does not match its contents: damaged" in done.stderr
    assert f"{out}:3: not JSON" in done.stderr
    assert f"{out}:5: not an llmbatch cache export record (llmbatch_cache format 7" in done.stderr
    assert "3 invalid lines; nothing was imported" in done.stderr


def test_a_refusal_is_never_imported_as_an_answer(tmp_path, sim, llmbatch, env):
    from llmbatch.model.entry import entry_digest

    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    assert llmbatch("run", str(path)).exit_code == 0
    out = exported(tmp_path, env)
    record = json.loads(out.read_text())
    record["entry"]["response"]["choices"][0]["finish_reason"] = "content_filter"
    record["entry"]["digest"] = entry_digest(record["entry"])  # a consistent record, but not an answer
    out.write_text(json.dumps(record) + "\n")
    done = run_cli(["cache", "import", str(out), "--cache-dir", str(tmp_path / "other")], env=env)
    assert done.exit_code == 2 and "not an answer to keep" in done.stderr


def test_importing_twice_keeps_the_newer_answer_and_says_so(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    assert llmbatch("run", str(path)).exit_code == 0
    out = exported(tmp_path, env)
    done = run_cli(["cache", "import", str(out)], env=env)  # into the cache it came from
    assert done.exit_code == 0
    assert done.stdout.strip().endswith("0 new; 2 left as they were: this cache's answer is as new or newer")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    lines[0]["stored_at"] += 60  # a later answer to the same request, from somewhere else
    out.write_text("".join(json.dumps(r) + "\n" for r in lines))
    done = run_cli(["cache", "import", str(out)], env=env)
    assert "0 new; 1 replaced an older answer; 1 left as they were" in done.stdout


def test_export_filters_by_model_and_age_as_purge_does(tmp_path, sim, llmbatch, env, cache_dir):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3) + prompts(2, start=10, model="openai:gpt-4o"))
    assert llmbatch("run", str(path)).exit_code == 0
    with sqlite3.connect(cache_dir / "cache.db") as db:  # two of them stored ten days ago
        db.execute(
            "UPDATE Cache SET store_time = store_time - 864000 WHERE rowid IN "
            "(SELECT rowid FROM Cache WHERE tag = 'openai:gpt-4o-mini' ORDER BY rowid LIMIT 2)"
        )
    count = lambda out: len(out.read_text().splitlines())  # noqa: E731
    assert count(exported(tmp_path, env, "--model", "openai:gpt-4o")) == 2
    assert count(exported(tmp_path, env, "--older-than", "7d")) == 2
    assert count(exported(tmp_path, env, "--newer-than", "7d")) == 3
    assert count(exported(tmp_path, env, "--newer-than", "7d", "--model", "openai:gpt-4o-mini")) == 1
    bad = run_cli(["cache", "export", "-o", str(tmp_path / "x.jsonl"), "--model", "gpt-4o"], env=env)
    assert bad.exit_code == 2 and "provider:model" in bad.stderr


def test_export_of_a_cache_that_does_not_exist_is_a_clear_error_and_writes_nothing(tmp_path, env, cache_dir):
    done = run_cli(["cache", "export", "-o", str(tmp_path / "a.jsonl")], env=env)
    assert done.exit_code == 2 and f"no cache at {cache_dir}" in done.stderr
    assert not (tmp_path / "a.jsonl").exists()


def test_export_says_when_its_filters_cannot_select_anything_or_name_the_wrong_tag(tmp_path, env):
    from llmbatch.store import DiskStore

    DiskStore(tmp_path / "cache").close()  # an empty cache, so the filters are what is judged
    both = run_cli(
        ["cache", "export", "-o", str(tmp_path / "x.jsonl"), "--newer-than", "5d", "--older-than", "30d"], env=env
    )
    assert both.exit_code == 2 and "select nothing together" in both.stderr
    plain = run_cli(["cache", "export", "-o", str(tmp_path / "y.jsonl"), "--model", "openai:gpt-4o-mini"], env=env)
    assert plain.exit_code == 0 and "simulated/openai:gpt-4o-mini" in plain.stderr


def test_import_from_a_pipe_by_name_reads_it_as_standard_input(tmp_path, sim, llmbatch, env):
    assert llmbatch("run", str(write_jsonl(tmp_path / "p.jsonl", prompts(3)))).exit_code == 0
    records = exported(tmp_path, env).read_text()
    fifo = tmp_path / "records.fifo"
    os.mkfifo(fifo)
    # A writer on the other end, as `<(zcat answers.jsonl.gz)` would be.
    writer = subprocess.Popen(["sh", "-c", f'cat > "{fifo}"'], stdin=subprocess.PIPE, text=True)
    writer.stdin.write(records)
    writer.stdin.close()
    done = run_cli(["cache", "import", str(fifo), "--cache-dir", str(tmp_path / "other")], env=env)
    assert writer.wait(timeout=10) == 0
    assert done.exit_code == 0 and "imported 3 records" in done.stdout, done.stderr
