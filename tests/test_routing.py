"""Routing rules (issue 19): ``[[route]]`` in llmbatch.toml chooses the model of a line without its
own. The rules are pure (unit tests below); end to end, the real CLI runs against the simulator over
HTTP and the response's ``model`` says which model answered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmbatch.config import parse_config
from llmbatch.errors import UsageError
from llmbatch.input import Defaults, parse_line
from llmbatch.input.routes import choose_route, parse_routes
from tests.support import read_results, run_cli, write_jsonl

ROUTES = """
[[route]]
when  = { metadata = { task = "extract" } }
model = "openai:gpt-4o-mini"

[[route]]
when  = { prompt_tokens_below = 20 }
model = "openai:sim-1"

[[route]]
model = "openai:gpt-4o"
"""


def _config(tmp_path: Path, text: str = ROUTES, name: str = "llmbatch.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _routes(text: str = ROUTES) -> Defaults:
    return Defaults(routes=parse_config(text, "llmbatch.toml").routes)


# --- the rules, pure -------------------------------------------------------------------------


def test_the_first_matching_route_chooses_the_model():
    defaults = _routes()
    extract = parse_line('{"prompt": "' + "word " * 200 + '", "metadata": {"task": "extract"}}', 1, defaults)
    short = parse_line('{"prompt": "hi", "metadata": {"task": "reason"}}', 2, defaults)
    long = parse_line('{"prompt": "' + "word " * 200 + '"}', 3, defaults)
    assert (extract.model_ref, extract.route) == ("openai:gpt-4o-mini", "route 1")
    assert (short.model_ref, short.route) == ("openai:sim-1", "route 2")
    assert (long.model_ref, long.route) == ("openai:gpt-4o", "route 3")


def test_a_lines_own_model_wins_then_a_route_then_model_option():
    only_extract = parse_config(ROUTES.split("[[route]]\nwhen  = { prompt")[0], "llmbatch.toml").routes
    defaults = Defaults(model="openai:sim-1", routes=only_extract)
    own = parse_line('{"prompt": "x", "model": "openai:gpt-4o", "metadata": {"task": "extract"}}', 1, defaults)
    routed = parse_line('{"prompt": "x", "metadata": {"task": "extract"}}', 2, defaults)
    flag = parse_line('{"prompt": "x", "metadata": {"task": "other"}}', 3, defaults)
    assert [(r.model_ref, r.route) for r in (own, routed, flag)] == [
        ("openai:gpt-4o", "line"),
        ("openai:gpt-4o-mini", "route 1"),
        ("openai:sim-1", "--model"),
    ]


def test_every_condition_of_a_when_must_hold():
    [route] = parse_routes([{"when": {"metadata": {"task": "x", "lang": "fr"}, "match": r"\bcode\b"}, "model": "openai:b"}])
    messages = [{"role": "user", "content": "write code"}]
    assert choose_route([route], {"task": "x", "lang": "fr"}, messages) is route
    assert choose_route([route], {"task": "x"}, messages) is None
    assert choose_route([route], {"task": "x", "lang": "fr"}, [{"role": "user", "content": "codes"}]) is None
    assert choose_route([route], None, messages) is None  # no metadata object: a metadata rule cannot hold


def test_a_line_no_route_takes_and_no_model_option_is_an_invalid_line():
    defaults = _routes(ROUTES.split("[[route]]\nmodel")[0])  # no default route
    with pytest.raises(ValueError, match="no route matched this line"):
        parse_line('{"prompt": "' + "word " * 200 + '"}', 1, defaults)


def test_a_batch_api_line_without_a_model_is_routed_too():
    line = '{"custom_id": "r", "body": {"messages": [{"role": "user", "content": "hi"}]}}'
    request = parse_line(line, 1, _routes())
    assert (request.model_ref, request.route) == ("openai:sim-1", "route 2")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            'when = { metadta = { a = 1 } }\nmodel = "openai:x"',
            'route 2: unknown condition "metadta" (did you mean "metadata"?)',
        ),
        ('when = { match = "([" }\nmodel = "openai:x"', "route 2: match '([' is not a valid regular expression"),
        ('model = "gpt-4o"', "route 2: model 'gpt-4o' has no provider"),
        ('model = "openai:x"\nfallback = ["gpt-4o"]', "route 2: fallback 'gpt-4o' has no provider"),
        ('when = { prompt_tokens_below = 0 }\nmodel = "openai:x"', "route 2: prompt_tokens_below must be a positive"),
        ('modle = "openai:x"', 'route 2: unknown setting "modle" (did you mean "model"?)'),
        ("when = { match = 'x' }", "route 2: no model"),
    ],
)
def test_a_bad_rule_is_an_error_naming_the_file_and_the_rule(rule, message):
    text = '[[route]]\nmodel = "openai:gpt-4o-mini"\n\n[[route]]\n' + rule + "\n"
    with pytest.raises(UsageError) as caught:
        parse_config(text, "llmbatch.toml")
    assert str(caught.value).startswith("llmbatch.toml: " + message)


# --- end to end ------------------------------------------------------------------------------


def _rows() -> list[dict]:
    return [
        {"id": "e", "prompt": "pull the names out of this rather long paragraph " * 4, "metadata": {"task": "extract"}},
        {"id": "s", "prompt": "short one"},
        {"id": "l", "prompt": "a long question that needs the big model to think about it " * 4},
        {"id": "own", "prompt": "short one too", "model": "openai:gpt-4o"},
    ]


def test_run_routes_by_metadata_and_prompt_length_and_a_rerun_pays_nothing(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", _rows())
    config = _config(tmp_path)
    done = llmbatch("run", str(path), "--config", str(config))
    assert done.exit_code == 0, done.stderr
    assert f"routes from {config} choose the model of lines that name none" in done.stderr  # never silently
    results = read_results(tmp_path / "p.results.jsonl")
    assert [r["model"] for r in results] == ["openai:gpt-4o-mini", "openai:sim-1", "openai:gpt-4o", "openai:gpt-4o"]
    assert [r["response"]["model"] for r in results] == ["gpt-4o-mini", "sim-1", "gpt-4o", "gpt-4o"]
    assert sim.stats()["requests_received"] == 4

    again = llmbatch("run", str(path), "--config", str(config))
    assert again.exit_code == 0, again.stderr
    assert sim.stats()["requests_received"] == 4
    assert all(r["cached"] for r in read_results(tmp_path / "p.results.jsonl"))


def test_model_option_takes_only_the_lines_no_route_took(tmp_path, sim, env):
    config = _config(tmp_path, ROUTES.split("[[route]]\nwhen  = { prompt")[0])  # the metadata route only
    path = write_jsonl(tmp_path / "p.jsonl", _rows())
    argv = ["run", str(path), "--config", str(config), "--api-base", sim.url, "--model", "openai:sim-1"]
    done = run_cli(argv, env=env)
    assert done.exit_code == 0, done.stderr
    models = [r["model"] for r in read_results(tmp_path / "p.results.jsonl")]
    assert models == ["openai:gpt-4o-mini", "openai:sim-1", "openai:sim-1", "openai:gpt-4o"]


def test_plan_shows_the_lines_and_cost_of_each_route(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", _rows())
    config = _config(tmp_path)
    shown = llmbatch("plan", str(path), "--config", str(config), "--api-base", sim.url, "--json")
    assert shown.exit_code == 0, shown.stderr
    by_route = json.loads(shown.stdout)["by_route"]
    assert list(by_route) == ["route 1", "route 2", "route 3", "line"]
    assert [(v["lines"], v["calls"]) for v in by_route.values()] == [(1, 1), (1, 1), (1, 1), (1, 1)]
    assert list(by_route["route 3"]["by_model"]) == ["openai:gpt-4o"]
    assert by_route["route 1"]["cost_usd"] > 0
    assert by_route["route 3"]["cost_usd"] == by_route["route 3"]["by_model"]["openai:gpt-4o"]["cost_usd"]

    table = llmbatch("plan", str(path), "--config", str(config), "--api-base", sim.url)
    assert "by route" in table.stdout and "route 2" in table.stdout and "the line's own model" in table.stdout


def test_a_bad_rule_stops_the_run_before_anything_is_sent(tmp_path, sim, llmbatch, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _config(tmp_path, '[[route]]\nwhen = { match = "(" }\nmodel = "openai:gpt-4o"\n')
    path = write_jsonl(tmp_path / "p.jsonl", _rows())
    done = llmbatch("run", str(path))  # llmbatch.toml in the working directory
    assert done.exit_code == 2
    assert "llmbatch.toml: route 1: match '(' is not a valid regular expression" in done.stderr
    assert sim.stats()["requests_received"] == 0


# --- fallback --------------------------------------------------------------------------------

FALLBACK = """
[[route]]
model    = "openai:retired"
fallback = ["openai:gpt-4o-mini"]
"""

OVERLOADED = """
[[route]]
model    = "openai:gpt-4o"
fallback = ["openai:sim-1", "openai:gpt-4o-mini"]
"""


def test_a_fallback_answers_after_a_404_and_a_rerun_pays_nothing(tmp_path, simulator, env):
    sim = simulator(models=("gpt-4o-mini",))  # any other model is 404 model_not_found
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "first"}, {"id": "b", "prompt": "second"}])
    argv = ["run", str(path), "--config", str(_config(tmp_path, FALLBACK)), "--api-base", sim.url]
    done = run_cli(argv, env=env)
    assert done.exit_code == 0, done.stderr
    results = read_results(tmp_path / "p.results.jsonl")
    assert [(r["status"], r["model"], r["answered_by"]) for r in results] == [
        ("ok", "openai:retired", "openai:gpt-4o-mini")
    ] * 2
    assert [r["response"]["model"] for r in results] == ["gpt-4o-mini"] * 2
    assert sim.stats()["unknown_model"] == 2 and sim.stats()["completions_served"] == 2
    keys = [r["key"] for r in results]

    again = run_cli(argv, env=env)
    assert again.exit_code == 0, again.stderr
    assert sim.stats()["requests_received"] == 4  # not one more call, not even to the retired model
    plan = json.loads(run_cli(["plan", *argv[1:], "--json"], env=env).stdout)
    assert (plan["hits"], plan["calls"]) == (2, 0)  # the plan finds the fallback's answers too
    assert run_cli([*argv, "--cache-only"], env=env).exit_code == 0
    rerun = read_results(tmp_path / "p.results.jsonl")
    assert [(r["cached"], r["answered_by"], r["key"]) for r in rerun] == [(True, "openai:gpt-4o-mini", k) for k in keys]


def test_the_answer_is_cached_under_the_key_of_the_model_that_gave_it(tmp_path, simulator, env):
    sim = simulator(models=("gpt-4o-mini",))
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "first"}])
    fell_back = run_cli(
        ["run", str(path), "--config", str(_config(tmp_path, FALLBACK)), "--api-base", sim.url], env=env
    )
    assert fell_back.exit_code == 0, fell_back.stderr
    [row] = read_results(tmp_path / "p.results.jsonl")
    # Asked directly of the fallback model, with no config: the same key, a hit.
    direct = run_cli(
        [
            "run",
            str(path),
            "--config",
            str(_config(tmp_path, "", "none.toml")),
            "--api-base",
            sim.url,
            "--model",
            "openai:gpt-4o-mini",
        ],
        env=env,
    )
    assert direct.exit_code == 0, direct.stderr
    [hit] = read_results(tmp_path / "p.results.jsonl")
    assert hit["cached"] is True and hit["key"] == row["key"] and hit["answered_by"] == "openai:gpt-4o-mini"
    assert sim.stats()["completions_served"] == 1


def test_a_fallback_answers_after_exhausted_503s_and_a_rerun_pays_nothing(tmp_path, sim, env):
    rows = [
        {"id": "down", "prompt": "overloaded [[sim:status=503]] [[sim:only_model=gpt-4o]]"},
        {"id": "fine", "prompt": "answered by the first model"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    argv = ["run", str(path), "--config", str(_config(tmp_path, OVERLOADED)), "--api-base", sim.url]
    done = run_cli([*argv, "--max-retries", "1", "-v"], env=env)
    assert done.exit_code == 0, done.stderr
    results = read_results(tmp_path / "p.results.jsonl")
    assert [(r["model"], r["answered_by"]) for r in results] == [
        ("openai:gpt-4o", "openai:sim-1"),
        ("openai:gpt-4o", "openai:gpt-4o"),
    ]
    assert [r["attempts"] for r in results] == [3, 1]  # two 503s, then the fallback's one call
    assert (
        "fallback line 1 (down): openai:gpt-4o failed (" in done.stderr and "503), asking openai:sim-1" in done.stderr
    )
    calls = sim.stats()["requests_received"]

    again = run_cli(argv, env=env)
    assert again.exit_code == 0, again.stderr
    assert sim.stats()["requests_received"] == calls
    assert all(r["cached"] for r in read_results(tmp_path / "p.results.jsonl"))


def test_a_chain_that_fails_everywhere_is_an_error_line_and_the_last_404_stops_the_run(tmp_path, simulator, env):
    sim = simulator(models=("gpt-4o-mini",))
    config = _config(tmp_path, '[[route]]\nmodel = "openai:gone"\nfallback = ["openai:also-gone"]\n')
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "first"}])
    done = run_cli(["run", str(path), "--config", str(config), "--api-base", sim.url], env=env)
    assert done.exit_code == 1
    assert sim.stats()["unknown_model"] == 2
    assert "also-gone" in done.stderr


def test_a_bad_key_is_not_a_model_failure_and_stops_the_run(tmp_path, simulator, env):
    sim = simulator(require_api_key="sk-the-right-key-000000")
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "first"}])
    done = run_cli(["run", str(path), "--config", str(_config(tmp_path, OVERLOADED)), "--api-base", sim.url], env=env)
    assert done.exit_code == 1
    assert sim.stats()["auth_failures"] == 1 and sim.stats()["requests_received"] == 1  # no fallback was asked
    assert not (tmp_path / "p.results.jsonl").exists()


def test_only_model_failures_move_on():
    from llmbatch.providers.base import model_failed

    assert model_failed({"status_code": 404, "type": "NotFoundError", "message": "no such model"})
    assert model_failed({"status_code": 529, "type": "ProviderError", "message": "overloaded"})
    assert model_failed({"status_code": 400, "type": "BadRequestError", "message": "maximum context length is 8192"})
    assert model_failed({"status_code": None, "type": "ContextLengthExceededError", "message": "too long"})
    assert not model_failed({"status_code": 400, "type": "BadRequestError", "message": "temperature out of range"})
    assert not model_failed({"status_code": 401, "type": "AuthenticationError", "message": "bad key"})
    assert not model_failed({"status_code": 429, "type": "RateLimitError", "message": "slow down"})


# --- the cascade -----------------------------------------------------------------------------

CASCADE = """
[[route]]
model    = "openai:gpt-4o-mini"
escalate = { on = ["length", "invalid_json"], to = "openai:gpt-4o" }
"""

CUT = "[[sim:finish=length]] [[sim:only_model=gpt-4o-mini]]"
NOT_JSON = "[[sim:quirk=not_json]] [[sim:only_model=gpt-4o-mini]]"
JSON = {"type": "json_object"}


def test_an_answer_cut_off_is_asked_again_of_the_escalate_model_and_a_rerun_pays_nothing(tmp_path, sim, env):
    rows = [{"id": "cut", "prompt": f"a long story {CUT}"}, {"id": "fine", "prompt": "a short one"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    argv = ["run", str(path), "--config", str(_config(tmp_path, CASCADE)), "--api-base", sim.url]
    done = run_cli([*argv, "-v"], env=env)
    assert done.exit_code == 0, done.stderr
    cut, fine = read_results(tmp_path / "p.results.jsonl")
    assert (cut["model"], cut["answered_by"], cut["escalated"], cut["finish_reason"]) == (
        "openai:gpt-4o-mini",
        "openai:gpt-4o",
        "length",
        "stop",
    )
    assert cut["attempts"] == 2 and cut["response"]["model"] == "gpt-4o"
    assert (fine["answered_by"], fine["escalated"], fine["attempts"]) == ("openai:gpt-4o-mini", None, 1)
    assert "escalate line 1 (cut): openai:gpt-4o-mini failed length, asking openai:gpt-4o" in done.stderr
    assert sim.stats()["completions_served"] == 3
    paid = cut["cost_usd"]

    again = run_cli(argv, env=env)
    assert again.exit_code == 0, again.stderr
    assert sim.stats()["requests_received"] == 3  # both answers of the cascade come from the cache
    cut, fine = read_results(tmp_path / "p.results.jsonl")
    assert cut["cached"] is True and cut["answered_by"] == "openai:gpt-4o" and cut["escalated"] == "length"
    assert cut["cost_usd"] == pytest.approx(paid)  # what both answers cost, as when first paid


def test_an_answer_that_is_not_json_when_json_was_asked_for_is_escalated(tmp_path, sim, env):
    rows = [
        {"id": "bad", "prompt": f"give JSON {NOT_JSON}", "response_format": JSON},
        {"id": "good", "prompt": "give JSON", "response_format": JSON},
        {"id": "text", "prompt": f"no JSON asked {NOT_JSON}"},  # not JSON, and none was asked for
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    argv = ["run", str(path), "--config", str(_config(tmp_path, CASCADE)), "--api-base", sim.url]
    done = run_cli(argv, env=env)
    assert done.exit_code == 0, done.stderr
    results = read_results(tmp_path / "p.results.jsonl")
    assert [(r["answered_by"], r["escalated"]) for r in results] == [
        ("openai:gpt-4o", "invalid_json"),
        ("openai:gpt-4o-mini", None),
        ("openai:gpt-4o-mini", None),
    ]
    assert json.loads(results[0]["content"])["answer"].startswith("Simulated answer")
    assert sim.stats()["completions_served"] == 4

    again = run_cli(argv, env=env)
    assert again.exit_code == 0, again.stderr
    assert sim.stats()["requests_received"] == 4
    assert all(r["cached"] for r in read_results(tmp_path / "p.results.jsonl"))


def test_both_answers_of_a_cascade_are_cached_under_their_own_keys(tmp_path, sim, env):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "cut", "prompt": f"a long story {CUT}"}])
    cascade = ["run", str(path), "--config", str(_config(tmp_path, CASCADE)), "--api-base", sim.url]
    assert run_cli(cascade, env=env).exit_code == 0
    no_routes = ["--config", str(_config(tmp_path, "", "none.toml")), "--api-base", sim.url]
    for model in ("openai:gpt-4o-mini", "openai:gpt-4o"):
        direct = run_cli(["run", str(path), *no_routes, "--model", model], env=env)
        assert direct.exit_code == 0, direct.stderr
        [row] = read_results(tmp_path / "p.results.jsonl")
        assert row["cached"] is True and row["escalated"] is None
    assert sim.stats()["requests_received"] == 2


def test_plan_says_escalations_cannot_be_known_and_gives_a_cost_range(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}])
    config = str(_config(tmp_path, CASCADE))
    shown = json.loads(llmbatch("plan", str(path), "--config", config, "--api-base", sim.url, "--json").stdout)
    assert shown["escalations"] == 2
    assert shown["estimated_cost_max_usd"] > shown["estimated_cost_usd"] > 0
    table = llmbatch("plan", str(path), "--config", config, "--api-base", sim.url).stdout
    assert "may escalate (not known before the answers)" in table and " to $" in table


def test_max_cost_counts_escalations(tmp_path, sim, env):
    rows = [{"id": f"c{i}", "prompt": f"story {i} {CUT}", "max_tokens": 50} for i in range(4)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    argv = ["run", str(path), "--config", str(_config(tmp_path, CASCADE)), "--api-base", sim.url, "-c", "1"]
    # The four small calls fit (about $0.00003 each at their max_tokens); an escalation to the bigger
    # model (about $0.0005 at its max_tokens) does not: the budget stops the run before it.
    small = ["run", str(path), "--config", str(_config(tmp_path, "", "none.toml")), "--api-base", sim.url, "-c", "1"]
    alone = run_cli([*small, "--model", "openai:gpt-4o-mini", "--max-cost", "0.0003"], env=env)
    assert alone.exit_code == 0, alone.stderr
    (tmp_path / "p.results.jsonl").unlink()
    done = run_cli([*argv, "--max-cost", "0.0003"], env=env)
    assert done.exit_code == 3, done.stderr
    assert sim.stats()["requests_received"] == 4  # the small answers are cached; no escalation fitted


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('escalate = { on = ["lenght"], to = "openai:gpt-4o" }', "unknown check 'lenght' (did you mean \"length\"?)"),
        ('escalate = { on = ["length"], to = "gpt-4o" }', "escalate.to 'gpt-4o' has no provider"),
        ('escalate = { on = ["length"] }', "escalate has no to"),
        ('escalate = { on = [], to = "openai:gpt-4o" }', "escalate.on must be a non-empty array"),
    ],
)
def test_a_bad_escalate_is_an_error_naming_the_rule(rule, message):
    with pytest.raises(UsageError, match="^llmbatch.toml: route 1: .*" + re_escape(message)):
        parse_config(f'[[route]]\nmodel = "openai:gpt-4o-mini"\n{rule}\n', "llmbatch.toml")


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_checks_are_pure():
    from llmbatch.answers import failed_check

    def answer(content, finish="stop"):
        return {"choices": [{"message": {"content": content}, "finish_reason": finish}]}

    both = ("length", "invalid_json")
    assert failed_check(answer("x", "length"), {}, both) == "length"
    assert failed_check(answer("x", "length"), {}, ("invalid_json",)) is None
    assert failed_check(answer("not json"), {"response_format": JSON}, both) == "invalid_json"
    assert failed_check(answer('{"a": 1}'), {"response_format": JSON}, both) is None
    assert failed_check(answer("not json"), {}, both) is None
    assert failed_check(answer(None), {"response_format": {"type": "json_schema"}}, both) == "invalid_json"


def test_the_summary_shows_what_each_route_spent_per_model(tmp_path, sim, env):
    config = _config(
        tmp_path,
        """
[[route]]
when     = { metadata = { task = "extract" } }
model    = "openai:gpt-4o-mini"
escalate = { on = ["length"], to = "openai:gpt-4o" }

[[route]]
model = "openai:gpt-4o"
""",
    )
    rows = [
        {"id": "cut", "prompt": f"pull the names out {CUT}", "metadata": {"task": "extract"}},
        {"id": "big", "prompt": "think hard"},
        {"id": "own", "prompt": "mine", "model": "openai:gpt-4o-mini"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    done = run_cli(["run", str(path), "--config", str(config), "--api-base", sim.url], env=env)
    assert done.exit_code == 0, done.stderr
    table = done.stderr[done.stderr.index("spent by route") :].splitlines()
    named = [" ".join(line.split()[:-1]) for line in table[2:6]]  # the rows, less the dollars
    assert named == [
        "route 1 openai:gpt-4o",  # the escalation, under the route of its line
        "route 1 openai:gpt-4o-mini",
        "route 2 openai:gpt-4o",
        "the line's own model openai:gpt-4o-mini",
    ]
    assert all(line.split()[-1].startswith("$") for line in table[2:6])
