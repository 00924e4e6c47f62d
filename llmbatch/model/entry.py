"""A stored answer: the versioned JSON record every store keeps under a request key.

Stores write it as JSON (never a pickle) and read it back as a dict, so the type is a TypedDict:
typed for the code that builds and reads entries, free at run time on the hot path of a cached
rerun. ``v`` is the record's version (3: with the request it answers and a digest of itself).
Entries written before it (no ``digest``; before 2, no ``request`` either) are read as they were;
nothing in them is needed to serve a hit.

``request`` is the canonical material the key was made from (:func:`llmbatch.keys.key_material`),
so that an entry can be explained, its key re-derived, exported and imported without the input
file that asked for it. ``digest`` is the sha256 of the rest of the record (canonical JSON), so
damaged bytes are found by ``cache verify`` and refused by ``cache import``. It protects against
corruption, not against someone who writes a false answer and its digest.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypedDict

from llmbatch.keys import canonical_json

__all__ = ["ENTRY_VERSION", "CacheEntry", "entry_digest", "make_entry", "servable"]

ENTRY_VERSION = 3


class CacheEntry(TypedDict, total=False):
    v: int
    key: str
    stored_at: float  # time.time() when it was stored
    provider: str
    model: str
    endpoint: str | None  # what the key records as the destination (a base URL, the simulator's namespace)
    usage: dict[str, Any] | None
    latency_ms: float | None
    cost_usd: float | None  # what the call cost (None: no known price)
    response: dict[str, Any]  # the provider's whole response
    request: dict[str, Any]  # the key material
    via: str  # "batch" for an answer a Batch-API job made; absent: a live call's
    digest: str  # sha256 of the canonical JSON of every other field
    #: Never stored: added by ``store.semantic`` to a near-identical request's entry it serves
    #: (``{"similarity": float, "matched_key": str}``).
    semantic: dict[str, Any]


def servable(key: str, entry: Any) -> bool:
    """Whether ``entry``, found under ``key``, may be served as its answer: it says it is that key's
    (a value copied or swapped under another key is not), and its answer and cost have the shapes a
    hit reads. Every store checks this on every lookup, so it must cost next to nothing: the digest
    (damaged bytes inside an answer) is checked by ``cache verify`` and ``cache import``, where a
    few microseconds an entry do not slow every cached rerun by a fifth."""
    return (
        type(entry) is dict
        and entry.get("key", key) == key
        and type(entry.get("response")) is dict
        and isinstance(entry.get("cost_usd", 0.0), float | int | None)
        and isinstance(entry.get("usage"), dict | None)
    )


def entry_digest(entry: CacheEntry | dict[str, Any]) -> str:
    """The sha256 of ``entry`` without its ``digest``, as canonical JSON."""
    rest = {name: value for name, value in entry.items() if name != "digest"}
    return hashlib.sha256(canonical_json(rest)).hexdigest()


def make_entry(
    *,
    key: str,
    request: dict[str, Any],
    response: dict[str, Any],
    stored_at: float,
    usage: dict[str, Any] | None,
    latency_ms: float | None,
    cost_usd: float | None,
    via: str = "live",
) -> CacheEntry:
    """The record for an answer to the request whose key material is ``request``. ``via`` is kept
    only for a Batch-API answer, so a live answer's record (and its digest) is as it always was."""
    entry: CacheEntry = {
        "v": ENTRY_VERSION,
        "key": key,
        "stored_at": stored_at,
        "provider": request["provider"],
        "model": request["model"],
        "endpoint": request["endpoint"],
        "usage": usage,
        "latency_ms": latency_ms,
        "cost_usd": cost_usd,
        "response": response,
        "request": request,
    }
    if via != "live":
        entry["via"] = via
    entry["digest"] = entry_digest(entry)
    return entry
