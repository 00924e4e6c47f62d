"""How fast the simulator answers a bare HTTP client: shows the simulator is not the limit.

    python bench/ceiling.py FILE --api-base URL [--concurrency 100] [--model gpt-4o-mini]

Posts the chat-completion body for the ``prompt`` of every line of FILE with one
``aiohttp.ClientSession`` (``TCPConnector(limit=0)``: no connection cap besides the semaphore),
at most CONCURRENCY at a time, reading each JSON answer. No SDK, no validation, no cache. Prints
one JSON object on stdout: ``ok``, ``errors``, ``loop_s`` (first request to last answer).
"""

from __future__ import annotations

import asyncio

import aiohttp
from _common import finish, parse_args, read_prompts, send_all  # bench/ is on sys.path when run


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

        return await send_all(prompts, one, errors, "ceiling")


def main() -> None:
    args = parse_args(__doc__)
    prompts = read_prompts(args.file)
    result = asyncio.run(run(prompts, api_base=args.api_base, model=args.model, concurrency=args.concurrency))
    finish(result)


if __name__ == "__main__":
    main()
