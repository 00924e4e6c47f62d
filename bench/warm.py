"""A warm rerun beyond start-up: how fast llmbatch answers a file that is all cache hits.

    python bench/warm.py                 # 20,000 lines, 5 rounds
    python bench/warm.py --n 100000 --rounds 3

Fills a cache for N distinct prompts with bench/seed_cache.py (the real `llmbatch run`, answers
given at once in-process), then, in alternating order each round, reruns the N-line file and a
1-line file whose line is also a hit (the start-up: interpreter, imports, options, opening the cache,
writing a results file). Every rerun is a whole process; none may call the simulator.
``beyond start-up`` = N / (wall of the N-line rerun - wall of the 1-line rerun), medians of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from run import MODEL, SimProcess, llmbatch_cmd, measure, result_counts, seed_argv, write_prompts  # bench/ on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmbatch-warm-") as tmp_name, SimProcess(0) as sim:
        tmp = Path(tmp_name)
        big = write_prompts(tmp / "big.jsonl", args.n, "warm")
        one = tmp / "one.jsonl"
        one.write_text(big.read_text().splitlines()[0] + "\n")
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_BASE_URL", "_API_BASE"))}
        env.update({"LLMBATCH_CACHE_DIR": str(tmp / "cache"), "OPENAI_API_KEY": "sk-bench"})
        seed = measure(seed_argv(big, sim.url, tmp / "seed.results.jsonl"), env=env)
        if seed.returncode != 0:
            raise SystemExit(f"seed_cache.py exited {seed.returncode}:\n{seed.stderr[-2000:]}")
        walls: dict[str, list[float]] = {"big": [], "one": []}
        cpu: list[float] = []
        for r in range(args.rounds):
            order = ("big", "one") if r % 2 == 0 else ("one", "big")
            for which in order:
                file, n = (big, args.n) if which == "big" else (one, 1)
                out = tmp / f"{which}.results.jsonl"
                sim.reset()
                argv = [*llmbatch_cmd(), "run", str(file), "-m", MODEL, "-q", "-o", str(out), "--api-base", sim.url]
                m = measure(argv, env=env)
                if m.returncode != 0 or result_counts(out)["cached"] != n or sim.stats()["requests_received"]:
                    raise SystemExit(f"warm rerun of {which}: exit {m.returncode}, {result_counts(out)}\n{m.stderr}")
                walls[which].append(m.wall_s)
                if which == "big":
                    cpu.append(m.cpu_s)
                sys.stderr.write(f"[warm] round {r + 1}/{args.rounds} {which}: {m.wall_s:.3f} s\n")
    big_s, one_s = statistics.median(walls["big"]), statistics.median(walls["one"])
    print(
        f"warm rerun of {args.n:,} cached lines, {args.rounds} rounds, medians: {big_s:.3f} s end to end "
        f"({args.n / big_s:,.0f} lines/s); start-up (1-line rerun) {one_s:.3f} s; "
        f"beyond start-up {args.n / (big_s - one_s):,.0f} lines/s; "
        f"CPU {1e6 * statistics.median(cpu) / args.n:.1f} us/line"
    )


if __name__ == "__main__":
    main()
