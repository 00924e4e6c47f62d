"""How long `cache export` and `cache import` take on a large cache, and in how much memory.

    python bench/transfer.py --entries 1000000

Fills a fresh cache in a temporary directory with N real entries (v3: request material, answer,
digest; store times spread over 60 days), then runs the real command lines as child processes:
`llmbatch cache export -o FILE`, and `llmbatch cache import FILE` into an empty cache. Each child
is timed on its own and its peak RSS read from getrusage (RUSAGE_CHILDREN is the largest child so
far, so the two are run in order of expected size and the figure is checked to have moved).
Flat memory means the peak does not grow with N: run it with 100000 and 1000000 to see.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
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
    """Seconds to store N entries in a new disk store at ``directory``."""
    started = time.perf_counter()
    with DiskStore(directory) as store:
        store.load(entries(n, time.time()))
    return time.perf_counter() - started


def timed(*args: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``llmbatch ARGS`` as a child process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llmbatch", *args], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source, target, records = Path(tmp) / "source", Path(tmp) / "target", Path(tmp) / "answers.jsonl"
        seconds = fill(source, args.entries)
        print(f"filled {args.entries:,} entries in {seconds:.1f} s")
        wall, rss = timed("cache", "export", "-o", str(records), "--cache-dir", str(source))
        size = os.path.getsize(records) / 1e6
        print(f"export: {wall:.1f} s, {args.entries / wall:,.0f} entries/s, file {size:.0f} MB, peak RSS {rss:.0f} MB")
        wall, rss_import = timed("cache", "import", str(records), "--cache-dir", str(target))
        note = "" if rss_import > rss else " (at most; the export's peak was larger)"
        print(f"import: {wall:.1f} s, {args.entries / wall:,.0f} entries/s, peak RSS {rss_import:.0f} MB{note}")
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
