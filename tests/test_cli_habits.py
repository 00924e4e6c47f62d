"""The first hour with llmbatch, as a Python user lives it: the habits every CLI has (-h,
--version, completion, env vars, -v, -q), truncated answers, the small things a first run
shows (money under --simulate, savings, Ctrl-C, hit), control characters from files and
providers, and the llmbatch.toml in the working directory. Each through the real CLI against
the simulator; what only a real process shows (signals, a terminal, a shell) in one."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmbatch import __version__
from llmbatch import display as display_module
from tests.support import TEST_API_KEY, prompts, read_results, run_cli, write_jsonl

ROOT = Path(__file__).parent.parent
MODEL = "openai:gpt-4o-mini"
README = (ROOT / "README.md").read_text(encoding="utf-8")

#: Every command, as typed after ``llmbatch``.
COMMANDS = [
    [],
    ["run"],
    ["plan"],
    ["report"],
    ["sim"],
    ["cache"],
    ["cache", "stats"],
    ["cache", "purge"],
    ["cache", "clear"],
    ["batches"],
    ["batches", "list"],
    ["batches", "cancel"],
]


def summary_row(stderr: str, label: str) -> str:
    """The value of one row of the summary table."""
    match = re.search(rf"^\s*{re.escape(label)}\s{{2,}}(\S.*?)\s*$", stderr, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{stderr}"
    return match.group(1)


def readme_section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def fast_progress(monkeypatch: pytest.MonkeyPatch, every_s: float = 0.05) -> None:
    """Plain progress lines every ``every_s``, so that a short run shows some."""
    monkeypatch.setattr(display_module, "PLAIN_FIRST_S", every_s)
    monkeypatch.setattr(display_module, "PLAIN_EVERY_S", every_s)


# --- processes ---------------------------------------------------------------------------------


def spawn(args: list[str], env: dict[str, str], cwd: Path, **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m llmbatch ARGS`` as a shell starts it."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kwargs}
    return subprocess.Popen([sys.executable, "-m", "llmbatch", *args], env={**os.environ, **env}, cwd=cwd, **options)


class Lines:
    """The lines a process writes to a pipe, as they come, each with the time it arrived."""

    def __init__(self, stream: Any) -> None:
        self.seen: list[tuple[float, str]] = []
        self._queue: queue.Queue[tuple[float, str] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._queue.put((time.monotonic(), line.rstrip("\n")))
        self._queue.put(None)

    def wait_for(self, condition: Callable[[str], bool], timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("timed out; lines so far:\n" + "\n".join(line for _, line in self.seen))
            if item is None:
                pytest.fail("the process ended first; its lines:\n" + "\n".join(line for _, line in self.seen))
            self.seen.append(item)
            if condition(item[1]):
                return item


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# === 1. CLI habits =============================================================================


def test_version_prints_the_version_and_exits_0():
    from importlib.metadata import version

    result = run_cli(["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"llmbatch {__version__}\n"
    assert __version__ == version("llmbatch")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "llmbatch")
def test_h_and_help_show_the_same_help_with_the_command_s_own_usage_line(command):
    short, long = run_cli([*command, "-h"]), run_cli([*command, "--help"])
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout
    assert short.stdout.startswith(f"Usage: {' '.join(['llmbatch', *command])} [OPTIONS]")
    assert "-h, --help" in short.stdout
    if "Commands:" in short.stdout:  # each command summed up whole, not cut with "..."
        listing = short.stdout.split("Commands:\n")[1].splitlines()
        assert listing and all(re.match(r"^  [a-z]+ {2,}[A-Z].*[^.]\.$", line) for line in listing), listing


def test_llmbatch_alone_shows_the_help():
    result = run_cli([])
    assert result.exit_code == 2  # a usage error, as click has it: no command given
    text = result.stdout + result.stderr
    assert text.startswith("Usage: llmbatch [OPTIONS] COMMAND [ARGS]...")
    for command in ("run", "plan", "report", "sim", "cache"):
        assert re.search(rf"^  {command}\s", text, re.MULTILINE), command


def test_plan_is_listed_and_has_its_own_usage_line_in_help_and_errors():
    assert re.search(r"^  plan\s+What a run would do and cost", run_cli(["--help"]).stdout, re.MULTILINE)
    assert run_cli(["plan", "--help"]).stdout.startswith("Usage: llmbatch plan [OPTIONS] {INPUT}")
    missing = run_cli(["plan"])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("Usage: llmbatch plan [OPTIONS] {INPUT}\nTry 'llmbatch plan -h' for help.")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "llmbatch")
def test_help_names_what_each_option_takes_and_shows_flags_bare(command):
    text = run_cli([*command, "--help"]).stdout
    option_lines = [line for line in text.splitlines() if re.match(r"^  -", line)]
    assert option_lines
    for line in option_lines:
        # Typer's generic placeholders say nothing (<str>, <path>) or mislead (<bool>).
        assert not re.search(r"<(str|path|bool|int|float|int range|float range)>|BOOLEAN", line), line
    if command == ["run"]:
        for shown in ("-o, --output FILE", "-m, --model PROVIDER:MODEL", "-c, --concurrency N", "--log FILE"):
            assert shown in text, shown
        for flag in ("--simulate", "--no-cache", "--dry-run", "-v, --verbose", "-q, --quiet", "--shared-cache"):
            assert re.search(rf"^  {re.escape(flag)}\s{{2,}}\S", text, re.MULTILINE), flag


def test_a_boolean_flag_takes_no_value(tmp_path, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    result = run_cli(["run", str(path), "--simulate", "true"], env=env)
    assert result.exit_code == 2
    assert "unexpected extra argument" in result.stderr and "(true)" in result.stderr
    assert not (tmp_path / "p.results.jsonl").exists()


def test_shell_completion_is_shown_for_bash():
    result = run_cli(["--show-completion", "bash"])
    assert result.exit_code == 0
    assert "_LLMBATCH_COMPLETE=complete_bash" in result.stdout
    assert "complete -o default -F _llmbatch_completion llmbatch" in result.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_installed_completion_completes_commands_and_options_in_bash(tmp_path):
    # The command as pip installs it (a script named llmbatch on PATH), a fresh home, and bash.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "llmbatch"
    script.write_text(f"#!{sys.executable}\nfrom llmbatch.cli import main\nmain()\n")
    script.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SHELL": "/bin/bash"}
    installed = subprocess.run(
        ["llmbatch", "--install-completion", "bash"], env=env, capture_output=True, text=True, timeout=60
    )
    assert installed.returncode == 0, installed.stderr
    assert "completion installed" in installed.stdout
    bashrc = (home / ".bashrc").read_text()
    [sourced] = re.findall(r"source '([^']+)'", bashrc)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        shell = (
            f"source '{sourced}'; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
            'COMP_LINE="${COMP_WORDS[*]}"; _llmbatch_completion llmbatch; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("llmbatch", "pl") == ["plan"]
    assert complete("llmbatch", "cache", "p") == ["purge"]
    assert "--concurrency" in complete("llmbatch", "run", "--conc")


def test_env_vars_for_options_set_once_are_shown_in_help_and_used(tmp_path, simulator, env):
    text = run_cli(["run", "--help"]).stdout
    for name in ("LLMBATCH_MODEL", "LLMBATCH_CONCURRENCY", "LLMBATCH_CACHE_DIR", "LLMBATCH_CONFIG"):
        assert f"env var: {name}" in re.sub(r"\s+", " ", text), name
    assert "LLMBATCH_CACHE_DIR" in run_cli(["cache", "stats", "--help"]).stdout

    slow = simulator(latency_s=0.05)
    cache = tmp_path / "elsewhere"
    path = write_jsonl(tmp_path / "p.jsonl", prompts(30))
    settings = {"LLMBATCH_MODEL": MODEL, "LLMBATCH_CONCURRENCY": "3", "LLMBATCH_CACHE_DIR": str(cache)}
    result = run_cli(["run", str(path), "--api-base", slow.url], env={**env, **settings})
    assert result.exit_code == 0, result.stderr
    assert slow.stats()["max_in_flight"] == 3
    assert (cache / "cache.db").is_file()
    assert {r["model"] for r in read_results(tmp_path / "p.results.jsonl")} == {MODEL}


def test_every_run_option_and_environment_variable_is_in_the_readme():
    section = readme_section("`llmbatch run` options")
    options = re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", run_cli(["run", "--help"]).stdout, re.MULTILINE)
    assert len(options) > 25
    for option in options:
        if option != "--help":
            assert option in section, option
    envvars = set(re.findall(r"env var: (LLMBATCH_[A-Z_]+)", run_cli(["run", "--help"]).stdout))
    for name in envvars:
        assert name in section, name


def test_the_readme_names_the_base_url_variables_that_enter_the_key():
    from llmbatch.providers.base import ENV_API_BASE

    section = readme_section("The cache key")
    for provider in ("openai", "anthropic", "mistral", "gemini", "ollama", "vllm", "openrouter", "groq"):
        assert f"`{ENV_API_BASE[provider]}`" in section, provider
    assert "provider.ENV_API_BASE" in section  # where the whole list is kept


def test_verbose_logs_each_retry_429_and_error_on_stderr(tmp_path, simulator, env):
    sim = simulator(retry_after_s=0.05)
    rows = [
        {"id": "flaky", "prompt": "again [[sim:fail_first=1]]"},
        {"id": "busy", "prompt": "later [[sim:status=429]]"},
        {"id": "bad", "prompt": "no [[sim:status=400]]"},
        {"id": "fine", "prompt": "hello"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    result = run_cli(["run", str(path), "--api-base", sim.url, "-m", MODEL, "-v", "--max-retries", "1"], env=env)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()

    def one(pattern: str) -> str:
        found = [line for line in lines if re.match(pattern, line)]
        assert len(found) == 1, (pattern, result.stderr)
        return found[0]

    one(r"retry line 1 \(flaky\), attempt 1: \w+ 503: .*overloaded.*; retrying in \d+\.\ds$")
    one(r"retry line 2 \(busy\), attempt 1: RateLimitError 429: .*; retrying in \d+\.\ds$")
    one(r"failed line 2 \(busy\), attempt 2: RateLimitError 429: ")
    one(r"failed line 3 \(bad\), attempt 1: InvalidRequestError 400: .*simulated bad request$")
    assert not any("(fine)" in line for line in lines)
    summary = next(i for i, line in enumerate(lines) if line.startswith("llmbatch run"))
    assert lines.index(one(r"failed line 3")) < summary  # as it happened, not in the summary
    assert TEST_API_KEY not in result.stderr


def test_verbose_lines_come_as_they_happen_not_at_the_end(tmp_path, simulator, env):
    sim = simulator()
    rows = [{"id": "flaky", "prompt": "again [[sim:fail_first=1]]"}, {"id": "slow", "prompt": "x [[sim:latency=3]]"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    process = spawn(["run", str(path), "--api-base", sim.url, "-m", MODEL, "-v", "-c", "4"], env, tmp_path)
    try:
        lines = Lines(process.stderr)
        seen, _ = lines.wait_for(lambda line: line.startswith("retry line 1 (flaky)"), timeout=30)
        process.wait(timeout=60)
        ended = time.monotonic()
    finally:
        process.kill()
    assert process.returncode == 0
    assert ended - seen > 2.0  # printed while the slow line was still being answered


def test_log_writes_json_lines_without_the_api_key(tmp_path, simulator, env):
    sim = simulator()
    rows = [
        {"id": "flaky", "prompt": "again [[sim:fail_first=1]]"},
        {"id": "bad", "prompt": "no [[sim:status=400]]"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    log = tmp_path / "events.jsonl"
    result = run_cli(["run", str(path), "--api-base", sim.url, "-m", MODEL, "--log", str(log)], env=env)
    assert result.exit_code == 1
    assert "retry line" not in result.stderr  # --log alone writes the file; -v is for stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((e["event"], e["id"]) for e in events) == [("error", "bad"), ("retry", "flaky")]
    retry = next(e for e in events if e["event"] == "retry")
    assert retry["line"] == 1 and retry["attempt"] == 1 and retry["status_code"] == 503 and retry["model"] == MODEL
    assert isinstance(retry["time"], float) and isinstance(retry["wait_s"], float)
    error = next(e for e in events if e["event"] == "error")
    assert error["status_code"] == 400 and error["type"] == "InvalidRequestError"

    # A key the provider refuses: the stop is logged, the key is not.
    locked = simulator(require_api_key="sk-the-right-one-123456")
    again = run_cli(["run", str(path), "--api-base", locked.url, "-m", MODEL, "--log", str(log), "-v"], env=env)
    assert again.exit_code == 1
    text = log.read_text()
    stops = [json.loads(line) for line in text.splitlines() if '"stop"' in line]
    assert stops and stops[-1]["reason"] == "fatal" and "Incorrect API key" in stops[-1]["message"]
    assert TEST_API_KEY not in text and TEST_API_KEY[-8:] not in text
    assert TEST_API_KEY not in again.stderr


def test_verbose_lines_and_plain_progress_lines_never_share_a_line(tmp_path, simulator, env, monkeypatch):
    fast_progress(monkeypatch, 0.01)
    sim = simulator(latency_s=0.02)
    rows = [{"id": f"f{i}", "prompt": f"again {i} [[sim:fail_first=2]]"} for i in range(12)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    result = run_cli(["run", str(path), "--api-base", sim.url, "-m", MODEL, "-v", "-c", "4"], env=env)
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    progress = [line for line in lines if " done, " in line]
    events = [line for line in lines if "attempt " in line]
    assert len(progress) >= 5 and len(events) == 24
    plain = re.compile(r"^llmbatch: \d+/12 done, \d+ hits, .* pace [^;]*$")
    for line in progress:
        assert plain.match(line), line
    for line in events:
        assert re.match(r"^retry line \d+ \(f\d+\), attempt [12]: \w+ 503: [^;]+; retrying in \d+\.\ds$", line), line


@pytest.mark.skipif(sys.platform != "linux", reason="a pseudo-terminal, as on Linux")
def test_verbose_lines_print_whole_above_the_live_display_on_a_terminal(tmp_path, simulator, env):
    import fcntl
    import pty
    import struct
    import termios

    sim = simulator(latency_s=0.3)
    rows = [{"id": f"f{i}", "prompt": f"again {i} [[sim:fail_first=1]]"} for i in range(6)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    terminal = {**env, "TERM": "xterm-256color", "COLUMNS": "", "LINES": ""}
    process = spawn(
        ["run", str(path), "--api-base", sim.url, "-m", MODEL, "-v", "-c", "3"],
        terminal,
        tmp_path,
        stderr=slave,
        stdout=subprocess.DEVNULL,
        text=False,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        process.wait(timeout=60)
    finally:
        process.kill()
        os.close(master)
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert process.returncode == 0, raw
    assert "calls/s" in raw and "\x1b[" in raw  # the live display was drawn
    for i in range(6):
        # Each -v line once, whole, and ended before the display draws again.
        pattern = rf"retry line {i + 1} \(f{i}\), attempt 1: [^\x1b\r\n]*; retrying in \d+\.\ds(\x1b\[[0-9;]*m)*\r\n"
        assert len(re.findall(pattern, raw)) == 1, (i, raw)
    assert re.search(r"llmbatch run\s", raw)  # the summary after the display


def test_quiet_prints_one_line_and_nothing_else(tmp_path, sim, llmbatch, monkeypatch):
    fast_progress(monkeypatch, 0.01)  # a progress line would have every chance to show
    (tmp_path / "llmbatch.toml").write_text(f'[models."{MODEL}"]\nrpm = 6000\n')
    monkeypatch.chdir(tmp_path)
    rows = [
        *prompts(3),
        {"id": "dup", "prompt": "question number 0"},
        {"id": "flaky", "prompt": "again [[sim:fail_first=1]]"},
        {"id": "bad", "prompt": "no [[sim:status=400]]"},
        {"id": "short", "prompt": "a long story please", "max_tokens": 2},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    result = llmbatch("run", str(path), "-q")
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    # Words for people ("1 error"); scripts read `llmbatch report --json` instead.
    assert line.startswith(
        "llmbatch: 7 prompts, 6 ok, 1 error, 1 cut off, 0 from cache, 1 duplicate, 6 calls, spent $"
    )
    assert line.endswith(f", results: {tmp_path / 'p.results.jsonl'}")
    assert re.search(r", \d+\.\ds, ", line)


# === 2. Truncated answers ======================================================================


def test_an_answer_cut_off_at_max_tokens_is_cached_flagged_and_counted(tmp_path, sim, llmbatch):
    rows = [
        {"id": "short", "prompt": "tell me a long story", "max_tokens": 3},
        {"id": "whole", "prompt": "hi"},
        {"id": "short-again", "prompt": "tell me a long story", "max_tokens": 3},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    first = llmbatch("run", str(path))
    assert first.exit_code == 0, first.stderr
    short, whole, again = read_results(tmp_path / "p.results.jsonl")
    assert short["status"] == "ok" and short["finish_reason"] == "length" and short["truncated"] is True
    assert whole["truncated"] is False and again["truncated"] is True
    assert summary_row(first.stderr, "cut off at max_tokens") == "2"
    assert "note: 2 answers were cut off at max_tokens" in first.stderr

    rerun = llmbatch("run", str(path))
    assert rerun.exit_code == 0
    assert sim.stats()["requests_received"] == 2  # cached: a cut-off answer is still an answer
    short, _, _ = read_results(tmp_path / "p.results.jsonl")
    assert short["cached"] is True and short["hit"] == "exact" and short["truncated"] is True
    assert "note: 2 answers were cut off at max_tokens" in rerun.stderr
    assert ", 2 cut off, " in llmbatch("run", str(path), "-q").stderr


def test_the_readme_documents_hit_and_truncated():
    section = readme_section("Output")
    assert re.search(r"^\| `hit` \| .*`\"exact\"`.*`\"duplicate\"`.*`null`", section, re.MULTILINE)
    assert re.search(r"^\| `truncated` \| .*max_tokens", section, re.MULTILINE)
    assert "cut off at max_tokens" in README


# === 3. Small things ===========================================================================


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", 5, '"temperature" must be at most 2, got 5'),
        ("temperature", -0.5, '"temperature" must be at least 0, got -0.5'),
        ("top_p", 1.5, '"top_p" must be at most 1, got 1.5'),
        ("presence_penalty", 2.5, '"presence_penalty" must be at most 2, got 2.5'),
        ("frequency_penalty", -3, '"frequency_penalty" must be at least -2, got -3'),
        ("top_logprobs", 21, '"top_logprobs" must be at most 20, got 21'),
        ("logit_bias", {"50256": 101}, '"logit_bias" values must be from -100 to 100, got 101 for "50256"'),
        ("max_tokens", 0, '"max_tokens" must be at least 1, got 0'),
    ],
)
def test_a_parameter_out_of_openai_s_range_is_a_file_line_error(tmp_path, sim, llmbatch, field, value, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"prompt": "x", field: value}])
    result = llmbatch("run", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"{path}:2: {message}\nllmbatch: error: 1 invalid line; nothing was sent\n"
    assert sim.stats()["requests_received"] == 0


def test_parameters_at_the_edges_of_their_ranges_are_accepted(tmp_path, sim, llmbatch):
    edges = {"temperature": 2, "top_p": 0, "top_logprobs": 20, "logit_bias": {"1": -100, "2": 100}}
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", **edges}, {"prompt": "y", "temperature": 0}])
    result = llmbatch("run", str(path))
    assert result.exit_code == 0, result.stderr


def test_simulate_labels_money_as_what_it_would_have_cost(tmp_path, env, monkeypatch):
    fast_progress(monkeypatch)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(20))
    result = run_cli(["run", str(path), "--simulate"], env={**env, "OPENAI_API_KEY": ""})
    assert result.exit_code == 0, result.stderr
    assert "spent" not in result.stderr
    assert re.match(r"\$0\.0+[1-9]\d*$", summary_row(result.stderr, "would have cost (simulated)"))
    assert re.search(r"^llmbatch: .* would have cost \$", result.stderr, re.MULTILINE)  # the progress lines
    quiet = run_cli(["run", str(path), "--simulate", "-q", "--refresh"], env={**env, "OPENAI_API_KEY": ""})
    assert re.search(r", would have cost \$0\.0+[1-9]", quiet.stderr) and "spent" not in quiet.stderr
    # The README promises no cost, and says what the figure is.
    assert "no API key, no cost" in README and "would have cost" in README


def test_duplicates_are_saved_apart_from_the_cache(tmp_path, sim, llmbatch):
    rows = [{"id": f"d{i}", "prompt": "the same question"} for i in range(4)] + prompts(2)
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    first = llmbatch("run", str(path))
    assert first.exit_code == 0, first.stderr
    assert summary_row(first.stderr, "answered from cache") == "0"
    assert summary_row(first.stderr, "duplicates coalesced") == "3"
    assert summary_row(first.stderr, "saved by the cache") == "$0"
    one_answer = summary_row(first.stderr, "saved by duplicates")
    assert re.match(r"\$0\.0+[1-9]\d*$", one_answer)

    second = llmbatch("run", str(path))
    assert summary_row(second.stderr, "answered from cache") == "6"
    assert summary_row(second.stderr, "saved by the cache") != "$0"
    assert "saved by duplicates" not in second.stderr  # every line was a hit this time
    assert sim.stats()["requests_received"] == 3


def test_after_ctrl_c_the_summary_says_it_stopped_not_that_it_is_finishing(tmp_path, simulator, env):
    sim = simulator(latency_s=1.5)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(12))
    process = spawn(
        ["run", str(path), "--api-base", sim.url, "-m", MODEL, "-c", "4"], env, tmp_path, start_new_session=True
    )
    try:
        wait_until(lambda: sim.stats()["in_flight"] >= 3, timeout=30, what="calls in flight")
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C on a terminal signals the whole group
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    summary = stderr[stderr.index("llmbatch run") :]
    assert "finishing" not in summary
    [stopped] = [line for line in summary.splitlines() if line.startswith("stopped early:")]
    assert stopped == "stopped early: interrupted by Ctrl-C"
    stats = sim.stats()
    assert stats["in_flight"] == 0 and stats["completions_served"] >= 4  # the calls in flight were finished
    assert summary_row(summary, "calls made") == str(stats["completions_served"])


def test_hit_tells_a_cache_hit_from_a_duplicate_and_cached_is_unchanged(tmp_path, sim, llmbatch):
    rows = [
        {"id": "a", "prompt": "same"},
        {"id": "a2", "prompt": "same"},
        {"id": "bad", "prompt": "no [[sim:status=400]]"},
        {"id": "bad2", "prompt": "no [[sim:status=400]]"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert llmbatch("run", str(path)).exit_code == 1
    seen = [
        (r["id"], r["status"], r["cached"], r["hit"], r["attempts"]) for r in read_results(tmp_path / "p.results.jsonl")
    ]
    assert seen == [
        ("a", "ok", False, None, 1),
        ("a2", "ok", True, "duplicate", 0),
        ("bad", "error", False, None, 1),
        ("bad2", "error", False, "duplicate", 0),  # shared the failed call: no call of its own
    ]
    assert sim.stats()["requests_received"] == 2

    assert llmbatch("run", str(path)).exit_code == 1
    seen = [(r["id"], r["cached"], r["hit"]) for r in read_results(tmp_path / "p.results.jsonl")]
    assert seen == [("a", True, "exact"), ("a2", True, "exact"), ("bad", False, None), ("bad2", False, "duplicate")]
    assert sim.stats()["requests_received"] == 3  # errors are never cached: asked again, once

    write_jsonl(path, [*rows[:2], {"id": "new", "prompt": "never asked"}])
    assert llmbatch("run", str(path), "--cache-only").exit_code == 1
    missed = read_results(tmp_path / "p.results.jsonl")[2]
    assert (missed["status"], missed["cached"], missed["hit"]) == ("error", False, None)


def test_run_on_a_missing_file_is_one_line_and_exit_2(tmp_path, env):
    for command in ("run", "plan"):
        result = run_cli([command, str(tmp_path / "nope.jsonl"), "--simulate"], env=env)
        assert result.exit_code == 2
        assert result.stderr == f"llmbatch: error: input file not found: {tmp_path / 'nope.jsonl'}\n"
        assert result.stdout == ""


def test_an_invalid_results_file_is_not_said_to_have_sent_nothing(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"not": "a result"}\nnot json\n')
    result = run_cli(["report", str(path)])
    assert result.exit_code == 2
    *problems, footer = result.stderr.splitlines()
    assert [p.split(":")[1] for p in problems] == ["1", "2"]
    assert footer == "llmbatch: error: 2 invalid lines; no report was made"
    assert "sent" not in result.stderr


# === 4. Control characters =====================================================================


def test_control_characters_in_a_field_name_are_shown_escaped(tmp_path, sim, llmbatch):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x", "\\u001b]0;pwned\\u0007": 1}\n{"prompt": "x", "temperatur\\u001b[2J": 1}\n')
    result = llmbatch("run", str(path))
    assert result.exit_code == 2
    assert result.stderr == (
        f'{path}:1: unknown field "\\x1b]0;pwned\\x07"\n'
        f'{path}:2: unknown field "temperatur\\x1b[2J" (did you mean "temperature"?)\n'
        "llmbatch: error: 2 invalid lines; nothing was sent\n"
    )


def test_control_characters_in_a_provider_s_error_are_shown_escaped(tmp_path, simulator, env):
    # The simulator's 404 quotes the model asked for, as OpenAI's does: the model name carries
    # a window-title sequence into the provider's message.
    strict = simulator(models=("gpt-4o-mini",))
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "prompt": "hi", "model": "openai:gpt\x1b]0;pwned\x07"}])
    log = tmp_path / "log.jsonl"
    result = run_cli(["run", str(path), "--api-base", strict.url, "-v", "--log", str(log)], env=env)
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    escaped = "The model `gpt\\x1b]0;pwned\\x07` does not exist"
    lines = result.stderr.splitlines()
    assert any(
        line.startswith("failed line 1 (x), attempt 1: ModelNotFoundError 404:") and escaped in line for line in lines
    )
    assert any(line.startswith("stop: ") and escaped in line for line in lines)
    assert lines[-1].startswith("llmbatch: error: ") and escaped in lines[-1]
    # The log is JSON: the characters are escaped as JSON escapes them, and come back whole.
    raw = log.read_bytes()
    assert b"\x1b" not in raw and b"\x07" not in raw
    assert "gpt\x1b]0;pwned\x07" in json.loads(raw.splitlines()[0])["message"]


# === 5. llmbatch.toml ==========================================================================


def test_a_config_in_the_working_directory_is_named_at_the_start_and_in_the_summary(
    tmp_path, sim, llmbatch, monkeypatch
):
    config = tmp_path / "llmbatch.toml"
    config.write_text(f'[models."{MODEL}"]\nrpm = 3000\nconcurrency = 4\n')
    monkeypatch.chdir(tmp_path)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    result = llmbatch("run", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"limits from {config}: {MODEL} rpm 3,000, concurrency 4"
    assert summary_row(result.stderr, "limits from") == str(config)

    config.write_text("")  # a file that sets nothing is not worth a word
    quiet = llmbatch("run", str(path))
    assert "limits from" not in quiet.stderr


def test_the_progress_line_shows_the_pace_a_config_sets(tmp_path, sim, llmbatch, monkeypatch):
    fast_progress(monkeypatch)
    (tmp_path / "llmbatch.toml").write_text(f'[models."{MODEL}"]\nrpm = 600\n')
    monkeypatch.chdir(tmp_path)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(6))  # one call every 0.1 s
    result = llmbatch("run", str(path))
    assert result.exit_code == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if " done, " in line]
    assert progress and all("pace 600 req/min" in line for line in progress), result.stderr


def test_a_config_that_stalls_the_run_shows_its_pace_within_seconds(tmp_path, sim, env):
    # tpm = 30: a few small calls a minute. The display must say so at once, not "unlimited".
    # (A tpm smaller than one call needs would fail each line at once: nothing could ever send it.)
    (tmp_path / "llmbatch.toml").write_text(f'[models."{MODEL}"]\ntpm = 30\n')
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    process = spawn(["run", str(path), "--api-base", sim.url, "-m", MODEL], env, tmp_path)
    try:
        lines = Lines(process.stderr)
        started, first = lines.wait_for(lambda line: line.startswith("limits from"), timeout=60)
        assert first == f"limits from {tmp_path / 'llmbatch.toml'}: {MODEL} tpm 30"
        shown, progress = lines.wait_for(lambda line: " done, " in line, timeout=10)
        assert shown - started < 3.0, f"{shown - started:.1f}s before the first progress line"
        assert progress.startswith("llmbatch: 0/3 done, ")
        assert re.search(r"pace 30 tokens/min\b", progress), progress
        assert "unlimited" not in progress
    finally:
        process.kill()
        process.wait(timeout=30)
    assert sim.stats()["requests_received"] <= 1


def test_the_log_can_never_be_the_input_file(tmp_path, env):
    path = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    before = path.read_bytes()
    done = run_cli(["run", str(path), "--simulate", "--log", str(path), "-q"], env=env)
    assert done.exit_code == 2 and "--log" in done.stderr and "that is the input file" in done.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("log", "output", "what"),
    [
        ("out.jsonl", "out.jsonl", "the results file"),
        ("./out.jsonl.partial", "out.jsonl", "the results' .partial"),
        ("in.results.jsonl", None, "the results file"),  # the default results file, from an earlier run
    ],
)
def test_the_log_can_never_be_the_results_file_or_its_partial(tmp_path, env, monkeypatch, log, output, what):
    # It was accepted, and the log was lost: truncated with the .partial, or renamed over at the end.
    monkeypatch.chdir(tmp_path)
    path = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    (tmp_path / "in.results.jsonl").write_text("an earlier run's results\n")
    args = ["run", "in.jsonl", "--simulate", "--log", log, "-q", *(["-o", output] if output else [])]
    done = run_cli(args, env=env)
    assert done.exit_code == 2
    assert done.stderr == f"llmbatch: error: --log {Path(log)}: that is {what}; give the log another name\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "in.results.jsonl"]
    assert path.stat().st_size and (tmp_path / "in.results.jsonl").read_text() == "an earlier run's results\n"


def test_a_log_that_cannot_be_written_is_a_warning_and_the_run_goes_on(tmp_path, env):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "bad", "prompt": "x [[sim:status=400]]"}, *prompts(5)])
    done = run_cli(["run", str(path), "--simulate", "--log", "/dev/full", "-q"], env=env)
    assert done.exit_code == 1 and "Traceback" not in done.stderr  # 1: the bad line, not the log
    assert "llmbatch: warning: cannot write the log to /dev/full any more" in done.stderr
    assert len(read_results(tmp_path / "p.results.jsonl")) == 6


def test_a_process_substitution_input_is_read_like_standard_input(tmp_path, sim, env):
    # `llmbatch run <(zcat prompts.jsonl.gz)` gives /dev/fd/63, a pipe that can be read only once:
    # it is copied first, and the results go to standard output, as for `-`.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    command = f'"{sys.executable}" -m llmbatch run <(cat "{path}") --api-base {sim.url} -m openai:gpt-4o-mini -q'
    done = subprocess.run(["bash", "-c", command], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == ["q0", "q1", "q2"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".jsonl") == ["p.jsonl"]  # no results file beside
    assert sim.stats()["requests_received"] == 3
