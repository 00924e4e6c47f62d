"""This tree against an earlier commit, on the same machine, in one run, interleaved.

    python bench/compare.py 42072b1                     # warm 100,000 and cold 5,000, 6 pairs each
    python bench/compare.py 42072b1 --warm 10000 --cold 0 --pairs 3

Machines here differ by 2x from one session to the next and drift by a third within minutes, so
a figure from another day means little; the ratio between two versions of the code, run in
alternating order on the same machine and the same inputs, holds. The earlier commit is checked
out into a temporary git worktree; each command runs from a neutral directory with PYTHONPATH set
to one tree (``python -m llmbatch`` would otherwise import whichever tree is the working
directory). Both use the same seeded cache (keys are versioned, and checked: every warm line must
be a hit) and the same simulator process (``bench/run.py``'s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from run import BENCH, CONCURRENCY, MODEL, ROOT, SimProcess, measure, result_counts, seed_argv, write_prompts

WARM_BASE = "http://127.0.0.1:9/v1"  # never called: a warm rerun makes no call (checked)


def llmbatch(file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llmbatch", "run", str(file), "-m", MODEL, "-q", "-o", str(out), *extra]


def env_for(tree: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_BASE_URL", "_API_BASE"))}
    return {**env, "PYTHONPATH": str(tree), "LLMBATCH_CACHE_DIR": str(cache)}


def run_in(tree: Path, argv: list[str], cache: Path, cwd: Path) -> Any:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        m = measure(argv, env=env_for(tree, cache))
    finally:
        os.chdir(old)
    if m.returncode != 0:
        raise RuntimeError(f"{tree}: {' '.join(argv)} exited {m.returncode}:\n{m.stderr[-2000:]}")
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier commit")
    parser.add_argument("--warm", type=int, default=100_000, help="prompts in the warm rerun (0: skip)")
    parser.add_argument("--cold", type=int, default=5_000, help="prompts in the cold run (0: skip)")
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    results: dict[str, Any] = {"rev": args.rev, "pairs": args.pairs}
    with tempfile.TemporaryDirectory(prefix="llmbatch-compare-") as tmp_name:
        tmp = Path(tmp_name)
        old_tree = tmp / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old_tree), args.rev], check=True
        )
        try:
            trees = {"old": old_tree, "new": ROOT}
            for tree in trees.values():
                subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "llmbatch")], check=True)
            work = tmp / "work"
            work.mkdir()
            if args.warm:
                results["warm"] = warm(args, trees, tmp, work)
            if args.cold:
                results["cold"] = cold(args, trees, tmp, work)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], check=False)
    out = BENCH / "out" / "compare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps(
            {k: {n: v.get("median") for n, v in r.items()} for k, r in results.items() if isinstance(r, dict)}, indent=2
        )
    )
    print(f"results: {out}")


def warm(args: Any, trees: dict[str, Path], tmp: Path, work: Path) -> dict[str, Any]:
    n = args.warm
    file = write_prompts(tmp / "warm.jsonl", n, f"warm{n}")
    cache = tmp / "warm-cache"
    sys.stderr.write(f"[compare] seeding {n:,} answers (bench/seed_cache.py, untimed)\n")
    seed = subprocess.run(
        seed_argv(file, WARM_BASE, tmp / "seed.jsonl"),
        env=env_for(ROOT, cache),
        cwd=work,
        capture_output=True,
        text=True,
    )
    if seed.returncode != 0:
        raise RuntimeError(seed.stderr[-2000:])
    walls: dict[str, list[float]] = {name: [] for name in trees}
    cpus: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(args.pairs):
        order = list(trees) if i % 2 == 0 else list(trees)[::-1]
        for name in order:
            out = tmp / f"warm-{name}.jsonl"
            m = run_in(trees[name], llmbatch(file, out, "--api-base", WARM_BASE, "-c", "100"), cache, work)
            counts = result_counts(out)
            if counts["ok"] != n or sum(1 for line in out.open() if '"cached":true' in line) != n:
                raise RuntimeError(f"warm {name}: not every line was a cache hit: {counts}")
            walls[name].append(m.wall_s)
            cpus[name].append(m.cpu_s)
            sys.stderr.write(f"[compare] warm {name} {i + 1}/{args.pairs}: {m.wall_s:.2f} s\n")
    return summary(walls, cpus, n, per="lines_per_s")


def cold(args: Any, trees: dict[str, Path], tmp: Path, work: Path) -> dict[str, Any]:
    n = args.cold
    file = write_prompts(tmp / "cold.jsonl", n, "cold")
    walls: dict[str, list[float]] = {name: [] for name in trees}
    cpus: dict[str, list[float]] = {name: [] for name in trees}
    running: dict[str, list[float]] = {name: [] for name in trees}
    with SimProcess(100) as sim:
        for i in range(args.pairs):
            order = list(trees) if i % 2 == 0 else list(trees)[::-1]
            for name in order:
                sim.reset()
                cache = tmp / f"cold-{name}-{i}"
                out = tmp / f"cold-{name}.jsonl"
                argv = llmbatch(file, out, "--api-base", sim.url, "-c", str(CONCURRENCY))
                m = run_in(trees[name], argv, cache, work)
                stats = sim.stats()
                if result_counts(out)["ok"] != n or stats["completions_served"] != n:
                    raise RuntimeError(f"cold {name}: {result_counts(out)}, served {stats['completions_served']}")
                walls[name].append(m.wall_s)
                cpus[name].append(m.cpu_s)
                running[name].append(stats["serving_s"])
                sys.stderr.write(f"[compare] cold {name} {i + 1}/{args.pairs}: {m.wall_s:.2f} s\n")
    result = summary(walls, cpus, n, per="req_per_s")
    ideal = n * 0.1 / CONCURRENCY
    for name in trees:
        result[name]["running_share_of_ideal"] = round(ideal / statistics.median(running[name]), 3)
        result[name]["running_s"] = running[name]
    return result


def summary(walls: dict[str, list[float]], cpus: dict[str, list[float]], n: int, *, per: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in walls:
        wall = statistics.median(walls[name])
        result[name] = {
            "median": round(wall, 3),
            per: round(n / wall, 1),
            "cpu_s": round(statistics.median(cpus[name]), 3),
            "walls": [round(w, 3) for w in walls[name]],
        }
    ratios = [new / old for new, old in zip(walls["new"], walls["old"], strict=True)]
    result["new_over_old"] = {"median": round(statistics.median(ratios), 3), "pairs": [round(r, 3) for r in ratios]}
    return result


if __name__ == "__main__":
    main()
