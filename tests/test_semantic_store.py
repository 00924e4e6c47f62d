"""The semantic store (llmbatch.store.semantic) with the real packaged model and a real disk store:
scope, temperature, threshold, guards, the vectors kept beside the store, and a damaged index."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmbatch.keys import key_from_material
from llmbatch.model.entry import make_entry
from llmbatch.store.disk import DiskStore
from llmbatch.store.semantic import SemanticSettings, SemanticStore, prompt_and_scope
from llmbatch.store.semantic_index import Embedder

BASE = "What is retrieval-augmented generation?"
PARAPHRASE = "Can you explain what retrieval-augmented generation is?"


def material(text: str = BASE, **changes: Any) -> dict[str, Any]:
    """Key material as the resolver makes it (keys.key_material), with ``changes`` applied."""
    m: dict[str, Any] = {
        "provider": "openai",
        "endpoint": "http://127.0.0.1:9/v1",
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        "params": {"temperature": 0, "max_tokens": 50},
        "extra": {},
        "sample": 0,
    }
    m.update(changes)
    return m


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()  # the packaged int8 all-MiniLM-L6-v2: loaded once for the module


@pytest.fixture
def store(tmp_path: Path, embedder: Embedder) -> Iterator[SemanticStore]:
    s = SemanticStore(DiskStore(tmp_path / "cache"), tmp_path / "cache", embedder=embedder)
    yield s
    s.close()


def put(store: SemanticStore, m: dict[str, Any], answer: str = "RAG retrieves, then generates.") -> str:
    key = key_from_material(m)
    response = {"choices": [{"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}
    entry = make_entry(key=key, request=m, response=response, stored_at=1.0, usage=None, latency_ms=1.0, cost_usd=0.01)
    store.put_many([(key, entry, "openai:gpt-4o-mini")])
    return key


def near(store: SemanticStore, m: dict[str, Any]) -> dict[str, Any] | None:
    key = key_from_material(m)
    return store.get_near([(key, m)]).get(key)


def test_a_paraphrase_in_the_same_scope_gets_the_stored_answer_marked_semantic(store: SemanticStore) -> None:
    base_key = put(store, material())
    hit = near(store, material(PARAPHRASE))
    assert hit is not None
    assert hit["semantic"]["matched_key"] == base_key
    assert 0.85 < hit["semantic"]["similarity"] <= 1.0
    assert hit["response"]["choices"][0]["message"]["content"] == "RAG retrieves, then generates."
    assert "semantic" not in store.get(base_key)  # the stored entry is not changed


SCOPE_CHANGES = {
    "provider": {"provider": "anthropic"},
    "endpoint": {"endpoint": "http://127.0.0.1:10/v1"},
    "model": {"model": "gpt-4o"},
    "system prompt": {
        "messages": [{"role": "system", "content": "Be detailed."}, {"role": "user", "content": PARAPHRASE}]
    },
    "earlier messages": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": PARAPHRASE},
        ]
    },
    "a parameter": {"params": {"temperature": 0, "max_tokens": 51}},
    "tools": {
        "params": {"temperature": 0, "max_tokens": 50, "tools": [{"type": "function", "function": {"name": "f"}}]}
    },
    "response_format": {"params": {"temperature": 0, "max_tokens": 50, "response_format": {"type": "json_object"}}},
    "extra": {"extra": {"reasoning_effort": "low"}},
    "sample": {"sample": 1},
    "normalize": {"normalize": "whitespace"},
}


@pytest.mark.parametrize("changed", SCOPE_CHANGES)
def test_changing_any_scope_element_prevents_a_semantic_hit(store: SemanticStore, changed: str) -> None:
    put(store, material())
    assert near(store, material(PARAPHRASE)) is not None  # the same paraphrase hits in the scope
    assert near(store, material(PARAPHRASE, **SCOPE_CHANGES[changed])) is None


@pytest.mark.parametrize("temperature", [None, 0.7, 1])
def test_only_temperature_zero_requests_are_answered_by_a_neighbour(store: SemanticStore, temperature: Any) -> None:
    params = {"max_tokens": 50} if temperature is None else {"temperature": temperature, "max_tokens": 50}
    put(store, material(params=params))
    assert near(store, material(PARAPHRASE, params=params)) is None
    assert prompt_and_scope(material(params=params)) is None


def test_the_scope_is_everything_but_the_last_user_text() -> None:
    a = prompt_and_scope(material(BASE))
    b = prompt_and_scope(material(PARAPHRASE))
    assert a is not None and b is not None
    assert a[0] == BASE and b[0] == PARAPHRASE and a[1] == b[1]
    assert prompt_and_scope(material(messages=[{"role": "user", "content": [{"type": "text", "text": BASE}]}])) is None
    assert prompt_and_scope(material(params={"temperature": 0, "n": 3})) is None


def test_guards_refuse_a_near_miss_that_the_threshold_alone_would_serve(tmp_path: Path, embedder: Embedder) -> None:
    on, off = "Turn on the living room lights.", "Turn off the living room lights."
    served = {}
    for guards in (True, False):
        directory = tmp_path / f"guards-{guards}"
        settings = SemanticSettings(threshold=0.8, guards=guards)
        with SemanticStore(DiskStore(directory), directory, settings, embedder=embedder) as s:
            put(s, material(on))
            served[guards] = near(s, material(off)) is not None
    assert served == {True: False, False: True}


def test_a_higher_threshold_turns_a_hit_into_a_miss(tmp_path: Path, embedder: Embedder) -> None:
    with SemanticStore(DiskStore(tmp_path), tmp_path, SemanticSettings(threshold=0.999), embedder=embedder) as s:
        put(s, material())
        assert near(s, material(PARAPHRASE)) is None


def test_storing_embeds_nothing_until_a_lookup_searches_the_scope(store: SemanticStore) -> None:
    put(store, material())
    assert store.embedded == 0
    other_scope = material(PARAPHRASE, model="gpt-4o")
    assert near(store, other_scope) is None and store.embedded == 0  # nothing stored there: nothing embedded
    assert near(store, material(PARAPHRASE)) is not None
    assert store.embedded == 2  # the stored prompt, then the question


def test_vectors_are_kept_and_a_reopened_store_embeds_nothing_again(tmp_path: Path, embedder: Embedder) -> None:
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        put(s, material())
        assert near(s, material(PARAPHRASE)) is not None
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        assert near(s, material(PARAPHRASE)) is not None
        assert s.embedded == 1 and s.caught_up == 0  # the question only


def test_a_looked_up_prompt_is_not_embedded_again_when_its_answer_is_stored(store: SemanticStore) -> None:
    put(store, material())
    question = material("What is a vector database?")  # nothing for the guards either: it is compared
    assert near(store, question) is None
    embedded = store.embedded
    put(store, question)  # its answer, paid for: filed with the vector its lookup made
    assert store.index.waiting(prompt_and_scope(question)[1], 10) == []
    assert store.embedded == embedded


def test_answers_stored_without_semantic_are_found_when_it_is_first_used(tmp_path: Path, embedder: Embedder) -> None:
    plain = DiskStore(tmp_path)
    m = material()
    key = key_from_material(m)
    response = {"choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
    entry = make_entry(key=key, request=m, response=response, stored_at=1.0, usage=None, latency_ms=1.0, cost_usd=0.0)
    plain.put(key, entry, tag="t")
    plain.close()
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        assert s.caught_up == 1
        assert near(s, material(PARAPHRASE)) is not None
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        assert s.caught_up == 0


def test_a_corrupt_index_is_rebuilt_from_the_kept_vectors_not_trusted(tmp_path: Path, embedder: Embedder) -> None:
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        put(s, material())
        assert near(s, material(PARAPHRASE)) is not None
        index_file = s.index.directory / "index.usearch"
    index_file.write_bytes(b"not an index" * 100)
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        assert s.index.rebuilt
        assert near(s, material(PARAPHRASE)) is not None
        assert s.embedded == 1  # the question: the stored prompt's vector was kept


def test_a_damaged_vector_record_is_started_again_from_the_store(tmp_path: Path, embedder: Embedder) -> None:
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        put(s, material())
        assert near(s, material(PARAPHRASE)) is not None
        directory = s.index.directory
    for name in ("vectors.db-wal", "vectors.db-shm"):
        (directory / name).unlink(missing_ok=True)
    (directory / "vectors.db").write_bytes(b"garbage" * 1000)
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        assert s.index.reset and s.caught_up == 1
        assert near(s, material(PARAPHRASE)) is not None


def test_a_stale_index_is_rebuilt(tmp_path: Path, embedder: Embedder) -> None:
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        put(s, material())
        assert near(s, material(PARAPHRASE)) is not None
        db = s.index.directory / "vectors.db"
    # Another run's rows, filed after this index was saved: the record and the index disagree.
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO vectors (label, key, scope, vector) VALUES (1, 'v1:other', 's1:x', ?)", (bytes(768),))
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        assert s.index.rebuilt
        assert near(s, material(PARAPHRASE)) is not None


def test_an_index_that_points_at_a_removed_entry_serves_nothing(tmp_path: Path, embedder: Embedder) -> None:
    with SemanticStore(DiskStore(tmp_path), tmp_path, embedder=embedder) as s:
        key = put(s, material())
        s.inner.remove([key])  # behind the vectors' back: they still list it
        assert near(s, material(PARAPHRASE)) is None


def test_audit_agreement_is_identical_text_or_similar_meaning(store: SemanticStore) -> None:
    assert store.agreement("Paris is the capital.", "Paris  is the\ncapital.") == "identical"
    assert store.agreement("The capital of France is Paris.", "Paris is the capital of France.") == "similar"
    assert store.agreement("The capital of France is Paris.", "I like green tea in the morning.") is None


def test_the_audit_sample_holds_every_hit_up_to_its_size_then_a_uniform_sample(
    tmp_path: Path, embedder: Embedder
) -> None:
    settings = SemanticSettings(audit=2)
    with SemanticStore(DiskStore(tmp_path), tmp_path, settings, embedder=embedder) as s:
        put(s, material())
        variants = [
            PARAPHRASE,
            "Could you explain what retrieval-augmented generation is?",
            "what is retrieval-augmented generation ?",
        ]
        for text in variants:
            assert near(s, material(text)) is not None
        assert len(s.audit_sample) == 2
        assert {key for key, _, _ in s.audit_sample} <= {key_from_material(material(t)) for t in variants}


# Ordinary words only: nothing for the guards to compare.
LONG = "the carton looked crushed along the side where the tape had split, and the lid sat loosely. " * 20


def test_prompts_that_differ_only_in_characters_the_model_does_not_know_are_never_matched(
    store: SemanticStore,
) -> None:
    # Both emoji are the tokenizer's unknown token: the model sees one prompt twice.
    put(store, material("Describe the mood of this message: 😀"))
    assert near(store, material("Describe the mood of this message: 😡")) is None
    assert store.embedded == 0


def test_a_stored_prompt_longer_than_the_window_is_never_embedded_nor_a_neighbour(store: SemanticStore) -> None:
    put(store, material(LONG + "please repair it."))
    short = material("Summarise the ticket.")  # nothing the guards look for, as in the long one
    assert near(store, short) is None  # the scope holds something: the long prompt's turn to be embedded came
    assert store.embedded == 1  # the question only
    assert store.index.waiting(prompt_and_scope(short)[1], 10) == []  # and it is not waiting any more
    assert not store.index.has_scope(prompt_and_scope(short)[1])


def test_a_vector_filed_for_a_long_prompt_before_the_window_rule_is_not_trusted(store: SemanticStore) -> None:
    # Runs before the rule embedded long prompts (cut at the window): such vectors may be on file. This
    # one says "Summarise the ticket."; the entry says what was asked, and it is too long to compare.
    key = put(store, material(LONG + "please repair it."))
    store.index.fill([(key, store.embedder.embed(["Summarise the ticket."])[0])])
    assert near(store, material("Summarise the ticket.")) is None


def test_audit_agreement_does_not_count_long_answers_alike_only_in_their_openings(store: SemanticStore) -> None:
    assert store.agreement(LONG + "We will repair it.", LONG + "We will refund it.") is None


def test_opening_a_semantic_store_loads_no_model_until_something_is_embedded(tmp_path: Path) -> None:
    with SemanticStore(DiskStore(tmp_path), tmp_path) as s:
        put(s, material())
        assert near(s, material(PARAPHRASE, model="gpt-4o")) is None  # nothing stored in that scope
        assert not s.embedder.loaded
        assert near(s, material(PARAPHRASE)) is not None
        assert s.embedder.loaded


def test_a_key_asked_again_keeps_the_vector_its_first_lookup_made(store: SemanticStore) -> None:
    # The leading hits are looked for while the file is validated, then the run asks for the rest.
    put(store, material())
    question = material("What is the capital of France?")
    assert near(store, question) is None
    embedded = store.embedded
    assert near(store, question) is None
    assert store.embedded == embedded


def test_the_lookup_for_an_event_loop_answers_as_the_plain_one(store: SemanticStore) -> None:
    base_key = put(store, material())
    asked = [(key_from_material(m), m) for m in (material(PARAPHRASE), material("Turn off the lights."))]
    found = asyncio.run(store.get_near_async(asked))
    assert list(found) == [asked[0][0]] and found[asked[0][0]]["semantic"]["matched_key"] == base_key
    assert store.get_near(asked).keys() == found.keys()


def test_a_question_no_stored_prompt_of_its_scope_agrees_with_on_the_guards_is_not_embedded(
    store: SemanticStore,
) -> None:
    put(store, material("Summarise ticket 1182 in a sentence."))
    assert near(store, material("Summarise ticket 1183 in a sentence.")) is None  # another number
    assert store.embedded == 0
    assert near(store, material("Please summarise ticket 1182 in a sentence.")) is not None
    assert store.embedded == 2  # the stored prompt, then the question
