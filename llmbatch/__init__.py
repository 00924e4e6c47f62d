"""llmbatch: run a JSONL file of LLM prompts against any provider, paying once per answer.

The library under the ``llmbatch`` command. The usual path::

    from llmbatch import Engine, ResponseCache, read_requests, validate_file
    from llmbatch.provider import AnyLLMProvider

Names are imported lazily so that ``import llmbatch`` (and ``llmbatch --help``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Request": "llmbatch.prompts",
    "Defaults": "llmbatch.prompts",
    "parse_line": "llmbatch.prompts",
    "validate_file": "llmbatch.prompts",
    "read_requests": "llmbatch.prompts",
    "request_key": "llmbatch.keys",
    "ResponseCache": "llmbatch.cache",
    "Engine": "llmbatch.engine",
    "RunOptions": "llmbatch.engine",
    "RunStats": "llmbatch.engine",
    "run_batch": "llmbatch.engine",
    "Result": "llmbatch.results",
    "ResultWriter": "llmbatch.results",
    "RetryPolicy": "llmbatch.retry",
    "LlmbatchError": "llmbatch.errors",
    "InputError": "llmbatch.errors",
    "UsageError": "llmbatch.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmbatch' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
