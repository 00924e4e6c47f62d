"""The README's two commands stay true: CI runs the same test command, and the quickstart exists."""

from __future__ import annotations

import re
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
