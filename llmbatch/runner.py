"""A whole ``llmbatch run``, as a library: validate, open the cache, run, finish the file.

The CLI parses options into a :class:`RunConfig`, calls :func:`validate` (so that a bad line
is reported before anything else happens) and then :func:`execute` inside its display. Nothing
here knows typer or rich; a notebook or a script can drive the same steps.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbatch.cache import ResponseCache
from llmbatch.engine import Engine, RunOptions, RunStats
from llmbatch.errors import InputError, UsageError
from llmbatch.keys import SIMULATOR_ENDPOINT
from llmbatch.prompts import Defaults, ValidationReport, read_requests, validate_file
from llmbatch.results import ResultWriter

__all__ = ["Input", "RunConfig", "RunOutcome", "execute", "open_input", "validate"]

#: With --simulate and no model anywhere, lines get this one: a real model name, so that
#: everything downstream (keys, tags, later prices) behaves as it will for real.
SIMULATE_DEFAULT_MODEL = "openai:gpt-4o-mini"


@dataclass
class Input:
    """The input as a re-readable file: stdin is spooled to a temporary file first, because
    the file is read twice (validate everything, then stream the requests)."""

    path: Path
    source: str  # the name used in FILE:LINE messages
    temporary: bool = False

    def cleanup(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def open_input(name: str) -> Input:
    if name == "-":
        with tempfile.NamedTemporaryFile(prefix="llmbatch-stdin-", suffix=".jsonl", delete=False) as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
        return Input(Path(spool.name), "<stdin>", temporary=True)
    path = Path(name)
    if not path.exists():
        raise UsageError(f"input file not found: {name}")
    if not path.is_file():
        raise UsageError(f"input is not a file: {name}")
    return Input(path, name)


@dataclass
class RunConfig:
    input: Input
    output: Path | None  # None: standard output
    defaults: Defaults = field(default_factory=Defaults)
    options: RunOptions = field(default_factory=RunOptions)
    api_base: str | None = None
    simulate: bool = False
    sim_config: Any = None  # simulator.SimConfig when simulate is set
    cache_dir: Path | None = None
    cache_size_limit: int | None = None
    cache_eviction: str | None = None


@dataclass
class RunOutcome:
    stats: RunStats
    results_at: str  # a path, or "stdout"
    complete: bool


def default_output(input: Input) -> Path | None:
    """``<stem>.results.jsonl`` beside the input; stdout when the input is stdin."""
    if input.temporary:
        return None
    return input.path.with_name(f"{input.path.stem}.results.jsonl")


def effective_defaults(config: RunConfig) -> Defaults:
    if config.simulate and config.defaults.model is None:
        return Defaults(model=SIMULATE_DEFAULT_MODEL, provider=config.defaults.provider)
    return config.defaults


def validate(config: RunConfig) -> ValidationReport:
    """Check every line; raise :class:`InputError` listing each bad one. Nothing is sent."""
    report = validate_file(config.input.path, effective_defaults(config), source=config.input.source)
    if report.errors:
        raise InputError(report.errors, report.total_errors)
    if report.requests == 0:
        raise UsageError(f"{config.input.source}: no requests (the file is empty or only blank lines)")
    return report


async def execute(
    config: RunConfig, stats: RunStats, *, on_engine: Callable[[Engine], None] | None = None
) -> RunOutcome:
    """Run the validated input to the end (or to a stop) and finish the results file."""
    options = config.options
    cache = None
    if options.cache_mode != "off":
        from llmbatch.cache import default_cache_dir

        cache = ResponseCache(
            config.cache_dir or default_cache_dir(),
            size_limit=config.cache_size_limit,
            eviction_policy=config.cache_eviction,
        )
    writer = ResultWriter(config.output).open()
    simulator = None
    try:
        if config.simulate:
            from llmbatch.simulator import SimConfig, Simulator

            simulator = Simulator(config.sim_config or SimConfig())
            base_url = await simulator.start()
            provider = _provider(api_base=base_url, api_key="llmbatch-simulator", force_provider="openai")
            options = _replace(options, endpoint=SIMULATOR_ENDPOINT, tag_prefix="simulated/")
        else:
            from llmbatch.provider import env_endpoints

            provider = _provider(api_base=config.api_base)
            endpoints = {} if config.api_base else env_endpoints(os.environ)
            options = _replace(options, endpoint=config.api_base, provider_endpoints=endpoints)
        engine = Engine(
            provider=provider, cache=cache, options=options, sink=writer.write, flush=writer.flush, stats=stats
        )
        if on_engine is not None:
            on_engine(engine)
        try:
            await engine.run(read_requests(config.input.path, effective_defaults(config), source=config.input.source))
        finally:
            await provider.aclose()
    finally:
        complete = stats.complete
        where = writer.finish(complete)
        if simulator is not None:
            await simulator.stop()
        if cache is not None:
            cache.close()
    return RunOutcome(stats=stats, results_at=str(where) if where is not None else "stdout", complete=complete)


def _provider(**kwargs: Any) -> Any:
    from llmbatch.provider import AnyLLMProvider

    return AnyLLMProvider(**kwargs)


def _replace(options: RunOptions, **changes: Any) -> RunOptions:
    from dataclasses import replace

    return replace(options, **changes)
