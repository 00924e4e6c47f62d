"""Shared fixtures. Simulators run in a thread (as in encode/httpx's tests), so tests stay sync."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmbatch.sim import SimConfig, SimulatorThread
from tests.support import TEST_API_KEY, Run, run_cli

pytest_plugins = ["tests.redis_server"]  # the redis_server fixture: a real server per test


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimulatorThread]]:
    """``start(**SimConfig kwargs)`` -> a fresh simulator on a free 127.0.0.1 port, closed at teardown."""
    started: list[SimulatorThread] = []

    def start(**config_kwargs: Any) -> SimulatorThread:
        server = SimulatorThread(SimConfig(**config_kwargs)).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.close()


@pytest.fixture
def sim(simulator: Callable[..., SimulatorThread]) -> SimulatorThread:
    """One default simulator: zero latency, no faults, no limits."""
    return simulator()


# --- end-to-end fixtures (the CLI against a simulator, with a private cache) --------------------


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A private cache directory and a test API key; no real provider is reachable from tests."""
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("LLMBATCH_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "MISTRAL_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return {"LLMBATCH_CACHE_DIR": str(cache_dir), "OPENAI_API_KEY": TEST_API_KEY}


@pytest.fixture
def cache_dir(env: dict[str, str]) -> Path:
    return Path(env["LLMBATCH_CACHE_DIR"])


@pytest.fixture
def llmbatch(env: dict[str, str], sim: SimulatorThread) -> Callable[..., Run]:
    """``llmbatch(*args)``: run the CLI against the default simulator (``--api-base`` set)."""

    def invoke(*args: str, stdin: str | None = None, api_base: str | None = None) -> Run:
        argv = list(args)
        if argv and argv[0] == "run" and "--api-base" not in argv and "--simulate" not in argv:
            argv += (
                ["--api-base", api_base or sim.url, "--model", "openai:gpt-4o-mini"]
                if "--model" not in argv
                else ["--api-base", api_base or sim.url]
            )
        return run_cli(argv, env=env, stdin=stdin)

    return invoke
