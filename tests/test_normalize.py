"""``--normalize whitespace`` (issue 17): layout variants of one prompt are one request, keyed apart
from unnormalised requests, sent normalised; off by default, so no existing key moves.

The pure rules on values first, then the real CLI against the simulator, whose counters and echoed
prompt prove what was paid for and what was sent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmbatch.config import parse_config
from llmbatch.errors import UsageError
from llmbatch.input import Defaults, parse_line
from llmbatch.input.normalize import normalize_messages, normalize_whitespace
from llmbatch.keys import key_material, request_key
from tests.support import read_results, run_cli, write_jsonl

ROOT = Path(__file__).parent.parent
MODEL = "openai:gpt-4o-mini"
WHITESPACE = Defaults(normalize="whitespace")

#: One prompt in five layouts, as templates and copy-paste produce them.
VARIANTS = [
    "What is the capital of France?",
    "What is the capital of France?\n",
    "  What is   the capital of France?  ",
    "What is\tthe capital\nof France?",
    "\r\nWhat  is the capital of  France?\r\n\r\n",
]


def variant_rows(**fields: object) -> list[dict[str, object]]:
    return [{"id": f"v{i}", "prompt": text, **fields} for i, text in enumerate(VARIANTS)]


def key_of(row: dict, defaults: Defaults | None = None) -> str:
    return request_key(parse_line(json.dumps(row), 1, defaults or Defaults()))


# --- the rule, on values -----------------------------------------------------------------------


def test_runs_of_whitespace_become_one_space_and_the_ends_are_trimmed():
    assert normalize_whitespace(" a\n\n  b\t\tc \u00a0d\r\n") == "a b c d"
    assert {normalize_whitespace(text) for text in VARIANTS} == {"What is the capital of France?"}


def test_text_parts_are_normalised_and_images_are_left_as_they_are():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA  AA\n"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": " look \n at this "}, image]}]
    assert normalize_messages(messages, "whitespace") == [
        {"role": "user", "content": [{"type": "text", "text": "look at this"}, image]}
    ]


def test_every_role_is_normalised_and_tool_calls_are_kept():
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":  1}'}}]
    messages = [
        {"role": "system", "content": "Answer\nbriefly.\n"},
        {"role": "user", "content": "hi  there"},
        {"role": "assistant", "content": None, "tool_calls": call},
        {"role": "tool", "tool_call_id": "c1", "content": " 42 "},
    ]
    assert normalize_messages(messages, "whitespace") == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": None, "tool_calls": call},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]


def test_the_messages_given_are_not_changed_in_place():
    messages = [{"role": "user", "content": [{"type": "text", "text": "a  b"}]}]
    normalize_messages(messages, "whitespace")
    assert messages == [{"role": "user", "content": [{"type": "text", "text": "a  b"}]}]


# --- keys --------------------------------------------------------------------------------------


def test_layout_variants_share_one_key_only_when_normalised():
    assert len({key_of(row, WHITESPACE) for row in variant_rows(model=MODEL)}) == 1
    assert len({key_of(row) for row in variant_rows(model=MODEL)}) == len(VARIANTS)


def test_a_normalised_key_differs_from_the_unnormalised_key_of_the_same_text():
    row = {"prompt": "already tidy", "model": MODEL}
    assert parse_line(json.dumps(row), 1, WHITESPACE).messages == parse_line(json.dumps(row), 1).messages
    assert key_of(row, WHITESPACE) != key_of(row)


def test_the_normalisation_is_in_the_key_material_only_when_on():
    row = {"prompt": "x", "model": MODEL}
    assert "normalize" not in key_material(parse_line(json.dumps(row), 1))
    assert key_material(parse_line(json.dumps(row), 1, WHITESPACE))["normalize"] == "whitespace"


def test_the_pinned_key_is_unchanged_when_normalisation_is_off():
    # The literal of tests/test_keys.py: caches written before --normalize existed stay valid.
    base = {
        "id": "q1",
        "prompt": "What is the capital of France?",
        "system": "Answer in one word.",
        "model": MODEL,
        "temperature": 0,
        "max_tokens": 16,
    }
    pinned = "v1:3eb0d02b8d1077022a2eb2973199cb6795f0ea1dab5a3babb92c98b2f38b3ff7"
    assert key_of(base) == pinned
    assert key_of(base, Defaults(normalize_models={"openai:gpt-4o": "whitespace"})) == pinned  # another model's
    assert key_of(base, Defaults(normalize="whitespace", normalize_models={MODEL: None})) == pinned  # opted out


# --- llmbatch.toml, on strings -------------------------------------------------------------------


def test_the_config_sets_normalisation_per_model_and_for_the_rest():
    config = parse_config(
        'normalize = "whitespace"\n[models."OpenAI:gpt-4o"]\nnormalize = "none"\nrpm = 5\n'
        '[models."openai:gpt-4o-mini"]\nnormalize = "whitespace"\n',
        "llmbatch.toml",
    )
    assert config.normalize == "whitespace"
    assert config.normalize_models == {"openai:gpt-4o": None, MODEL: "whitespace"}
    assert list(config.models) == ["openai:gpt-4o"]  # a table that sets only normalize sets no limits


@pytest.mark.parametrize(
    ("text", "where"),
    [('normalize = "tabs"\n', ""), (f'[models."{MODEL}"]\nnormalize = true\n', f'[models."{MODEL}"]: ')],
)
def test_a_bad_normalize_in_the_config_names_the_file_and_the_accepted_values(text, where):
    with pytest.raises(UsageError) as caught:
        parse_config(text, "team/llmbatch.toml")
    shown = "'tabs'" if "tabs" in text else "True"
    assert str(caught.value) == f"team/llmbatch.toml: {where}normalize must be one of whitespace, none, got {shown}"


# --- the CLI against the simulator ---------------------------------------------------------------


def test_five_layouts_of_one_prompt_cost_one_call_with_normalize(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", variant_rows())
    done = llmbatch("run", str(path), "--normalize", "whitespace")
    assert done.exit_code == 0, done.stderr
    assert sim.stats()["requests_received"] == 1
    results = read_results(tmp_path / "p.results.jsonl")
    assert [r["hit"] for r in results] == [None] + ["duplicate"] * 4
    assert len({r["key"] for r in results}) == 1


def test_five_layouts_of_one_prompt_cost_five_calls_without_it(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", variant_rows())
    done = llmbatch("run", str(path))
    assert done.exit_code == 0, done.stderr
    assert sim.stats()["requests_received"] == 5


def test_the_normalised_text_is_what_is_sent(tmp_path, sim, llmbatch):
    # The simulator echoes the last user text it received.
    rows = [
        {"id": "p", "prompt": "  Say\n\nhi  ", "system": "  Be brief.\n"},
        {"id": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": " Say\thello \n"}]}]},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert llmbatch("run", str(path), "--normalize", "whitespace").exit_code == 0
    contents = [r["content"] for r in read_results(tmp_path / "p.results.jsonl")]
    assert [c.split(" to: ", 1)[1] for c in contents] == ["Say hi", "Say hello"]


def test_a_normalised_run_and_a_plain_run_do_not_share_answers(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "already tidy"}])
    assert llmbatch("run", str(path)).exit_code == 0
    assert llmbatch("run", str(path), "--normalize", "whitespace").exit_code == 0
    assert sim.stats()["requests_received"] == 2
    assert llmbatch("run", str(path)).exit_code == 0  # the plain one's answer is still there
    assert sim.stats()["requests_received"] == 2


def test_plan_counts_what_a_normalised_run_calls(tmp_path, sim, llmbatch, env):
    path = write_jsonl(tmp_path / "p.jsonl", variant_rows())
    plan = ["plan", str(path), "--api-base", sim.url, "-m", MODEL, "--json"]
    before = json.loads(run_cli([*plan, "--normalize", "whitespace"], env=env).stdout)
    assert (before["calls"], before["duplicates"]) == (1, 4)
    assert llmbatch("run", str(path), "--normalize", "whitespace").exit_code == 0
    after = json.loads(run_cli([*plan, "--normalize", "whitespace"], env=env).stdout)
    assert (after["hits"], after["calls"]) == (5, 0)
    assert json.loads(run_cli(plan, env=env).stdout)["calls"] == 5  # unnormalised: other keys


def test_llmbatch_toml_normalises_the_models_it_names(tmp_path, sim, llmbatch, monkeypatch):
    (tmp_path / "llmbatch.toml").write_text(f'[models."{MODEL}"]\nnormalize = "whitespace"\n')
    monkeypatch.chdir(tmp_path)
    rows = variant_rows(model=MODEL) + [
        {**row, "id": f"o{i}"} for i, row in enumerate(variant_rows(model="openai:gpt-4o"))
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    done = llmbatch("run", str(path))
    assert done.exit_code == 0, done.stderr
    assert sim.stats()["requests_received"] == 1 + 5  # gpt-4o is not named: its layouts stay apart
    assert "limits from" not in done.stderr  # the file sets no limits

    plan = run_cli(["plan", str(path), "--api-base", sim.url, "--json"], env={})
    assert json.loads(plan.stdout)["hits"] == 10  # plan reads the same file


def test_a_top_level_normalize_applies_to_models_that_do_not_opt_out(tmp_path, sim, llmbatch):
    config = tmp_path / "team.toml"
    config.write_text('normalize = "whitespace"\n[models."openai:gpt-4o"]\nnormalize = "none"\n')
    rows = variant_rows(model=MODEL) + [
        {**row, "id": f"o{i}"} for i, row in enumerate(variant_rows(model="openai:gpt-4o"))
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert llmbatch("run", str(path), "--config", str(config)).exit_code == 0
    assert sim.stats()["requests_received"] == 1 + 5


def test_normalize_on_the_command_line_wins_over_the_file_for_every_model(tmp_path, sim, llmbatch):
    config = tmp_path / "team.toml"
    config.write_text('normalize = "whitespace"\n[models."openai:gpt-4o"]\nnormalize = "none"\n')
    rows = variant_rows(model=MODEL) + [
        {**row, "id": f"o{i}"} for i, row in enumerate(variant_rows(model="openai:gpt-4o"))
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert llmbatch("run", str(path), "--config", str(config), "--normalize", "whitespace").exit_code == 0
    assert sim.stats()["requests_received"] == 2
    assert llmbatch("run", str(path), "--config", str(config), "--normalize", "none").exit_code == 0
    assert sim.stats()["requests_received"] == 2 + 10


@pytest.mark.parametrize("command", ["run", "plan"])
def test_an_unknown_normalize_value_is_one_line_exit_2_and_nothing_is_sent(tmp_path, sim, llmbatch, command):
    path = write_jsonl(tmp_path / "p.jsonl", variant_rows())
    done = llmbatch(command, str(path), "--normalize", "tabs")
    assert done.exit_code == 2
    assert done.stderr == "llmbatch: error: --normalize must be one of whitespace, none, got 'tabs'\n"
    assert sim.stats()["requests_received"] == 0
    assert not (tmp_path / "p.results.jsonl").exists()


def test_a_bad_normalize_in_llmbatch_toml_is_one_line_naming_the_file_exit_2(tmp_path, sim, llmbatch):
    config = tmp_path / "llmbatch.toml"
    config.write_text(f'[models."{MODEL}"]\nnormalize = "Whitespace"\n')
    path = write_jsonl(tmp_path / "p.jsonl", variant_rows())
    done = llmbatch("run", str(path), "--config", str(config))
    assert done.exit_code == 2
    assert done.stderr == (
        f'llmbatch: error: {config}: [models."{MODEL}"]: normalize must be one of whitespace, none, '
        "got 'Whitespace'\n"
    )
    assert sim.stats()["requests_received"] == 0


def test_simulate_without_a_model_still_normalises(tmp_path, env):
    # --simulate gives model-less lines its default model; the normalisation must survive that.
    path = write_jsonl(tmp_path / "p.jsonl", variant_rows())
    done = run_cli(["run", str(path), "--simulate", "--normalize", "whitespace", "-q"], env=env)
    assert done.exit_code == 0, done.stderr
    assert ", 1 call," in done.stderr


def test_the_benchmark_runs_and_counts_one_call_per_distinct_prompt(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "normalize.py"), "--prompts", "3", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert (figures["plain"]["calls"], figures["normalized"]["calls"]) == (15, 3)
    assert figures["normalized"]["prompt_chars_sent"] < figures["plain"]["prompt_chars_sent"] / 5
