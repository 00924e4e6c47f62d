"""Sporadic 429s: the same input fault-free and with a fraction of calls refused, in one run.

    python bench/sporadic429.py [--prompts 500] [--concurrency 16] [--latency 200ms]
                                [--p429 0.1] [--retry-after 2] [--repeat 3] [--out FILE]
    python bench/sporadic429.py --tiny     # seconds; what tests/test_bench_sporadic429.py runs

Each variant gets a fresh `llmbatch sim --port 0 --latency LATENCY` in its own process (so the
simulator and llmbatch do not share a GIL); the faulty one adds `--p429 P --retry-after RA`: 429s
drawn at random, with Retry-After and no rate-limit headers, as a busy provider sends them. Both
run `llmbatch run FILE --api-base SIM -m openai:gpt-4o-mini -c C --no-cache -q -o OUT` on the same
PROMPTS distinct prompts, alternating which goes first, median of REPEAT.

The target (the "random 429s collapse throughput" issue): faulty wall time at most
2 x (fault-free wall time + Retry-After). Also reported: the calls in flight on average while
running (completions x latency / serving time, from the simulator's counters) and at most.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "openai:gpt-4o-mini"


def seconds(text: str) -> float:
    text = text.strip()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.removesuffix("s"))


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.load(response)  # type: ignore[no-any-return]


def one_run(path: Path, tmp: Path, args: argparse.Namespace, *, faulty: bool) -> dict[str, Any]:
    sim_argv = [sys.executable, "-m", "llmbatch", "sim", "--port", "0", "--latency", args.latency]
    if faulty:
        sim_argv += ["--p429", str(args.p429), "--retry-after", f"{args.retry_after}s", "--seed", str(args.seed)]
    sim = subprocess.Popen(sim_argv, stderr=subprocess.PIPE, text=True)
    out = tmp / "out.jsonl"
    try:
        url = sim.stderr.readline().split(" on ")[1].split()[0]  # type: ignore[union-attr]
        env = {**os.environ, "LLMBATCH_CACHE_DIR": str(tmp / "cache"), "OPENAI_API_KEY": "sk-bench"}
        argv = [sys.executable, "-m", "llmbatch", "run", str(path), "--api-base", url, "-m", MODEL]
        argv += ["-c", str(args.concurrency), "--no-cache", "-q", "-o", str(out)]
        started = time.perf_counter()
        run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - started
        served = stats(url)
    finally:
        sim.terminate()
        sim.wait()
    with open(out) as results:
        ok = sum(json.loads(line)["status"] == "ok" for line in results)
    serving = served["serving_s"] or 0.0
    return {
        "variant": "p429" if faulty else "fault-free",
        "exit": run.returncode,
        "ok": ok,
        "wall_s": round(wall, 3),
        "serving_s": serving,
        "completions": served["completions_served"],
        "injected_429s": served["faults"]["429"],
        "max_in_flight": served["max_in_flight"],
        "avg_in_flight": round(served["completions_served"] * seconds(args.latency) / serving, 2) if serving else None,
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_1min": os.getloadavg()[0],
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--concurrency", "-c", type=int, default=16)
    parser.add_argument("--latency", default="200ms")
    parser.add_argument("--p429", type=float, default=0.1)
    parser.add_argument("--retry-after", type=float, default=2.0, help="seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    parser.add_argument("--tiny", action="store_true", help="20 prompts, 10 ms, Retry-After 0.1 s, once")
    args = parser.parse_args()
    if args.tiny:
        args.prompts, args.latency, args.retry_after, args.repeat, args.concurrency = 20, "10ms", 0.1, 1, 4

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "prompts.jsonl"
        path.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in range(args.prompts)))
        for rep in range(args.repeat):
            for faulty in (False, True) if rep % 2 == 0 else (True, False):
                figures = one_run(path, tmp, args, faulty=faulty)
                runs.append(figures)
                print(
                    f"{figures['variant']:>10}: exit {figures['exit']}, {figures['ok']}/{args.prompts} ok, "
                    f"wall {figures['wall_s']:.2f} s, serving {figures['serving_s']:.2f} s, "
                    f"429s {figures['injected_429s']}, in flight avg {figures['avg_in_flight']} "
                    f"max {figures['max_in_flight']}",
                    flush=True,
                )

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["variant"] == variant)

    clean, faulty_s = median("fault-free", "wall_s"), median("p429", "wall_s")
    limit = 2 * (clean + args.retry_after)
    target = {
        "fault_free_wall_s": clean,
        "p429_wall_s": faulty_s,
        "limit_s": round(limit, 3),
        "share_of_limit": round(faulty_s / limit, 3),
        "p429_over_fault_free": round(faulty_s / clean, 3),
        "met": faulty_s <= limit and all(r["ok"] == args.prompts for r in runs),
    }
    print(
        f"median of {args.repeat}: fault-free {clean:.2f} s, p429 {faulty_s:.2f} s "
        f"({target['p429_over_fault_free']:.2f}x); target <= 2 x ({clean:.2f} + {args.retry_after:g}) = {limit:.2f} s: "
        f"{'met' if target['met'] else 'MISSED'} ({target['share_of_limit']:.2f} of it)"
    )
    if args.out is not None:
        params = {k: v for k, v in vars(args).items() if k != "out"}
        result = {"machine": machine(), "params": params, "runs": runs, "target": target}
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
