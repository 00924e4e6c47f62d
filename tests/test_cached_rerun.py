"""A cached rerun answers its leading hits in the validation pass (runner.HitPrefix): the same
results, in the same order, with every promise of validation kept."""

from __future__ import annotations

import json

from tests.support import prompts, read_results, write_jsonl


def test_a_rerun_with_new_lines_in_the_middle_answers_the_rest_from_the_cache_in_order(tmp_path, sim, llmbatch):
    first = prompts(600)
    path = write_jsonl(tmp_path / "p.jsonl", first)
    assert llmbatch("run", str(path), "-q").exit_code == 0
    # Three new lines: one inside the first lookup chunk's reach, one past it, one at the very end.
    changed = [*first[:100], {"id": "new-a", "prompt": "new a"}, *first[100:400], {"id": "new-b", "prompt": "new b"}]
    changed += [*first[400:], {"id": "new-c", "prompt": "new c"}]
    write_jsonl(path, changed)
    sim.reset_stats()

    done = llmbatch("run", str(path), "-q")

    assert done.exit_code == 0, done.stderr
    rows = read_results(tmp_path / "p.results.jsonl")
    assert [row["id"] for row in rows] == [row["id"] for row in changed]
    assert [row["line"] for row in rows] == list(range(1, len(changed) + 1))
    assert [row["id"] for row in rows if not row["cached"]] == ["new-a", "new-b", "new-c"]
    assert all(row["status"] == "ok" for row in rows)
    assert sim.stats()["completions_served"] == 3


def test_a_cached_rerun_with_a_bad_last_line_writes_nothing_and_keeps_an_old_partial_file(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(300))
    assert llmbatch("run", str(path), "-q").exit_code == 0
    (tmp_path / "p.results.jsonl").unlink()
    old_partial = tmp_path / "p.results.jsonl.partial"
    old_partial.write_text('{"line": 1}\n')
    write_jsonl(path, [*prompts(300), {"id": "bad", "prompt": 5}])
    before = set(tmp_path.iterdir())

    done = llmbatch("run", str(path), "-q")

    assert done.exit_code == 2
    assert "p.jsonl:301:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "p.results.jsonl").exists()
    assert old_partial.read_text() == '{"line": 1}\n'
    assert set(tmp_path.iterdir()) == before  # no spool left behind


def test_a_cached_rerun_with_a_duplicate_id_at_the_end_is_refused(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(300))
    assert llmbatch("run", str(path), "-q").exit_code == 0
    (tmp_path / "p.results.jsonl").unlink()
    write_jsonl(path, [*prompts(300), {"id": "q0", "prompt": "again"}])

    done = llmbatch("run", str(path), "-q")

    assert done.exit_code == 2
    assert "p.jsonl:301:" in done.stderr and "q0" in done.stderr
    assert not (tmp_path / "p.results.jsonl").exists()


def test_a_cached_rerun_to_stdout_prints_every_line_once_in_order(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(300))
    assert llmbatch("run", str(path), "-q").exit_code == 0
    write_jsonl(path, [*prompts(300), *prompts(2, start=300)])
    sim.reset_stats()

    done = llmbatch("run", str(path), "-q", "-o", "-")

    assert done.exit_code == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["id"] for row in rows] == [f"q{i}" for i in range(302)]
    assert [row["cached"] for row in rows] == [True] * 300 + [False] * 2
    assert sim.stats()["completions_served"] == 2


def test_a_cached_rerun_with_a_bad_last_line_leaves_no_results_file_at_all(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(300))
    assert llmbatch("run", str(path), "-q").exit_code == 0
    (tmp_path / "p.results.jsonl").unlink()
    write_jsonl(path, [*prompts(300), "{not json"])

    done = llmbatch("run", str(path), "-q")

    assert done.exit_code == 2
    assert "p.jsonl:301:" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "p.jsonl"]
