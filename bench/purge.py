"""How long `cache purge` and `cache stats` take on a large cache.

    python bench/purge.py --entries 1000000

Fills a fresh cache in a temporary directory with N small answers (in large transactions, with
store times spread over 60 days), then times `stats`, a dry-run count, and a purge of the older
half. The purge reads only diskcache's index, never the values.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from llmbatch.store import DiskStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, DiskStore(Path(tmp) / "c") as cache:
        started = time.perf_counter()
        now = time.time()
        day = 86_400.0
        inner = cache._cache  # filling only: set store_time directly via diskcache's own clock
        batch = 10_000
        for start in range(0, args.entries, batch):
            with inner.transact():
                for i in range(start, min(start + batch, args.entries)):
                    inner.set(
                        f"v1:{i:064x}",
                        {"response": {"n": i}, "usage": {"total_tokens": 10}},
                        tag="openai:gpt-4o-mini" if i % 2 else "anthropic:claude",
                    )
            # spread store times: entry i was stored (i / N * 60) days ago
        inner._sql("UPDATE Cache SET store_time = ? - (rowid * ?)", (now, 60 * day / args.entries))
        fill = time.perf_counter() - started

        t = time.perf_counter()
        stats = cache.stats()
        t_stats = time.perf_counter() - t
        t = time.perf_counter()
        would = cache.purge(30 * day, dry_run=True, now=now)
        t_dry = time.perf_counter() - t
        t = time.perf_counter()
        removed = cache.purge(30 * day, now=now)
        t_purge = time.perf_counter() - t
        print(
            f"entries={stats.entries} fill={fill:.1f}s stats={t_stats:.2f}s dry_run={t_dry:.2f}s "
            f"(would remove {would}) purge={t_purge:.2f}s (removed {removed}) left={cache.stats().entries}"
        )


if __name__ == "__main__":
    main()
