"""How fast the simulator answers a bare HTTP client: shows the simulator is not the limit.

    python bench/ceiling.py FILE --api-base URL [--concurrency 100] [--model gpt-4o-mini]

Posts the chat-completion body for the ``prompt`` of every line of FILE with one
``aiohttp.ClientSession`` (``TCPConnector(limit=0)``: no connection cap besides the semaphore),
at most CONCURRENCY at a time, reading each JSON answer. No SDK, no validation, no cache. Prints
one JSON object on stdout: ``ok``, ``errors``, ``loop_s`` (first request to last answer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp


def read_prompts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line)["prompt"] for line in stream if line.strip()]


async def run(prompts: list[str], *, api_base: str, model: str, concurrency: int) -> dict[str, float | int]:
    url = api_base.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}
    semaphore = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(prompt: str) -> None:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
            async with semaphore:
                try:
                    async with session.post(url, json=body, headers=headers) as response:
                        answer = await response.json()
                        if response.status != 200 or not answer.get("choices"):
                            errors.append(f"HTTP {response.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        started = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        loop_s = time.perf_counter() - started
    if errors:
        sys.stderr.write(f"ceiling: {len(errors)} errors, first: {errors[0]}\n")
    return {"ok": len(prompts) - len(errors), "errors": len(errors), "loop_s": loop_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--concurrency", "-c", type=int, default=100)
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()
    prompts = read_prompts(args.file)
    result = asyncio.run(run(prompts, api_base=args.api_base, model=args.model, concurrency=args.concurrency))
    print(json.dumps(result))
    raise SystemExit(0 if not result["errors"] else 1)


if __name__ == "__main__":
    main()
