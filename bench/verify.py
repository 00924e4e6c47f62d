"""How long `llmbatch cache verify` takes, and how much memory, on a large cache.

    python bench/verify.py --entries 1000000

Fills a fresh disk store (in a temporary directory, or --dir to keep it for another pass) with N
entries as runs write them (``make_entry``: key material, a small answer, usage, cost, digest),
through ``DiskStore.load`` a thousand at a time, damages a few (--damage: one undecodable value,
one edited request, one edited answer per three), then runs ``llmbatch cache verify --json`` as a
subprocess and reports its wall time and peak RSS (``getrusage(RUSAGE_CHILDREN)``: the only child
this process waits for). Verify exits 1 when it finds damage; that is expected here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _store import fill as fill_store  # bench/ is on sys.path when run

from llmbatch.store import store_exists


def fill(directory: Path, count: int, damage: int) -> float:
    started = time.perf_counter()
    fill_store(directory, count)
    db = sqlite3.connect(directory / "cache.db")
    with db:
        rows = db.execute("SELECT rowid, value FROM Cache ORDER BY rowid LIMIT ?", (damage,)).fetchall()
        for n, (rowid, value) in enumerate(rows):
            if n % 3 == 0:
                value = value[: len(value) // 2]  # cut short: does not decode
            elif n % 3 == 1:
                value = value.replace(b"question number", b"question NUMBER", 1)  # the key no longer matches
            else:
                value = value.replace(b'"content":"', b'"content":"!', 1)  # the answer (first): the digest
            db.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (value, rowid))
    db.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--damage", type=int, default=30, help="entries to damage (a third of each kind)")
    parser.add_argument("--dir", type=Path, help="keep the cache here (filled only if it holds none yet)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp) / "cache"
        filled = 0.0
        if not store_exists(directory):
            filled = fill(directory, args.entries, args.damage)
        command = [sys.executable, "-m", "llmbatch", "cache", "verify", "--json", "--cache-dir", str(directory)]
        env = {**os.environ, "LLMBATCH_CACHE_DIR": str(directory)}
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KB on Linux
        if done.returncode not in (0, 1):
            sys.exit(f"verify failed ({done.returncode}): {done.stderr}")
        report = json.loads(done.stdout)
        print(
            json.dumps(
                {
                    "entries": report["checked"],
                    "fill_s": round(filled, 1),
                    "verify_wall_s": round(wall, 2),
                    "verify_peak_rss_mb": round(peak_mb, 1),
                    "per_million_s": round(wall * 1_000_000 / max(1, report["checked"]), 1),
                    "found": report["found"],
                    "exit_code": done.returncode,
                    "command": " ".join(command[1:]),
                }
            )
        )


if __name__ == "__main__":
    main()
