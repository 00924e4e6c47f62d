"""Helpers for end-to-end tests: run the real CLI in-process and read what it wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from llmbatch.cli import app

#: A key-shaped secret for tests; it must never show up in the cache or in results.
TEST_API_KEY = "sk-llmbatch-test-7f3a9c1e5b2d4680aa11"


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(args: list[str], *, env: dict[str, str] | None = None, stdin: str | None = None) -> Run:
    """Invoke ``llmbatch ARGS`` in-process, as a user would from a shell."""
    runner = CliRunner()
    result = runner.invoke(app, args, env=env, input=stdin, catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


def write_jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    """Rows are objects (dumped as JSON) or raw strings (written as they are)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def prompts(n: int, start: int = 0, **fields: Any) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"question number {i}", **fields} for i in range(start, start + n)]
