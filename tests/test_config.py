"""llmbatch.toml: parsing on strings, finding the file, and --rpm/--tpm over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmbatch.config import CONFIG_NAME, Config, load_config, merge_limits, parse_config
from llmbatch.errors import UsageError
from llmbatch.limits import LimitSettings
from llmbatch.pricing import ModelPrice

SOURCE = "team/llmbatch.toml"

GOOD = """
[models."openai:gpt-4o-mini"]
rpm = 500
tpm = 200000
concurrency = 32

[models."Anthropic:claude-sonnet-4-5"]
rpm = 50
"""


def problem(text: str) -> str:
    with pytest.raises(UsageError) as caught:
        parse_config(text, SOURCE)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: "), message
    return message


# --- parse_config -------------------------------------------------------------------------------


def test_a_config_gives_settings_per_provider_model():
    config = parse_config(GOOD, SOURCE)
    assert config == Config(
        source=SOURCE,
        models={
            "openai:gpt-4o-mini": LimitSettings(rpm=500, tpm=200000, concurrency=32),
            "anthropic:claude-sonnet-4-5": LimitSettings(rpm=50),
        },
    )


def test_the_provider_is_lower_cased_and_the_model_name_kept_as_written():
    config = parse_config('[models."OpenAI:GPT-4o"]\nrpm = 5\n', SOURCE)
    assert list(config.models) == ["openai:GPT-4o"]


def test_an_empty_file_has_no_settings():
    assert parse_config("", SOURCE) == Config(source=SOURCE, models={})


def test_an_unknown_table_is_refused():
    message = problem('[model."openai:gpt-4o-mini"]\nrpm = 5\n')
    assert 'unknown table "model"' in message and '[models."provider:model"]' in message


def test_an_unknown_setting_is_refused_with_a_suggestion():
    message = problem('[models."openai:gpt-4o-mini"]\nrmp = 500\n')
    assert message == f'{SOURCE}: [models."openai:gpt-4o-mini"]: unknown setting "rmp" (did you mean "rpm"?)'


def test_an_unknown_setting_with_nothing_close_has_no_suggestion():
    message = problem('[models."openai:gpt-4o-mini"]\nspeed = 5\n')
    assert message == f'{SOURCE}: [models."openai:gpt-4o-mini"]: unknown setting "speed"'


@pytest.mark.parametrize(
    ("value", "shown"),
    [("0", "0"), ("-5", "-5"), ("true", "True"), ('"500"', "'500'"), ("1.5", "1.5")],
)
@pytest.mark.parametrize("name", ["rpm", "tpm", "concurrency"])
def test_settings_must_be_positive_integers(name, value, shown):
    message = problem(f'[models."openai:gpt-4o-mini"]\n{name} = {value}\n')
    assert message == f'{SOURCE}: [models."openai:gpt-4o-mini"]: {name} must be a positive integer, got {shown}'


def test_a_model_without_provider_is_refused():
    message = problem('[models."gpt-4o-mini"]\nrpm = 5\n')
    assert '[models."gpt-4o-mini"]' in message and "provider:model" in message


def test_a_model_entry_must_be_a_table():
    message = problem('[models]\n"openai:gpt-4o-mini" = 5\n')
    assert message == f'{SOURCE}: [models."openai:gpt-4o-mini"] must be a table'


def test_invalid_toml_is_a_usage_error():
    message = problem('[models."openai:gpt-4o-mini"\nrpm = 5\n')
    assert "not valid TOML" in message


@pytest.mark.parametrize("value", ["5", '"openai:gpt-4o-mini"'])
def test_models_that_is_not_a_table_is_a_usage_error(value):
    problem(f"models = {value}\n")


# --- load_config --------------------------------------------------------------------------------


def test_llmbatch_toml_in_the_working_directory_is_read(tmp_path: Path):
    (tmp_path / CONFIG_NAME).write_text(GOOD, encoding="utf-8")
    config = load_config(None, cwd=tmp_path)
    assert config.source == str(tmp_path / CONFIG_NAME)
    assert config.models["openai:gpt-4o-mini"] == LimitSettings(rpm=500, tpm=200000, concurrency=32)


def test_without_llmbatch_toml_there_are_no_settings(tmp_path: Path):
    assert load_config(None, cwd=tmp_path) == Config()


def test_a_named_file_wins_over_the_working_directory(tmp_path: Path):
    (tmp_path / CONFIG_NAME).write_text(GOOD, encoding="utf-8")
    named = tmp_path / "other.toml"
    named.write_text('[models."mistral:small"]\nrpm = 7\n', encoding="utf-8")
    config = load_config(named, cwd=tmp_path)
    assert config == Config(source=str(named), models={"mistral:small": LimitSettings(rpm=7)})


def test_a_missing_config_file_is_a_clear_usage_error(tmp_path: Path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(UsageError) as caught:
        load_config(missing, cwd=tmp_path)
    assert str(caught.value) == f"cannot read config {missing}: No such file or directory"


def test_a_problem_in_the_file_names_the_file(tmp_path: Path):
    (tmp_path / CONFIG_NAME).write_text('[models."openai:gpt-4o-mini"]\nrmp = 5\n', encoding="utf-8")
    with pytest.raises(UsageError) as caught:
        load_config(None, cwd=tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / CONFIG_NAME}: ")


def test_a_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path):
    (tmp_path / CONFIG_NAME).write_bytes(b'[models."openai:x"]\nrpm = 5 # caf\xe9\n')
    with pytest.raises(UsageError):
        load_config(None, cwd=tmp_path)


# --- merge_limits -------------------------------------------------------------------------------


def test_without_options_the_file_is_used_as_it_is():
    config = parse_config(GOOD, SOURCE)
    models, default = merge_limits(config, rpm=None, tpm=None)
    assert models == config.models
    assert default == LimitSettings()


def test_rpm_and_tpm_options_override_every_model_and_become_the_default():
    models, default = merge_limits(parse_config(GOOD, SOURCE), rpm=100, tpm=9000)
    assert models == {
        "openai:gpt-4o-mini": LimitSettings(rpm=100, tpm=9000, concurrency=32),
        "anthropic:claude-sonnet-4-5": LimitSettings(rpm=100, tpm=9000),
    }
    assert default == LimitSettings(rpm=100, tpm=9000)


def test_one_option_overrides_only_its_own_setting():
    models, default = merge_limits(parse_config(GOOD, SOURCE), rpm=None, tpm=9000)
    assert models["openai:gpt-4o-mini"] == LimitSettings(rpm=500, tpm=9000, concurrency=32)
    assert models["anthropic:claude-sonnet-4-5"] == LimitSettings(rpm=50, tpm=9000)
    assert default == LimitSettings(tpm=9000)


def test_options_without_a_config_file_are_the_default():
    assert merge_limits(Config(), rpm=60, tpm=None) == ({}, LimitSettings(rpm=60))


# --- prices --------------------------------------------------------------------------------------


def test_a_model_priced_in_the_file_has_its_price_and_no_limits():
    config = parse_config('[models."vllm:llama"]\ninput_per_million = 0.1\noutput_per_million = 2\n', SOURCE)
    assert config.prices == {"vllm:llama": ModelPrice(input_per_million=0.1, output_per_million=2.0)}
    assert config.models == {}  # a price alone does not make the run announce "limits from"
    assert config.prices["vllm:llama"].cost(1_000_000, 500_000) == pytest.approx(1.1)


def test_a_price_needs_both_input_and_output():
    message = problem('[models."vllm:llama"]\ninput_per_million = 0.1\n')
    assert message == (
        f'{SOURCE}: [models."vllm:llama"]: output_per_million is missing '
        "(give both input_per_million and output_per_million)"
    )


@pytest.mark.parametrize(("value", "shown"), [("-1", "-1"), ('"0.1"', "'0.1'"), ("true", "True"), ("inf", "inf")])
def test_a_price_must_be_a_non_negative_number(value, shown):
    message = problem(f'[models."vllm:llama"]\ninput_per_million = {value}\noutput_per_million = 1\n')
    assert message == (
        f'{SOURCE}: [models."vllm:llama"]: input_per_million must be USD per million tokens, like 0.15, got {shown}'
    )
