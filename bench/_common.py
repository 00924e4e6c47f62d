"""What bench/baseline.py and bench/ceiling.py share: the same input, options and report, so the
two clients differ only in how they send a request."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable


def read_prompts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line)["prompt"] for line in stream if line.strip()]


def parse_args(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--concurrency", "-c", type=int, default=100)
    parser.add_argument("--model", default="gpt-4o-mini")
    return parser.parse_args()


async def send_all(
    prompts: list[str], one: Callable[[str], Awaitable[None]], errors: list[str], label: str
) -> dict[str, float | int]:
    """Run ``one`` for every prompt at once (``one`` holds its own semaphore); time the loop."""
    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    loop_s = time.perf_counter() - started
    if errors:
        sys.stderr.write(f"{label}: {len(errors)} errors, first: {errors[0]}\n")
    return {"ok": len(prompts) - len(errors), "errors": len(errors), "loop_s": loop_s}


def finish(result: dict[str, float | int]) -> None:
    print(json.dumps(result))
    raise SystemExit(0 if not result["errors"] else 1)
