"""The baseline llmbatch is measured against: a plain any-llm client under an asyncio semaphore.

    python bench/baseline.py FILE --api-base URL [--concurrency 100] [--model gpt-4o-mini]

Reads the ``prompt`` of every line of FILE (the same JSONL file llmbatch runs) and sends each as
one user message through ONE ``AnyLLM.create("openai", ...)`` client (SDK retries off, unified
exceptions on), at most CONCURRENCY at a time. No cache, no retries, no results file: the least
a program must do to send these prompts through any-llm. Prints one JSON object on stdout:
``ok``, ``errors``, ``import_s`` (importing any-llm) and ``loop_s`` (first call to last answer).
``bench/run.py`` measures the whole process (wall, CPU, peak RSS) from outside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


def read_prompts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line)["prompt"] for line in stream if line.strip()]


async def run(prompts: list[str], *, api_base: str, model: str, concurrency: int) -> dict[str, float | int]:
    from any_llm import AnyLLM

    client = AnyLLM.create("openai", api_key="sk-bench", api_base=api_base, unified_exceptions=True, max_retries=0)
    semaphore = asyncio.Semaphore(concurrency)
    errors: list[str] = []

    async def one(prompt: str) -> None:
        async with semaphore:
            try:
                await client.acompletion(model=model, messages=[{"role": "user", "content": prompt}])
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    loop_s = time.perf_counter() - started
    if errors:
        sys.stderr.write(f"baseline: {len(errors)} errors, first: {errors[0]}\n")
    return {"ok": len(prompts) - len(errors), "errors": len(errors), "loop_s": loop_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--concurrency", "-c", type=int, default=100)
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()
    prompts = read_prompts(args.file)
    started = time.perf_counter()
    import any_llm  # noqa: F401 - timed on its own: the start-up cost llmbatch also pays on a cold run

    import_s = time.perf_counter() - started
    result = asyncio.run(run(prompts, api_base=args.api_base, model=args.model, concurrency=args.concurrency))
    print(json.dumps({**result, "import_s": import_s}))
    raise SystemExit(0 if not result["errors"] else 1)


if __name__ == "__main__":
    main()
