"""llmbatch: run LLM prompts against any provider, concurrently, paying once per answer.

The library under the ``llmbatch`` command. The usual path::

    from llmbatch import run_batch_sync            # or: await llmbatch.run_batch(...)

    results = run_batch_sync([{"prompt": "What is 2+2?"}], model="openai:gpt-4o-mini")
    print(results[0].content)

See :mod:`llmbatch.api` for the contract (what is checked, what is closed, what a stop raises),
and :func:`llmbatch.engine.live_resolver` for a run over a stream of requests of any length, as the CLI
makes (a :class:`Resolver` between a :class:`ResponseStore` and an :class:`Executor`).

Names are imported lazily so that ``import llmbatch`` (and ``llmbatch --help``) stay fast: none of
the provider SDKs, rich or typer is imported until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from llmbatch.api import RunStopped, run_batch, run_batch_sync
    from llmbatch.engine import Executor, LiveExecutor, Resolver, RunOptions, live_resolver
    from llmbatch.errors import CacheError, InputError, LineError, LlmbatchError, OutputError, UsageError
    from llmbatch.input import Defaults, parse_line, read_requests, validate_file
    from llmbatch.keys import request_key
    from llmbatch.model.entry import CacheEntry
    from llmbatch.model.request import Request
    from llmbatch.model.result import Result
    from llmbatch.model.stats import RunStats, StopReason
    from llmbatch.providers.anyllm import AnyLLMProvider
    from llmbatch.providers.base import Destination, Provider
    from llmbatch.results import ResultWriter
    from llmbatch.retry import RetryPolicy
    from llmbatch.store import DiskStore, MemoryStore, ResponseStore

_EXPORTS = {
    "run_batch": "llmbatch.api",
    "run_batch_sync": "llmbatch.api",
    "RunStopped": "llmbatch.api",
    "Request": "llmbatch.model.request",
    "Result": "llmbatch.model.result",
    "CacheEntry": "llmbatch.model.entry",
    "RunStats": "llmbatch.model.stats",
    "StopReason": "llmbatch.model.stats",
    "Defaults": "llmbatch.input",
    "parse_line": "llmbatch.input",
    "validate_file": "llmbatch.input",
    "read_requests": "llmbatch.input",
    "request_key": "llmbatch.keys",
    "ResponseStore": "llmbatch.store",
    "DiskStore": "llmbatch.store",
    "MemoryStore": "llmbatch.store",
    "Resolver": "llmbatch.engine",
    "Executor": "llmbatch.engine",
    "LiveExecutor": "llmbatch.engine",
    "live_resolver": "llmbatch.engine",
    "RunOptions": "llmbatch.engine",
    "Provider": "llmbatch.providers.base",
    "Destination": "llmbatch.providers.base",
    "AnyLLMProvider": "llmbatch.providers.anyllm",
    "ResultWriter": "llmbatch.results",
    "RetryPolicy": "llmbatch.retry",
    "LlmbatchError": "llmbatch.errors",
    "InputError": "llmbatch.errors",
    "LineError": "llmbatch.errors",
    "UsageError": "llmbatch.errors",
    "CacheError": "llmbatch.errors",
    "OutputError": "llmbatch.errors",
}

# Spelled out (not built from _EXPORTS) so that linters and type checkers can read it;
# tests/test_library.py checks that the two agree.
__all__ = [
    "AnyLLMProvider",
    "CacheEntry",
    "CacheError",
    "Defaults",
    "Destination",
    "DiskStore",
    "Executor",
    "InputError",
    "LineError",
    "LiveExecutor",
    "LlmbatchError",
    "MemoryStore",
    "OutputError",
    "Provider",
    "Request",
    "Resolver",
    "ResponseStore",
    "Result",
    "ResultWriter",
    "RetryPolicy",
    "RunOptions",
    "RunStats",
    "RunStopped",
    "StopReason",
    "UsageError",
    "__version__",
    "live_resolver",
    "parse_line",
    "read_requests",
    "request_key",
    "run_batch",
    "run_batch_sync",
    "validate_file",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmbatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once found, a plain attribute: no lookup through here again
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
