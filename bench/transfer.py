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
from pathlib import Path

from _store import fill  # bench/ is on sys.path when run


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
