"""Many processes on one Redis, and one process at scale.

    python bench/redis_shared.py                 # every part, ~6 minutes on 2 cores
    python bench/redis_shared.py --part limited  # or: unlimited, warm, scale

- **limited**: 1, 2 and 4 processes run the same file with `--cache unix://…` against a simulator
  that enforces 6,000 requests a minute over any one second (its own process, 100 ms latency). Their
  total pace as a share of the limit, while the simulator was serving, and the 429s they caused
  (every prompt distinct, so each 429 is ours). The processes divide the file between them.
- **unlimited**: the same without a limit (`-c 100` each): total answers a second.
- **warm**: a rerun of 100,000 cached lines from Redis against the same from disk (each cache seeded by
  bench/seed_cache.py), alternating, median of 3.
- **scale**: one process at scale: 20,000 prompts, lognormal latency with a 2 s median, `-c 2000`, no
  limit; share of ideal (20,000 / (2,000 / 2 s) = 20 s) while running, peak RSS of the process tree,
  CPU per call; and the same for bench/ceiling.py (one aiohttp session, no SDK) on the same simulator,
  which is what this machine allows at all. Beside them, the bound no client can pass: the share of
  a client with no overhead at all, given the simulator's own seeded latencies (:func:`no_overhead_span`).

Redis is a real redis-server on a unix socket in a temporary directory (as the tests start it).
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import MODEL, SimProcess, llmbatch_cmd, measure, seed_argv, write_prompts
from tests.redis_server import RedisServer


def run_argv(file: Path, url: str, out: Path, *extra: str) -> list[str]:
    """``llmbatch run FILE`` against the simulator at ``url``, quiet, results to ``out``."""
    return [*llmbatch_cmd(), "run", str(file), "--api-base", url, "-m", MODEL, "-q", "-o", str(out), *extra]


def processes(n: int, file: Path, url: str, redis_url: str, tmp: Path, *extra: str) -> float:
    """Run ``n`` llmbatch processes on ``file`` at once; wall seconds until the last one ends."""
    import subprocess

    started = time.perf_counter()
    running = [
        subprocess.Popen(
            run_argv(file, url, tmp / f"out-{i}.jsonl", "--cache", redis_url, *extra),
            env={**os.environ, "LLMBATCH_CACHE_DIR": str(tmp / f"machine-{i}"), "OPENAI_API_KEY": "sk-bench"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for process in running:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"llmbatch failed: {stderr[-500:]}")
    return time.perf_counter() - started


def _each_count(
    tmp: Path, part: str, prompts: int, sim_args: tuple[str, ...], run_args: tuple[str, ...]
) -> list[tuple[int, float, dict]]:
    """1, 2 and 4 processes on ``prompts`` prompts, each count with a fresh simulator and Redis:
    ``(processes, wall s, the simulator's counters)``."""
    rows = []
    for n in (1, 2, 4):
        run_dir = tmp / f"{part}-{n}"
        run_dir.mkdir()
        file = write_prompts(run_dir / "p.jsonl", prompts, f"{part}-{n}")
        server = RedisServer(run_dir)
        server.start()
        try:
            with SimProcess(100, *sim_args) as sim:
                wall = processes(n, file, sim.url, server.url, run_dir, *run_args)
                rows.append((n, wall, sim.stats()))
        finally:
            server.stop()
    return rows


def limited(tmp: Path, prompts: int) -> None:
    print(f"limited: {prompts:,} prompts, simulator at 6,000 RPM over 1 s, 100 ms latency")
    print("  processes  wall s  running s  req/min  share of limit  our 429s  paid")
    for n, wall, stats in _each_count(tmp, "limited", prompts, ("--rpm", "6000", "--limit-window", "1s"), ()):
        pace = stats["completions_served"] / stats["serving_s"] * 60
        print(
            f"  {n:9d}  {wall:6.1f}  {stats['serving_s']:9.1f}  {pace:7,.0f}  {pace / 6000:14.3f}  "
            f"{stats['rate_limited']:8d}  {stats['completions_served']}"
        )


def unlimited(tmp: Path, prompts: int) -> None:
    print(f"unlimited: {prompts:,} prompts, 100 ms latency, -c 100 each")
    print("  processes  wall s  running s  answers/s  paid")
    for n, wall, stats in _each_count(tmp, "unlimited", prompts, (), ("-c", "100")):
        rate = stats["completions_served"] / stats["serving_s"]
        print(f"  {n:9d}  {wall:6.1f}  {stats['serving_s']:9.1f}  {rate:9,.0f}  {stats['completions_served']}")


def warm(tmp: Path, lines: int) -> None:
    print(f"warm: a rerun of {lines:,} cached lines, Redis against disk (median of 3, alternating)")
    run_dir = tmp / "warm"
    run_dir.mkdir()
    file = write_prompts(run_dir / "p.jsonl", lines, "warm")
    server = RedisServer(run_dir)
    server.start()
    try:
        with SimProcess(0) as sim:
            env = {**os.environ, "LLMBATCH_CACHE_DIR": str(run_dir / "disk"), "OPENAI_API_KEY": "sk-bench"}
            for extra in ([], ["--cache", server.url]):
                seeded = measure([*seed_argv(file, sim.url, run_dir / "seed.jsonl"), *extra], env=env)
                assert seeded.returncode == 0, seeded.stderr[-500:]
            base = [
                *llmbatch_cmd(),
                "run",
                str(file),
                "--api-base",
                sim.url,
                "-m",
                MODEL,
                "-q",
                "-o",
                str(run_dir / "out.jsonl"),
            ]
            times: dict[str, list[float]] = {"disk": [], "redis": []}
            rss: dict[str, list[float]] = {"disk": [], "redis": []}
            for _ in range(3):
                for label, extra in (("disk", []), ("redis", ["--cache", server.url])):
                    done = measure([*base, *extra], env=env)
                    assert done.returncode == 0, done.stderr[-500:]
                    times[label].append(done.wall_s)
                    rss[label].append(done.peak_tree_rss_mb)
            assert sim.stats()["requests_received"] == 0, "a warm rerun made calls"
    finally:
        server.stop()
    for label in ("disk", "redis"):
        wall, peak = statistics.median(times[label]), statistics.median(rss[label])
        print(f"  {label:5s}  {wall:6.2f} s  {lines / wall:9,.0f} lines/s  peak RSS {peak:.0f} MB")
    print(f"  redis / disk: {statistics.median(times['redis']) / statistics.median(times['disk']):.2f}")


def no_overhead_span(prompts: int, slots: int, median_s: float, sigma: float, seed: int) -> float:
    """The serving span of a client that costs nothing: ``prompts`` calls on ``slots`` in flight,
    each slot taking the next call the instant its answer lands, with the latencies the simulator
    draws (``random.Random(seed).lognormvariate``, in order: with faults off it draws nothing else).
    The lognormal's mean is above its median and its slowest calls land seconds after the rest, so
    this is longer than ``prompts / (slots / median_s)``: the issue's ideal is beyond any client."""
    draw = random.Random(seed)
    free = [0.0] * slots
    end = 0.0
    for _ in range(prompts):
        done = heapq.heappop(free) + draw.lognormvariate(math.log(median_s), sigma)
        end = max(end, done)
        heapq.heappush(free, done)
    return end


def scale(tmp: Path, prompts: int) -> None:
    print(f"scale: one process, {prompts:,} prompts, lognormal latency (median 2 s), -c 2000, no limit")
    run_dir = tmp / "scale"
    run_dir.mkdir()
    file = write_prompts(run_dir / "p.jsonl", prompts, "scale")
    ideal = prompts / (2000 / 2.0)
    bench = Path(__file__).resolve().parent
    # The raw aiohttp runner on the same simulator first: what this machine allows at all (the
    # simulator shares its two cores), so llmbatch's share is read against it, in the same run.
    runners = {
        "raw aiohttp": lambda url: [
            sys.executable,
            str(bench / "ceiling.py"),
            str(file),
            "--api-base",
            url,
            "--concurrency",
            "2000",
        ],
        "llmbatch": lambda url: run_argv(file, url, run_dir / "out.jsonl", "-c", "2000"),
    }
    shares = {}
    for label, argv in runners.items():
        with SimProcess(2000, "--latency-dist", "lognormal", "--seed", "1") as sim:
            env = {**os.environ, "LLMBATCH_CACHE_DIR": str(run_dir / "cache"), "OPENAI_API_KEY": "sk-bench"}
            done = measure(argv(sim.url), env=env)
            assert done.returncode == 0, done.stderr[-500:]
            stats = sim.stats()
        running = stats["serving_s"]
        shares[label] = ideal / running
        print(
            f"  {label:12s} wall {done.wall_s:.1f} s; while running {running:.1f} s = {ideal / running:.3f} of ideal "
            f"({ideal:.0f} s); max in flight {stats['max_in_flight']}; peak RSS (tree) {done.peak_tree_rss_mb:.0f} MB; "
            f"CPU {1000 * done.cpu_s / prompts:.2f} ms/call; paid {stats['completions_served']}"
        )
    bound = ideal / no_overhead_span(prompts, 2000, 2.0, 0.5, seed=1)  # the simulator's defaults (sigma 0.5)
    print(f"  a client with no overhead, same latencies: {bound:.3f} of ideal (no client can do better)")
    for label, share in shares.items():
        print(f"  {label} / no-overhead client: {share / bound:.2f}")
    print(f"  llmbatch / raw aiohttp share of ideal: {shares['llmbatch'] / shares['raw aiohttp']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("limited", "unlimited", "warm", "scale"), action="append")
    parser.add_argument("--prompts", type=int, default=2000, help="for limited and unlimited")
    parser.add_argument("--warm-lines", type=int, default=100_000)
    parser.add_argument("--scale-prompts", type=int, default=20_000)
    args = parser.parse_args()
    parts = args.part or ["limited", "unlimited", "warm", "scale"]
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            if part == "limited":
                limited(Path(tmp), args.prompts)
            elif part == "unlimited":
                unlimited(Path(tmp), args.prompts)
            elif part == "warm":
                warm(Path(tmp), args.warm_lines)
            else:
                scale(Path(tmp), args.scale_prompts)


if __name__ == "__main__":
    main()
