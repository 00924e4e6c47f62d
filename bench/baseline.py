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

import asyncio
import time

from _common import finish, parse_args, read_prompts, send_all  # bench/ is on sys.path when run


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

    return await send_all(prompts, one, errors, "baseline")


def main() -> None:
    args = parse_args(__doc__)
    prompts = read_prompts(args.file)
    started = time.perf_counter()
    import any_llm  # noqa: F401 - timed on its own: the start-up cost llmbatch also pays on a cold run

    import_s = time.perf_counter() - started
    result = asyncio.run(run(prompts, api_base=args.api_base, model=args.model, concurrency=args.concurrency))
    finish({**result, "import_s": import_s})


if __name__ == "__main__":
    main()
