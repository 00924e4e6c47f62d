"""The semantic cache's guards (llmbatch.store.semantic_guards): pure functions, no model."""

from __future__ import annotations

import pytest

from llmbatch.store.semantic_guards import disagreements, entities, numbers, polarity, quoted, signature


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is RAG?", "Can you explain RAG?"),
        ("What is the capital of France?", "Tell me the capital of France."),
        ("Summarise:  the meeting moved to 3 pm.", "Summarise: the meeting moved to 3 pm"),
        ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
        ("Isn't water wet?", "Is water not wet?"),
        ("Convert 1,000 metres to feet.", "Convert 1000 metres to feet."),
        ("Explain `git rebase` briefly", "Briefly explain `git rebase`"),
    ],
)
def test_paraphrases_pass_every_guard(a: str, b: str) -> None:
    assert disagreements(a, b) == []


@pytest.mark.parametrize(
    ("a", "b", "guard"),
    [
        ("What is 12 times 7?", "What is 12 times 8?", "numbers"),
        ("Refund the order of March 3", "Refund the order of March 4", "numbers"),
        ("Book a table for two", "Book a table for three", "numbers"),
        ("Is $50 a fair price?", "Is €50 a fair price?", "numbers"),
        ("Meet on Monday", "Meet on Tuesday", "numbers"),
        ("It broke after two days.", "It broke after two years.", "numbers"),
        ("Turn on the light", "Turn off the light", "polarity"),
        ("Is the service available?", "Isn't the service available?", "polarity"),
        ("List the advantages of Rust", "List the disadvantages of Rust", "polarity"),
        ("Which is the largest planet?", "Which is the smallest planet?", "polarity"),
        ("It is louder than I expected.", "It is quieter than I expected.", "polarity"),
        ("The blue jacket is sold out.", "The red jacket is sold out.", "polarity"),
        ("Not as shown, and they run small.", "Not as shown, and they do not run small.", "polarity"),
        ("Who founded Microsoft?", "Who founded Apple?", "entities"),
        ("Paris is in which country?", "Berlin is in which country?", "entities"),
        ("What does the NHS do?", "What does the IRS do?", "entities"),
        ('Translate "good morning" to French', 'Translate "good night" to French', "quoted"),
        ("What does `os.walk` return?", "What does `os.scandir` return?", "quoted"),
        ("Explain list_files in the repo", "Explain read_files in the repo", "quoted"),
    ],
)
def test_a_changed_meaning_word_is_refused_by_its_guard(a: str, b: str, guard: str) -> None:
    assert guard in disagreements(a, b)


def test_numbers_normalise_format_not_value() -> None:
    assert numbers("1,000 and ten") == numbers("1000 and 10")
    assert numbers("2024-03-01") != numbers("2024-03-02")
    assert numbers("3.5%") == {"3.5", "percent"}


def test_negation_forms_agree_with_each_other_but_not_with_none() -> None:
    assert polarity("it does not work") == polarity("it doesn't work") == {"not"}
    assert polarity("it works") == frozenset()


def test_negations_are_counted() -> None:
    assert polarity("not this, and not that") == {"not*2"} != polarity("not this, and that")


def test_a_common_opening_word_is_not_an_entity_but_a_name_is() -> None:
    assert entities("What is RAG? Explain it.") == {"rag"}
    assert entities("Amazon sells books. Which ones?") == {"amazon"}


def test_quoted_strings_and_code_are_compared_whitespace_normalised() -> None:
    assert quoted('say "hi  there"') == quoted('say "hi there"')
    assert quoted("call foo.bar(x)") != quoted("call foo.baz(x)")
    assert quoted("it's John's book") == frozenset()  # apostrophes are not quotes


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is RAG?", "Can you explain RAG?"),
        ("Turn on the lights.", "Turn off the lights."),
        ("Invoice of March 3", "Invoice of March 4"),
        ("Say `ls -la`", "Say `ls -l`"),
    ],
)
def test_the_signature_is_equal_exactly_when_the_guards_agree(a: str, b: str) -> None:
    assert (signature(a) == signature(b)) == (not disagreements(a, b))
