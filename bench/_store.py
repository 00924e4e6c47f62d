"""What the cache benches share (transfer, verify): N answers as runs store them, filed fast."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from llmbatch.keys import key_from_material
from llmbatch.model.entry import make_entry
from llmbatch.store import DiskStore, Stored


def entries(n: int, now: float) -> Iterator[Stored]:
    """N distinct answers of the shape a run stores, the oldest stored 60 days before ``now``."""
    for i in range(n):
        material = {
            "provider": "openai",
            "endpoint": None,
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"question number {i}: what is {i} times {i}?"}],
            "params": {"temperature": 0},
            "extra": {},
            "sample": 0,
        }
        key = key_from_material(material)
        stored_at = now - 60 * 86_400 * (n - i) / n
        response = {
            "id": f"chatcmpl-{i}",
            "choices": [{"finish_reason": "stop", "index": 0, "message": {"role": "assistant", "content": str(i * i)}}],
            "model": "gpt-4o-mini",
            "object": "chat.completion",
            "usage": {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17},
        }
        entry = make_entry(
            key=key,
            request=material,
            response=response,
            stored_at=stored_at,
            usage=response["usage"],
            latency_ms=420.0,
            cost_usd=0.0000039,
        )
        yield Stored(key, entry, "openai:gpt-4o-mini", stored_at)


def fill(directory: Path, n: int) -> float:
    """Seconds to store N entries in a new disk store at ``directory`` (a thousand a transaction)."""
    started = time.perf_counter()
    with DiskStore(directory) as store:
        store.load(entries(n, time.time()))
    return time.perf_counter() - started
