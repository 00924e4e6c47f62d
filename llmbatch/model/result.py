"""What happened to one input line: the value the run produces for each, and its JSON line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Result", "encode", "first_choice"]


def first_choice(response: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """``(content, finish_reason)`` of the first choice, or ``(None, None)``."""
    if not response:
        return None, None
    choices = response.get("choices") or []
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, None
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    finish = choice.get("finish_reason")
    return (content if isinstance(content, str) else None), (finish if isinstance(finish, str) else None)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs an object.__setattr__ call per field
class Result:
    """What happened to one input line."""

    line: int
    id: str | int
    key: str
    status: str  # "ok" | "error"
    cached: bool  # True when this line cost no call in this run
    model: str
    metadata: Any
    response: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    latency_ms: float | None = None
    attempts: int = 0
    error: dict[str, Any] | None = None
    cost_usd: float | None = None  # what the answer cost (for a hit: when it was first paid)
    #: "exact" (from the cache), "semantic" (a near-identical prompt's stored answer, ``--semantic``),
    #: "duplicate" (shared a call in flight), or None
    hit: str | None = None
    #: The ``provider:model`` whose answer this is: ``model``, or a model of its route's ``fallback``
    #: (None for an error).
    answered_by: str | None = None
    #: Why the line was asked again of its route's ``escalate.to`` (``"length"``, ``"invalid_json"``),
    #: or None; ``cost_usd`` and ``attempts`` then count both answers.
    escalated: str | None = None
    #: How the answer was made: ``"live"`` (a call) or ``"batch"`` (a Batch-API job), for a hit
    #: as when it was first paid; None for an error.
    via: str | None = None
    #: For a semantic hit: the cosine similarity of the two prompts, and the key whose answer it is.
    similarity: float | None = None
    matched_key: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def content(self) -> str | None:
        """The first choice's text, or None."""
        return first_choice(self.response)[0]

    @property
    def truncated(self) -> bool:
        """The answer was cut off at ``max_tokens`` (some choice ended with ``length``)."""
        choices = (self.response or {}).get("choices") or []
        return any(isinstance(c, dict) and c.get("finish_reason") == "length" for c in choices)

    def to_dict(self) -> dict[str, Any]:
        content, finish_reason = first_choice(self.response)
        line = {
            "id": self.id,
            "line": self.line,
            "status": self.status,
            "cached": self.cached,
            "hit": self.hit,
            "content": content,
            "finish_reason": finish_reason,
            "truncated": self.truncated,
            "model": self.model,
            "answered_by": self.answered_by,
            "escalated": self.escalated,
            "via": self.via,
            "usage": self.usage,
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
            "cost_usd": self.cost_usd,
            "key": self.key,
            "metadata": self.metadata,
            "error": self.error,
            "response": self.response,
        }
        if self.hit == "semantic":
            # Only on semantic hits: every other line keeps the shape it always had.
            line["similarity"] = self.similarity
            line["matched_key"] = self.matched_key
        return line


def encode(result: Result) -> bytes:
    """One result line, newline included."""
    line = result.to_dict()
    try:
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits in the line's own metadata or id (orjson writes none): the
        # standard library writes it whole, as the input had it.
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
