"""Pacing against a strict provider: every prompt done, no 429 from our own pace, share of ideal.

    python bench/pacing.py [--prompts 2000] [--rpm 1200] [--window 1s]

Starts `llmbatch sim --rpm RPM --limit-window WINDOW` in its own process (so the simulator and
llmbatch do not share a CPU core's GIL), then runs `llmbatch run` twice on PROMPTS distinct
prompts: once with `--rpm RPM` and once with no limit given (learning it from the headers). The
ideal is PROMPTS / (RPM / 60) seconds; wall time is the whole command, start-up included. "While
running" is the pace the simulator saw, from the first request it received to the last answer it
sent (its serving_s), as a share of RPM: start-up excluded, which on a busy machine is most of
the difference between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.load(response)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--window", default="1s")
    args = parser.parse_args()
    ideal = args.prompts / (args.rpm / 60)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prompts.jsonl"
        path.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in range(args.prompts)))
        for label, extra in (("--rpm given", ["--rpm", str(args.rpm)]), ("from headers", [])):
            sim = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llmbatch",
                    "sim",
                    "--port",
                    "0",
                    "--rpm",
                    str(args.rpm),
                    "--limit-window",
                    args.window,
                ],
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                url = sim.stderr.readline().split(" on ")[1].split()[0]  # type: ignore[union-attr]
                env = {**os.environ, "LLMBATCH_CACHE_DIR": str(Path(tmp) / "cache"), "OPENAI_API_KEY": "sk-bench"}
                started = time.perf_counter()
                run = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "llmbatch",
                        "run",
                        str(path),
                        "--api-base",
                        url,
                        "-m",
                        "openai:gpt-4o-mini",
                        "--no-cache",
                        "-q",
                        "-o",
                        str(Path(tmp) / "out.jsonl"),
                        *extra,
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                wall = time.perf_counter() - started
                served = stats(url)
            finally:
                sim.terminate()
                sim.wait()
            with open(Path(tmp) / "out.jsonl") as results:
                ok = sum(json.loads(line)["status"] == "ok" for line in results)
            # N starts span N - 1 intervals of the pace.
            running = (served["completions_served"] - 1) / served["serving_s"] * 60 if served["serving_s"] else 0.0
            print(
                f"{label:>13}: exit {run.returncode}, {ok}/{args.prompts} ok, wall {wall:.1f} s, "
                f"ideal {ideal:.1f} s, share of ideal {ideal / wall:.3f}, 429s {served['rate_limited']}, "
                f"served {served['completions_served']}, while running {running:.0f} req/min "
                f"({running / args.rpm:.3f} of the limit)",
                flush=True,
            )


if __name__ == "__main__":
    main()
