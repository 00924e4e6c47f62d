"""``llmbatch run --semantic`` end to end: the real CLI, the simulator over HTTP on 127.0.0.1, a real
cache in a temporary directory, and the packaged embedding model (issue 15)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import llmbatch.store as llmbatch_store
from llmbatch.sim import SimulatorThread
from tests.support import Run, read_results, write_jsonl

SYSTEM = "You answer support questions for an online shop in one sentence."
TICKET = "Summarise this support ticket in one sentence: {}"

BASE = [
    {"id": "rag", "prompt": "What is retrieval-augmented generation?"},
    {"id": "lights", "prompt": "Turn on the living room lights at 7 pm."},
    {"id": "refund", "prompt": "How long does a refund to my card take?", "system": SYSTEM},
    {"id": "ticket", "prompt": TICKET.format("My parcel from order 1182 arrived damaged and I want a replacement.")},
    {"id": "capital", "prompt": "What is the capital of France?"},
]
# id -> the base line whose answer it may get (None: a near miss, which must be paid for)
VARIANTS = [
    ({"id": "rag-2", "prompt": "Can you explain what retrieval-augmented generation is?"}, "rag"),
    ({"id": "refund-2", "prompt": "How long does a refund to my card take ?", "system": SYSTEM}, "refund"),
    (
        {"id": "ticket-2", "prompt": TICKET.format("My parcel from order 1182 arrived damaged, and I want a replacement.")},
        "ticket",
    ),
    ({"id": "capital-2", "prompt": "Tell me the capital of France."}, "capital"),
    ({"id": "lights-off", "prompt": "Turn off the living room lights at 7 pm."}, None),
    ({"id": "lights-8", "prompt": "Turn on the living room lights at 8 pm."}, None),
    ({"id": "capital-de", "prompt": "What is the capital of Germany?"}, None),
    (
        {"id": "ticket-other", "prompt": TICKET.format("My parcel from order 1183 arrived damaged and I want a replacement.")},
        None,
    ),
]


def _lines(rows: list[dict[str, object]], **fields: object) -> list[dict[str, object]]:
    return [{**row, "temperature": 0, **fields} for row in rows]


@pytest.fixture
def paid_base(tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread) -> dict[str, str]:
    """The base prompts, answered and stored with --semantic; their keys by id."""
    base = write_jsonl(tmp_path / "base.jsonl", _lines(BASE))
    run = llmbatch("run", str(base), "--semantic", "-q")
    assert run.exit_code == 0, run.stderr
    assert sim.stats()["requests_received"] == len(BASE)
    return {row["id"]: row["key"] for row in read_results(tmp_path / "base.results.jsonl")}


def test_variants_get_the_stored_answers_marked_semantic_and_near_misses_are_paid(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread, paid_base: dict[str, str]
) -> None:
    base_answers = {row["id"]: row["content"] for row in read_results(tmp_path / "base.results.jsonl")}
    variants = write_jsonl(tmp_path / "variants.jsonl", _lines([row for row, _ in VARIANTS]))
    run = llmbatch("run", str(variants), "--semantic", "-q")
    assert run.exit_code == 0, run.stderr
    results = {row["id"]: row for row in read_results(tmp_path / "variants.results.jsonl")}
    for row, matched in VARIANTS:
        got = results[row["id"]]
        if matched is None:
            assert (got["hit"], got["cached"]) == (None, False), row["id"]
            assert "similarity" not in got and "matched_key" not in got
        else:
            assert (got["hit"], got["cached"], got["attempts"]) == ("semantic", True, 0), row["id"]
            assert got["matched_key"] == paid_base[matched]
            assert got["key"] != paid_base[matched]  # the line keeps its own key
            assert 0.9 <= got["similarity"] <= 1.0
            assert got["content"] == base_answers[matched]
    near_misses = sum(matched is None for _, matched in VARIANTS)
    assert sim.stats()["requests_received"] == len(BASE) + near_misses  # exactly the near misses were paid
    assert "4 from cache (4 semantic)" in run.stderr

    stats = json.loads(llmbatch("cache", "stats", "--json").stdout)
    assert stats["semantic"]["semantic_hits"] == 4
    # Only the base prompts a variant could match: each near miss differs from every stored prompt in
    # what the guards see (a number, a name, "off"), so it was never embedded.
    assert stats["semantic"]["prompts_embedded"] == 4


def test_without_semantic_every_variant_is_paid(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread, paid_base: dict[str, str]
) -> None:
    variants = write_jsonl(tmp_path / "variants.jsonl", _lines([row for row, _ in VARIANTS]))
    assert llmbatch("run", str(variants), "-q").exit_code == 0
    assert {row["hit"] for row in read_results(tmp_path / "variants.results.jsonl")} == {None}
    assert sim.stats()["requests_received"] == len(BASE) + len(VARIANTS)


def test_an_exact_hit_comes_before_a_semantic_one(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread, paid_base: dict[str, str]
) -> None:
    llmbatch("run", str(tmp_path / "base.jsonl"), "--semantic", "-q", "-o", str(tmp_path / "again.jsonl"))
    assert {row["hit"] for row in read_results(tmp_path / "again.jsonl")} == {"exact"}
    assert sim.stats()["requests_received"] == len(BASE)


def test_plan_semantic_counts_semantic_hits_apart_and_sends_nothing(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread, paid_base: dict[str, str]
) -> None:
    variants = write_jsonl(tmp_path / "variants.jsonl", _lines([row for row, _ in VARIANTS]))
    where = ["--api-base", sim.url, "--model", "openai:gpt-4o-mini", "--json"]
    with_semantic = json.loads(llmbatch("plan", str(variants), "--semantic", *where).stdout)
    without = json.loads(llmbatch("plan", str(variants), *where).stdout)
    near_misses = sum(matched is None for _, matched in VARIANTS)
    assert (with_semantic["hits"], with_semantic["semantic_hits"], with_semantic["calls"]) == (4, 4, near_misses)
    assert (without["hits"], without["calls"]) == (0, len(VARIANTS)) and "semantic_hits" not in without
    assert with_semantic["estimated_input_tokens"] < without["estimated_input_tokens"]
    assert sim.stats()["requests_received"] == len(BASE)


def test_the_audit_asks_sampled_hits_again_reports_agreement_and_stores_the_fresh_answers(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread, paid_base: dict[str, str]
) -> None:
    variants = write_jsonl(tmp_path / "variants.jsonl", _lines([row for row, _ in VARIANTS]))
    run = llmbatch("run", str(variants), "--semantic", "--semantic-audit", "3")
    assert run.exit_code == 0, run.stderr
    near_misses = sum(matched is None for _, matched in VARIANTS)
    assert sim.stats()["requests_received"] == len(BASE) + near_misses + 3  # 3 of the 4 hits asked again
    found = re.search(r"semantic audit: (\d) of 3 semantic hits asked again agree \((\d) identical, (\d) similar\)", run.stderr)
    assert found is not None, run.stderr
    agree, identical, similar = map(int, found.groups())
    assert agree == identical + similar <= 3
    # The simulator's answer names the prompt it was given, so none is identical to the base's answer.
    assert identical == 0
    # The results file keeps what the run answered; a rerun gets the 3 fresh answers as exact hits.
    assert [row["hit"] for row in read_results(tmp_path / "variants.results.jsonl")].count("semantic") == 4
    llmbatch("run", str(variants), "-q", "-o", str(tmp_path / "again.jsonl"))
    hits = [row["hit"] for row in read_results(tmp_path / "again.jsonl")]
    assert hits.count("exact") == near_misses + 3


@pytest.mark.parametrize(
    ("what", "fields", "options"),
    [
        ("model", {}, ["--model", "openai:gpt-4o"]),
        ("system prompt", {"system": "You answer in French."}, []),
        ("a parameter", {"max_tokens": 40}, []),
        ("response_format", {"response_format": {"type": "json_object"}}, []),
        ("extra", {"extra": {"extra_body": {"top_k": 40}}}, []),
        ("sample", {"sample": 1}, []),
        ("temperature not 0", {"temperature": 0.5}, []),
    ],
)
def test_a_changed_scope_prevents_a_semantic_hit(
    tmp_path: Path,
    llmbatch: Callable[..., Run],
    sim: SimulatorThread,
    paid_base: dict[str, str],
    what: str,
    fields: dict[str, object],
    options: list[str],
) -> None:
    variant = write_jsonl(
        tmp_path / "variant.jsonl",
        _lines([{"id": "rag-2", "prompt": "Can you explain what retrieval-augmented generation is?"}], **fields),
    )
    run = llmbatch("run", str(variant), "--semantic", "-q", *options)
    assert run.exit_code == 0, run.stderr
    [result] = read_results(tmp_path / "variant.results.jsonl")
    assert (result["hit"], result["cached"]) == (None, False), what
    assert sim.stats()["requests_received"] == len(BASE) + 1


def test_guards_off_serves_the_near_miss_that_guards_refuse(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread, paid_base: dict[str, str]
) -> None:
    variant = write_jsonl(tmp_path / "v.jsonl", _lines([{"id": "off", "prompt": "Turn off the living room lights at 7 pm."}]))
    llmbatch("run", str(variant), "--semantic", "--semantic-threshold", "0.8", "-q", "-o", str(tmp_path / "on.jsonl"))
    assert read_results(tmp_path / "on.jsonl")[0]["hit"] is None
    (tmp_path / "on.jsonl").unlink()
    # The paid answer is now stored exactly: ask the same near miss under another id's scope-equal twin.
    twin = write_jsonl(tmp_path / "t.jsonl", _lines([{"id": "off", "prompt": "Turn on the living room lights at 8 pm."}]))
    run = llmbatch(
        "run", str(twin), "--semantic", "--semantic-threshold", "0.8", "--semantic-guards", "off", "-q",
        "-o", str(tmp_path / "off.jsonl"),
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    [result] = read_results(tmp_path / "off.jsonl")
    assert result["hit"] == "semantic"  # a wrong answer, served: why the guards are on by default


# A reviewer's report, 2026-12-03: each reversed question was served its forward twin's answer
# (similarities of 0.95 to 0.999), since the guards compared names, units and numbers as sets.
FORWARD_AND_REVERSED = [
    ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?"),
    ("Did Germany invade Poland in 1939?", "Did Poland invade Germany in 1939?"),
    ("Convert kilograms to pounds: 5 kg", "Convert pounds to kilograms: 5 kg"),
    ("Sort these numbers in ascending order: 5, 3, 9, 1", "Sort these numbers in descending order: 5, 3, 9, 1"),
    ("Is London bigger than Paris?", "Is Paris bigger than London?"),
    ("How do I convert a list to a tuple in Python?", "How do I convert a tuple to a list in Python?"),
]


def test_a_reversed_question_is_paid_while_a_rewording_in_the_same_order_is_served(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread
) -> None:
    forward_rows = [{"id": f"f{i}", "prompt": a} for i, (a, _) in enumerate(FORWARD_AND_REVERSED)]
    forward = write_jsonl(tmp_path / "forward.jsonl", _lines(forward_rows))
    assert llmbatch("run", str(forward), "--semantic", "-q").exit_code == 0
    reworded = {"id": "reworded", "prompt": "How can I convert Celsius to Fahrenheit?"}
    rows = [{"id": f"r{i}", "prompt": b} for i, (_, b) in enumerate(FORWARD_AND_REVERSED)] + [reworded]
    reversed_ = write_jsonl(tmp_path / "reversed.jsonl", _lines(rows))
    run = llmbatch("run", str(reversed_), "--semantic", "-q")
    assert run.exit_code == 0, run.stderr
    results = {row["id"]: row for row in read_results(tmp_path / "reversed.results.jsonl")}
    for i in range(len(FORWARD_AND_REVERSED)):
        assert (results[f"r{i}"]["hit"], results[f"r{i}"]["cached"]) == (None, False), FORWARD_AND_REVERSED[i][1]
    assert results["reworded"]["hit"] == "semantic"  # the semantic cache was at work, and kept to the order
    assert sim.stats()["requests_received"] == 2 * len(FORWARD_AND_REVERSED)  # every reversed line paid


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--semantic-threshold", "0.9"], "--semantic-threshold applies to a semantic cache: add --semantic"),
        (["--semantic-guards", "off"], "--semantic-guards applies to a semantic cache: add --semantic"),
        (["--semantic-audit", "5"], "--semantic-audit applies to a semantic cache: add --semantic"),
        (["--semantic", "--semantic-threshold", "1.5"], "--semantic-threshold 1.5: give a cosine similarity"),
        (["--semantic", "--semantic-guards", "maybe"], "--semantic-guards maybe: give on or off"),
        (["--semantic", "--no-cache"], "--semantic answers from the cache: it cannot be combined with --no-cache"),
        (["--semantic", "--semantic-model", "/nonexistent"], "--semantic-model /nonexistent: not a directory"),
    ],
)
def test_bad_semantic_options_are_one_line_exit_2_and_nothing_sent(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread, args: list[str], message: str
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", _lines(BASE))
    run = llmbatch("run", str(prompts), *args)
    assert run.exit_code == 2
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert sim.stats()["requests_received"] == 0


def test_a_model_directory_without_a_model_is_refused(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", _lines(BASE))
    (tmp_path / "empty").mkdir()
    run = llmbatch("run", str(prompts), "--semantic", "--semantic-model", str(tmp_path / "empty"))
    assert run.exit_code == 2
    assert "no model.onnx there" in run.stderr and "Traceback" not in run.stderr
    assert sim.stats()["requests_received"] == 0


def test_a_missing_semantic_extra_names_the_extra_exit_2_and_nothing_sent(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An uninstalled package, as the import system sees it: None in sys.modules makes the import fail.
    monkeypatch.setitem(sys.modules, "usearch", None)
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    monkeypatch.delitem(sys.modules, "llmbatch.store.semantic_index", raising=False)
    monkeypatch.delattr(llmbatch_store, "semantic_index", raising=False)
    prompts = write_jsonl(tmp_path / "p.jsonl", _lines(BASE))
    run = llmbatch("run", str(prompts), "--semantic")
    assert run.exit_code == 2
    assert "--semantic needs the 'semantic' extra" in run.stderr
    assert "pip install 'llmbatch[semantic]'" in run.stderr and "Traceback" not in run.stderr
    assert sim.stats()["requests_received"] == 0


def test_help_and_plain_runs_do_not_import_the_model_or_the_index(tmp_path: Path, sim: SimulatorThread) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", _lines(BASE[:1]))
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from llmbatch.cli import app\n"
        "for args in (['--help'], ['run', '--help'], ['run', sys.argv[1], '--api-base', sys.argv[2], "
        "'--model', 'openai:gpt-4o-mini', '-q']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print(sorted(m for m in ('onnxruntime', 'tokenizers', 'usearch', 'numpy') if m in sys.modules))\n"
    )
    env = {"LLMBATCH_CACHE_DIR": str(tmp_path / "cache"), "OPENAI_API_KEY": "sk-test", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(prompts), sim.url], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "[]"


def test_semantic_hits_are_served_from_a_redis_store_on_another_machine(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread, redis_server
) -> None:
    # One machine stores the answers in Redis without --semantic; another, with its own empty local
    # directory, embeds what Redis holds and answers the variants from it.
    shared = ["--cache", redis_server.url]
    base = write_jsonl(tmp_path / "base.jsonl", _lines(BASE))
    assert llmbatch("run", str(base), *shared, "--cache-dir", str(tmp_path / "one"), "-q").exit_code == 0
    variants = write_jsonl(tmp_path / "variants.jsonl", _lines([row for row, _ in VARIANTS]))
    run = llmbatch("run", str(variants), *shared, "--cache-dir", str(tmp_path / "two"), "--semantic", "-q")
    assert run.exit_code == 0, run.stderr
    results = {row["id"]: row["hit"] for row in read_results(tmp_path / "variants.results.jsonl")}
    assert results == {row["id"]: "semantic" if matched else None for row, matched in VARIANTS}
    near_misses = sum(matched is None for _, matched in VARIANTS)
    assert sim.stats()["requests_received"] == len(BASE) + near_misses
    assert (tmp_path / "two" / "semantic").is_dir() and not (tmp_path / "one" / "semantic").exists()


# A pasted document longer than the model's window (256 word pieces): ordinary words only, so that no
# guard has anything to compare.
_DOCUMENT = (
    "our team reviewed the delivery notes and the photos the customer sent with the message, and the"
    " carton looked crushed along one side where the tape had split. "
) * 12


def test_a_prompt_longer_than_the_model_window_is_never_answered_by_a_neighbour(
    tmp_path: Path, llmbatch: Callable[..., Run], sim: SimulatorThread
) -> None:
    # The two tickets share their first 256 word pieces and differ only after them, where the model
    # does not look: an answer for one is not an answer for the other.
    repair = TICKET.format(_DOCUMENT + "the customer would like us to repair the kettle.")
    refund = TICKET.format(_DOCUMENT + "the customer would like us to refund the kettle.")
    base = write_jsonl(tmp_path / "base.jsonl", _lines([{"id": "repair", "prompt": repair}]))
    assert llmbatch("run", str(base), "--semantic", "-q").exit_code == 0
    variant = write_jsonl(tmp_path / "variant.jsonl", _lines([{"id": "refund", "prompt": refund}]))
    run = llmbatch("run", str(variant), "--semantic", "-q")
    assert run.exit_code == 0, run.stderr
    [result] = read_results(tmp_path / "variant.results.jsonl")
    assert (result["hit"], result["cached"]) == (None, False)
    assert sim.stats()["requests_received"] == 2
    # Neither prompt was embedded: the model would not have seen all of it.
    stats = json.loads(llmbatch("cache", "stats", "--json").stdout)
    assert stats["semantic"]["prompts_embedded"] == 0
