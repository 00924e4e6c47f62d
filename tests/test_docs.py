"""The README stays true: CI runs its test command, the quickstart exists, the Python examples run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv[^\n]+)\n```", text)


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2, commands
    _run_command, test_command = commands
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
    assert "pytest" in test_command and "[test]" in test_command


def test_the_readme_quickstart_uses_the_simulator_and_a_file_that_exists():
    run_command = readme_commands()[0]
    assert "--simulate" in run_command
    sample = re.search(r"llmbatch run (\S+)", run_command)
    assert sample and (ROOT / sample.group(1)).is_file()


def python_section_blocks() -> list[str]:
    """The ```python blocks of the README's "Use it from Python" section."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Use it from Python\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert section, 'the README has no "Use it from Python" section'
    return re.findall(r"```python\n(.*?)```", section.group(1), re.DOTALL)


def test_the_readme_python_examples_run(tmp_path):
    # Each block on its own, as a reader would paste it: a fresh interpreter, a private cache, no
    # key and no provider but the simulator the example starts. Nothing may be printed on stderr
    # (an "Unclosed client session" at exit, a warning) and each must print what it promises.
    blocks = python_section_blocks()
    assert len(blocks) == 2, blocks
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    for number, code in enumerate(blocks, start=1):
        env["LLMBATCH_CACHE_DIR"] = str(tmp_path / f"cache{number}")
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"example {number}:\n{done.stderr}"
        assert done.stderr == "", f"example {number}:\n{done.stderr}"
        assert "Simulated answer" in done.stdout, done.stdout
    assert done.stdout.splitlines()[-1] == "20 results"
