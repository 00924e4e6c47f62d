"""The request key: a versioned digest of everything that can change an answer.

A cache hit is only as trustworthy as its key, and a wrong hit is worse than a miss. So the key
covers every input that can change what the provider answers — provider, endpoint, model, the
normalised messages, every generation parameter, provider extras, the sample index and, when
one was asked for, the prompt normalisation (``--normalize``) — and nothing that cannot (the
line's id, its metadata, the API key, the timeout, credentials sent as headers or query parameters
in ``extra.extra_headers`` / ``extra.extra_query``).

The digest is sha256 over canonical JSON (keys sorted at every depth, no whitespace, UTF-8),
tagged with a schema version. Bump ``KEY_VERSION`` whenever the material changes shape: old
entries then stop matching (a miss, never a wrong hit). ``tests/test_keys.py`` pins one request
to a literal key so that an accidental change fails loudly instead of silently emptying every
user's cache.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch.urls import secret_name

if TYPE_CHECKING:
    from llmbatch.model.request import Request

__all__ = [
    "KEY_VERSION",
    "SIMULATED_AT",
    "SIMULATOR_ENDPOINT",
    "SIMULATOR_HEADER",
    "canonical_json",
    "credentials",
    "key_from_material",
    "key_material",
    "request_key",
]

KEY_VERSION = "v1"

#: The endpoint recorded for simulated answers (``run --simulate``), whatever port the
#: simulator happened to get: simulated answers live in their own namespace and can never be
#: served for a real provider, nor real ones for the simulator.
SIMULATOR_ENDPOINT = "llmbatch-simulator"
#: The header llmbatch's simulator puts on every response (``llmbatch sim``), so that a run can tell
#: it from a real server later started at the same address (``providers.base.simulator_at``).
SIMULATOR_HEADER = "X-Llmbatch-Simulator"
#: Before the base URL in the key of an answer the simulator gave at that URL (``llmbatch sim``
#: reached with ``--api-base``): never the key of a real server's answer there.
SIMULATED_AT = SIMULATOR_ENDPOINT + "@"


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and fixed separators: equal values give equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def normalise_endpoint(endpoint: str | None) -> str | None:
    """``http://h:8000/v1/`` and ``http://h:8000/v1`` are the same server."""
    if endpoint is None:
        return None
    return endpoint.rstrip("/")


#: The parts of ``extra`` that are sent with each call and may carry a credential.
_SENT_WITH_CALL = ("extra_headers", "extra_query")


def _credential_items(extra: dict[str, Any], part: str) -> list[tuple[str, Any]]:
    items = extra.get(part)
    if not isinstance(items, dict):
        return []
    return [(str(name), value) for name, value in items.items() if secret_name(str(name))]


def _keyed_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` without the credentials in its ``extra_headers`` and ``extra_query``: they are sent
    with each call but do not change the answer, and the key material is stored in every entry,
    exported and shown (a token there would leak, and a rotated one would make every entry a miss).
    Headers that do change answers (``OpenAI-Beta``, ``anthropic-beta``) stay. ``extra`` with no
    such item is returned as it is, so every other key stays the key it was (no ``KEY_VERSION`` bump)."""
    if not extra or not any(_credential_items(extra, part) for part in _SENT_WITH_CALL):
        return extra  # (most lines have no extra: a key per line, so the common case is kept cheap)
    kept = dict(extra)
    for part in _SENT_WITH_CALL:
        if isinstance(extra.get(part), dict):
            kept[part] = {name: v for name, v in extra[part].items() if not secret_name(str(name))}
    return kept


def credentials(extra: dict[str, Any]) -> tuple[str, ...]:
    """The secrets in ``extra``'s credential headers and query parameters (the token of ``Bearer
    <token>``, else the value): redacted wherever a server could echo them back."""
    values = (str(value) for part in _SENT_WITH_CALL for _, value in _credential_items(extra, part))
    return tuple(value.split(" ", 1)[-1].strip() for value in values)


def key_material(request: Request, endpoint: str | None = None) -> dict[str, Any]:
    """The exact value that is hashed; exposed so tests and ``--explain`` can show it."""
    material = {
        "provider": request.provider,
        "endpoint": normalise_endpoint(endpoint),
        "model": request.model,
        "messages": request.messages,
        "params": request.params,
        "extra": _keyed_extra(request.extra),
        "sample": request.sample,
    }
    if request.normalize is not None:
        # Only when on (--normalize, issue 17), so every key made without it stays the key it was
        # and users' caches stay valid; no KEY_VERSION bump is needed. With it on, the mode is in
        # the material, so a normalised request can never share a key with a line that was written
        # already normalised: that line's answer was asked for verbatim, this one on the promise that
        # layout does not matter, and a cache must not blur the two.
        material["normalize"] = request.normalize
    return material


def key_from_material(material: dict[str, Any]) -> str:
    """``v1:`` followed by the sha256 of the canonical key material: how an entry's key is
    re-derived from the request it keeps (import, verify), without the line that asked for it."""
    return f"{KEY_VERSION}:{hashlib.sha256(canonical_json(material)).hexdigest()}"


def request_key(request: Request, endpoint: str | None = None) -> str:
    """The key of a request sent to ``endpoint``."""
    return key_from_material(key_material(request, endpoint))
