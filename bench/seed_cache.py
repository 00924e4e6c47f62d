"""Fill a cache for a warm-rerun benchmark fast: `llmbatch run` itself, with instant answers.

    python bench/seed_cache.py FILE --api-base URL -m openai:gpt-4o-mini [other `llmbatch run` options]

Runs the real command line (``llmbatch.cli.main``: same validation, keys, engine, cache writes
and results file) with one change: the provider answers every call at once, in-process, with a
response shaped like the simulator's, instead of going through any-llm and HTTP. So the cache it
leaves is what a cold run against ``URL`` leaves, in a fraction of the time (a real cold run of
100,000 prompts costs ~3 ms of CPU each, minutes on a 2-core machine). ``bench/run.py`` checks
afterwards that the warm rerun it times makes zero calls.

Exit code 3 if llmbatch no longer has the hook used here (``llmbatch.app.run._provider``): the
caller then seeds with a real cold run instead.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Any


class InstantProvider:
    """The engine's provider protocol, answering at once."""

    secrets: tuple[str, ...] = ()
    lost = 0

    def __init__(self, _workers: int, destination: Any) -> None:
        from llmbatch.providers.base import Reply

        self.destination = destination  # the keys record where the real calls would have gone
        self._reply = Reply

    async def prepare(self, request: Any) -> None:
        pass

    async def complete(self, request: Any, *, timeout_s: float) -> Any:
        text = next((m.get("content") for m in reversed(request.messages) if m.get("role") == "user"), "")
        if not isinstance(text, str):
            text = str(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        answer = f"Simulated answer {digest[:8]} to: {text}"
        prompt_tokens, completion_tokens = max(1, len(text.split())), len(answer.split())
        response = {  # the simulator's answer, as AnyLLMProvider stores it (model_dump, no None)
            "id": f"chatcmpl-sim-{digest[8:32]}",
            "choices": [{"finish_reason": "stop", "index": 0, "message": {"content": answer, "role": "assistant"}}],
            "created": int(time.time()),
            "model": request.model,
            "object": "chat.completion",
            "system_fingerprint": "llmbatch-sim",
            "usage": {
                "completion_tokens": completion_tokens,
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return self._reply(response, 0.1, None)

    async def aclose(self) -> None:
        pass


def main() -> None:
    import llmbatch.app.run as runner

    if not callable(getattr(runner, "_provider", None)):
        sys.stderr.write("seed_cache: llmbatch.app.run._provider is gone; seed with a real cold run\n")
        raise SystemExit(3)
    runner._provider = InstantProvider  # type: ignore[assignment]
    from llmbatch.cli import main as cli_main

    sys.argv = ["llmbatch", "run", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
