"""What counts as an answer, and making an answer safe to keep. Pure functions over the response.

An HTTP 200 is not always an answer. Some providers and gateways send a 200 whose body says the
generation failed: ``"choices": []``, or (OpenRouter) a choice with ``finish_reason: "error"`` and
an ``error`` object. Cached as ok, such a body would be served as a hit forever, so
:func:`problem` turns it into a failure of the attempt, retried when the provider's docs call it
transient (no choices at all; an error whose code is 408, 429 or 5xx, or that has no code).

A cacheable answer (README, "The cache") is a response with at least one choice, where no choice
has ``finish_reason`` ``"error"`` or an ``error`` object, and no choice was withheld by the
provider's filter (``content_filter``: a decline, reported as ok but never stored). An answer cut
off at ``max_tokens`` (``finish_reason: "length"``) is cached: the same request gives the same cut.

:func:`keepable` makes the response storable as JSON before anything is done with it: the API keys
in use are redacted from it (a provider or a proxy can echo one inside the answer), integers over
64 bits become strings (JSON writers refuse them), and an answer nested too deep to write is a
permanent failure of the line, never a crash.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmbatch.providers.base import CallError

__all__ = ["cacheable", "failed_check", "keepable", "problem"]

#: How deep an answer may nest: orjson writes at most 255 levels, and a line's key material and
#: result line wrap the response in a few more.
MAX_DEPTH = 200

_TRANSIENT_CODES = frozenset({408, 429})


def problem(response: dict[str, Any]) -> CallError | None:
    """Why a 200 response is not an answer, or None when it is one."""
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return CallError("retryable", "EmptyAnswer", "the provider answered with no choices (HTTP 200)")
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message", {}), dict):
            return CallError("permanent", "UnexpectedResponse", "a choice in the answer is not an object")
        error = choice.get("error")
        if choice.get("finish_reason") == "error" or error is not None:
            return _choice_error(error)
    return None


def _choice_error(error: Any) -> CallError:
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    text = f"the provider reported an error in its answer (HTTP 200): {message or 'no message'}"
    status = code if isinstance(code, int) and not isinstance(code, bool) else None
    transient = status is None or status in _TRANSIENT_CODES or status >= 500
    if status is not None:
        text += f" (code {status})"
    return CallError("retryable" if transient else "permanent", "ErrorInAnswer", text)


def cacheable(response: dict[str, Any]) -> bool:
    """A filtered answer is the provider declining, not an answer: never keep it."""
    return all(c.get("finish_reason") != "content_filter" for c in response.get("choices") or [])


def keepable(response: dict[str, Any], secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """``response`` as it can be stored and written: secrets redacted, big integers as strings.
    :class:`CallError` (permanent) if it cannot be written at all (nested too deep)."""
    try:
        data = orjson.dumps(response)
    except orjson.JSONEncodeError:
        response = _writable(response, 0)
        data = orjson.dumps(response)
    if any(secret.encode() in data for secret in secrets if len(secret) >= 8):
        for secret in secrets:
            if len(secret) >= 8:
                data = data.replace(secret.encode(), b"[redacted]")
        response = orjson.loads(data)
    return response


def _writable(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        deeper = f"the answer is nested more than {MAX_DEPTH} levels deep: it cannot be kept"
        raise CallError("permanent", "UnstorableAnswer", deeper)
    if isinstance(value, dict):
        return {key: _writable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_writable(item, depth + 1) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)  # JSON writers refuse integers over 64 bits; the digits are kept
    return value


def failed_check(response: dict[str, Any] | None, params: dict[str, Any], checks: tuple[str, ...]) -> str | None:
    """The first of ``checks`` (a route's ``escalate.on``) the answer fails, or None: ``"length"``, a
    choice cut off at max_tokens; ``"invalid_json"``, a JSON ``response_format`` asked for and the first
    choice's content not JSON. Both are answers (cached as such); the cascade asks a bigger model."""
    choices = (response or {}).get("choices") or []
    for check in checks:
        if check == "length" and any(isinstance(c, dict) and c.get("finish_reason") == "length" for c in choices):
            return check
        if check == "invalid_json" and _asks_json(params) and not _is_json(choices):
            return check
    return None


def _asks_json(params: dict[str, Any]) -> bool:
    fmt = params.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def _is_json(choices: list[Any]) -> bool:
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    content = (first.get("message") or {}).get("content")
    if not isinstance(content, str):
        return False
    try:
        orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return True
